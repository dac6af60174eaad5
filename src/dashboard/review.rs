//! The reviewer's pages: recordings (listed, searched, played, exported, followed live) and
//! the audit log with the chain's verdict. Every check and every audit record is the
//! service's, as for the command line.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;

use super::{lock, App};
use crate::api::ApiError;
use crate::domain::session::{SessionFilter, SessionMeta, SessionState};
use crate::recordings::format::{decode_events, Event};
use crate::recordings::{export, screen, timeline};
use crate::service::AuditSearch;
use crate::wire::audit::AuditRecord;
use crate::wire::dashboard::{AuditPage, AuditQuery, PlaybackBody, RecordingRow, RecordingsQuery};
use crate::wire::sessions::{GrepBody, Hit};
use crate::wire::ui;

/// Most frames a playback is cut into.
const MAX_FRAMES: usize = 3000;
/// The audit page re-verifies the chain at most this often.
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How often a followed session's recording is read for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often a follower of a session recorded on another node asks the ledger whether it
/// is still live.
const REMOTE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a follower of a session in object storage waits, once it ended, for its sealed
/// recording (its last output) to be uploaded before saying it ended.
const REMOTE_SEAL_WAIT: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route(ui::RECORDINGS, get(recordings))
        .route(ui::PLAYBACK, get(playback))
        .route(ui::ASCIICAST, get(asciicast))
        .route(ui::FOLLOW, get(follow))
        .route(ui::AUDIT, get(audit))
}

async fn recordings(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<RecordingsQuery>,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    let filter = SessionFilter {
        user: q.user.filter(|u| !u.is_empty()),
        target: q.target.filter(|t| !t.is_empty()),
        since: q.since,
        ..SessionFilter::default()
    };
    let text = q.text.filter(|t| !t.trim().is_empty());
    let now = Utc::now();
    let sessions = app.service.sessions(&s.user, filter.clone(), now).await?;
    let rows: Vec<RecordingRow> = match text {
        None => sessions
            .into_iter()
            .rev()
            .map(|session| RecordingRow {
                session: session.into(),
                hits: Vec::new(),
                damaged: None,
            })
            .collect(),
        Some(text) => {
            let ask = GrepBody {
                pattern: text,
                filter: filter.into(),
                ignore_case: q.ignore_case,
                regex: q.regex,
            };
            let found = app.service.grep(&s.user, &ask, now).await?;
            let mut damaged: HashMap<String, String> = found.damaged.into_iter().collect();
            let mut by_session: HashMap<String, Vec<Hit>> = HashMap::new();
            for h in found.hits {
                by_session
                    .entry(h.session.clone())
                    .or_default()
                    .push(h.into());
            }
            sessions
                .into_iter()
                .rev()
                .filter_map(|session| {
                    let why = damaged.remove(&session.id);
                    let hits = by_session.remove(&session.id);
                    if hits.is_none() && why.is_none() {
                        return None;
                    }
                    Some(RecordingRow {
                        session: session.into(),
                        hits: hits.unwrap_or_default(),
                        damaged: why,
                    })
                })
                .collect()
        }
    };
    Ok(Json(rows).into_response())
}

/// Reads a recording for the browser's user (role-checked and audited as a read with
/// `purpose`, like the command line's) and shapes it with `f`, off the async threads.
async fn with_recording<T: Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    id: String,
    purpose: &'static str,
    f: impl FnOnce(SessionMeta, Vec<Event>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let s = app.web_user(headers)?;
    let (meta, events) = app
        .service
        .session(&s.user, &id, purpose, Utc::now())
        .await?;
    tokio::task::spawn_blocking(move || f(meta, events))
        .await
        .map_err(|e| ApiError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn playback(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let out = with_recording(&app, &headers, id, "dashboard-play", |meta, events| {
        let size = (meta.size().0, meta.size().1, meta.term.is_some());
        let playback = screen::playback(size, &events, MAX_FRAMES);
        PlaybackBody {
            playback,
            timeline: timeline::commands(&meta, &events),
            session: meta.into(),
        }
    })
    .await?;
    Ok(Json(out).into_response())
}

async fn asciicast(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (name, cast) = with_recording(&app, &headers, id, "dashboard-export", |meta, events| {
        (
            format!("ramp-{}-{}.cast", meta.target, meta.id),
            export::to_asciicast(&meta, &events),
        )
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        cast,
    )
        .into_response())
}

/// One browser following a live session (see [`follow`]).
struct Following {
    app: App,
    id: String,
    tail: crate::recordings::files::Tail,
    term: screen::Terminal,
    /// Nothing sent yet: the full frame goes first.
    first: bool,
    /// The `end` event was sent.
    done: bool,
    /// Recorded by another node: whether it is still live is asked of the ledger.
    remote: bool,
    /// When the ledger was last asked.
    asked: std::time::Instant,
    /// When the ledger first said the session ended.
    ended_at: Option<std::time::Instant>,
}

impl Following {
    /// Whether the session is still being recorded; asked before reading, so its last
    /// output is read before its end. A session another node records is asked of the ledger
    /// at most every [`REMOTE_CHECK_EVERY`] (a ledger that cannot answer keeps it going).
    async fn still_live(&mut self) -> bool {
        if !self.remote {
            return self.app.recorders.is_live(&self.id);
        }
        if self.asked.elapsed() < REMOTE_CHECK_EVERY {
            return true;
        }
        self.asked = std::time::Instant::now();
        self.app
            .service
            .session_is_live(&self.id)
            .await
            .unwrap_or(true)
    }
}

/// `GET /ui/api/recordings/{id}/follow`: a live session's screen as server-sent events (a
/// full frame first, then changed rows), read from its recording as it is written; ends
/// with an `end` event when the session does. A session recorded on another node is
/// followed from its recording in the directory the nodes share.
async fn follow(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    let (meta, tail) = app.service.follow(&s.user, &id, Utc::now()).await?;
    let term = screen::Terminal::new(meta.size().0, meta.size().1, meta.term.is_some());
    let started = meta.start;
    let state = Following {
        remote: !app.recorders.is_live(&meta.id) && meta.state == SessionState::Live,
        app,
        id: meta.id.clone(),
        tail,
        term,
        first: true,
        done: false,
        asked: std::time::Instant::now(),
        ended_at: None,
    };
    let events = futures_util::stream::unfold(state, move |mut f| {
        let s = s.clone();
        async move {
            if f.done || !f.app.still_allowed(&s, true) {
                return None;
            }
            let t = (Utc::now() - started).num_milliseconds().max(0) as u64;
            if f.first {
                f.first = false;
                let frame = f.term.full_frame(t);
                let data = serde_json::to_string(&frame).unwrap_or_default();
                let ev = SseEvent::default().event("frame").data(data);
                return Some((Ok::<_, std::convert::Infallible>(ev), f));
            }
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                if !f.app.still_allowed(&s, true) {
                    return None;
                }
                let still_live = f.still_live().await;
                let bytes = f.tail.read_new().await.unwrap_or_default();
                if let Ok(events) = decode_events(&bytes) {
                    for e in &events {
                        f.term.feed(e);
                    }
                }
                let t = (Utc::now() - started).num_milliseconds().max(0) as u64;
                if let Some(frame) = f.term.frame(t) {
                    let data = serde_json::to_string(&frame).unwrap_or_default();
                    let ev = SseEvent::default().event("frame").data(data);
                    return Some((Ok(ev), f));
                }
                // From object storage, the end waits for the sealed upload (its last output),
                // at most REMOTE_SEAL_WAIT.
                let waited = f.ended_at.is_some_and(|t| t.elapsed() > REMOTE_SEAL_WAIT);
                let sealed = f.tail.complete() || waited;
                if !still_live && !sealed {
                    f.ended_at.get_or_insert_with(std::time::Instant::now);
                }
                if !still_live && sealed {
                    f.done = true;
                    let ended = f.app.service.how_it_ended(&f.id).await;
                    let (state, reason) = ended.unwrap_or_else(|| ("ended".into(), None));
                    let data = serde_json::json!({"state": state, "reason": reason});
                    let ev = SseEvent::default().event("end").data(data.to_string());
                    return Some((Ok(ev), f));
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn audit(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    let search = AuditSearch {
        actor: q.actor,
        action: q.action,
        subject: q.subject,
        since: q.since.unwrap_or(86_400),
        limit: q.limit.unwrap_or(500).min(5000),
    };
    // Verifying walks the whole chain (under the ledger's writer lock, on sled): at most
    // every VERIFY_EVERY, however often the page asks.
    let cached = lock(&app.verified)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < VERIFY_EVERY)
        .map(|(_, report)| report.clone());
    let svc = &app.service;
    let records = svc.audit_search(&s.user, &search, Utc::now()).await?;
    let verify = match cached {
        Some(r) => r,
        None => {
            let r = svc.verify_chain(&s.user).await?;
            *lock(&app.verified) = Some((std::time::Instant::now(), r.clone()));
            r
        }
    };
    let page = AuditPage {
        records: records.into_iter().map(AuditRecord::from).collect(),
        verify,
    };
    Ok(Json(page).into_response())
}
