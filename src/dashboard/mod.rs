//! The web dashboard on the API port: `/ui/`. Nobody gets in anonymously: `ramp-ca
//! dashboard` (a signed request like every client command) gets a one-time link that lives
//! [`Settings::link_ttl`]; opening it starts a browser session that carries that user and
//! lasts [`Settings::session_ttl`]. Roles are looked up on every request, so a policy reload
//! takes effect at once. Changes (approve, deny, revoke) go through [`Service`] with the same
//! rules and audit as the command line, and need the session's CSRF token in a header.
//!
//! The page is one small HTML/JS/CSS bundle of our own (`assets/`). Live state comes as
//! server-sent events, pushed on every audit record and every few seconds; terminal screens
//! (playback and following a live session) are emulated here ([`screen`]) and sent as HTML
//! rows.

pub mod screen;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{blocking, ApiError, Caller};
use crate::bastion::recorder::Recorders;
use crate::grant::State as GrantState;
use crate::policy::{self, ROLE_ADMIN, ROLE_AUDITOR};
use crate::recording::{decode_events, SessionMeta, SessionState};
use crate::service::{GrepBody, RevokeBody, Service, ServiceError, SessionFilter};
use crate::store::Event;

/// Cookie that carries a browser session.
const COOKIE: &str = "ramp_session";
/// Header that must carry the session's CSRF token on every change.
const CSRF_HEADER: &str = "x-ramp-csrf";
/// The live state is pushed at least this often (time left, bytes moved).
const TICK: Duration = Duration::from_secs(5);
/// Most frames a playback is cut into.
const MAX_FRAMES: usize = 3000;
/// The audit page re-verifies the chain at most this often.
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How often a followed session's recording is read for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Service-config options of the dashboard (`dashboard:` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How long a browser session lasts, like `8h`.
    pub session_ttl: String,
    /// How long a login link may wait to be opened, like `2m`.
    pub link_ttl: String,
    /// The address people reach the API at (`https://ramp.example.com`), for the links
    /// `ramp-ca dashboard` prints; by default the client's `--server`.
    pub public_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            session_ttl: "8h".into(),
            link_ttl: "2m".into(),
            public_url: None,
        }
    }
}

/// Parsed settings.
#[derive(Debug, Clone)]
struct Ttls {
    session: chrono::Duration,
    link: chrono::Duration,
}

impl Settings {
    /// Whether the settings make sense, with what is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.ttls().map(|_| ())
    }

    fn ttls(&self) -> Result<Ttls, String> {
        let parse = |field: &str, text: &str| {
            policy::parse_duration(text)
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .ok_or_else(|| format!("dashboard.{field}: `{text}` is not a duration like 2m, 8h"))
        };
        Ok(Ttls {
            session: parse("session_ttl", &self.session_ttl)?,
            link: parse("link_ttl", &self.link_ttl)?,
        })
    }
}

/// A browser session.
#[derive(Debug, Clone)]
struct WebSession {
    user: String,
    csrf: String,
    expires: DateTime<Utc>,
}

/// What the dashboard's routes share.
pub struct Dashboard {
    service: Arc<Service>,
    recorders: Arc<Recorders>,
    ttls: Ttls,
    public_url: Option<String>,
    /// One-time login tokens -> (user, expiry).
    links: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    sessions: Mutex<HashMap<String, WebSession>>,
    /// The audit chain's last verification, and when.
    verified: Mutex<Option<(std::time::Instant, crate::store::AuditReport)>>,
}

type App = Arc<Dashboard>;

fn token() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dashboard {
    pub fn new(
        service: Arc<Service>,
        recorders: Arc<Recorders>,
        settings: &Settings,
    ) -> Result<Arc<Dashboard>, String> {
        Ok(Arc::new(Dashboard {
            service,
            recorders,
            ttls: settings.ttls()?,
            public_url: settings.public_url.clone(),
            links: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            verified: Mutex::new(None),
        }))
    }

    /// Audits events and waits until they are on disk.
    async fn audit(&self, events: Vec<Event>) -> Result<(), ApiError> {
        let store = &self.service.store;
        store
            .apply_events(events, Utc::now())
            .map_err(ServiceError::from)?;
        store.durable().await.map_err(ServiceError::from)?;
        Ok(())
    }

    /// The browser session a request carries, if it is live and its user still exists.
    fn web_user(&self, headers: &HeaderMap) -> Result<WebSession, ApiError> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_string());
        let unauthorized = |why: &str| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                format!("{why}: run `ramp-ca dashboard` for a new login link"),
            )
        };
        let id = id.ok_or_else(|| unauthorized("not logged in"))?;
        let now = Utc::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        let session = sessions
            .get(&id)
            .cloned()
            .ok_or_else(|| unauthorized("the dashboard session expired"))?;
        drop(sessions);
        if !self.service.policies().users.contains_key(&session.user) {
            return Err(unauthorized(&format!(
                "`{}` is no longer in people.yaml",
                session.user
            )));
        }
        Ok(session)
    }

    /// [`Dashboard::web_user`] for a change: the CSRF header must match.
    fn web_change(&self, headers: &HeaderMap) -> Result<WebSession, ApiError> {
        let session = self.web_user(headers)?;
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if sent != Some(session.csrf.as_str()) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token; reload the page".into(),
            ));
        }
        Ok(session)
    }

    /// Whether a browser session still stands (not expired, not logged out, its user still
    /// in people.yaml, and a reviewer when `reviewer`): long-lived streams ask on every step.
    fn still_allowed(&self, session: &WebSession, reviewer: bool) -> bool {
        let now = Utc::now();
        let live = lock(&self.sessions)
            .values()
            .any(|s| s.csrf == session.csrf && s.expires > now);
        live && self.service.policies().users.contains_key(&session.user)
            && (!reviewer || self.is_reviewer(&session.user))
    }

    fn is_reviewer(&self, user: &str) -> bool {
        let p = self.service.policies();
        p.has_role(user, ROLE_ADMIN) || p.has_role(user, ROLE_AUDITOR)
    }

    /// Everything the live view shows, as `user` may see it.
    fn state(&self, session: &WebSession) -> Result<serde_json::Value, ServiceError> {
        let now = Utc::now();
        let user = &session.user;
        let p = self.service.policies();
        let admin = p.has_role(user, ROLE_ADMIN);
        let reviewer = self.is_reviewer(user);
        let views = self.service.grants(user, false, now)?;
        let (mut active, mut pending) = (Vec::new(), Vec::new());
        // When each active grant ends, for the time left of its sessions.
        let mut grant_ends: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
        for v in views {
            match v.state {
                GrantState::Active => {
                    grant_ends.insert(v.grant.id.clone(), v.grant.end);
                    let can_revoke = admin || v.grant.user == *user;
                    active.push(json!({"grant": v, "can_revoke": can_revoke}));
                }
                GrantState::Pending => {
                    let can_approve = policy::approval_refusal(
                        &p,
                        &v.grant.contract,
                        &v.grant.step,
                        &v.grant.user,
                        user,
                        &v.grant.approvers(),
                    )
                    .is_none();
                    let can_deny = v.grant.user == *user
                        || admin
                        || v.grant.approvals_from.iter().any(|r| p.has_role(user, r));
                    pending.push(
                        json!({"grant": v, "can_approve": can_approve, "can_deny": can_deny}),
                    );
                }
                _ => {}
            }
        }
        let mut live: Vec<SessionMeta> = self
            .recorders
            .live()
            .into_iter()
            .filter(|s| s.state == SessionState::Live && (reviewer || s.user == *user))
            .collect();
        live.sort_by_key(|s| s.start);
        let live: Vec<serde_json::Value> = live
            .into_iter()
            .map(|s| {
                let ends = grant_ends.get(&s.grant).copied().flatten();
                json!({"session": s, "ends": ends})
            })
            .collect();
        Ok(json!({
            "now": now,
            "me": {
                "user": user,
                "roles": p.users.get(user).map(|u| u.roles.clone()).unwrap_or_default(),
                "csrf": session.csrf,
                "expires": session.expires,
                "admin": admin,
                "reviewer": reviewer,
            },
            "active": active,
            "pending": pending,
            "live": live,
        }))
    }
}

/// The dashboard's routes: `/ui/...` and the signed `POST /v1/dashboard/link`.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/login", get(login))
        .route("/ui/logout", post(logout))
        .route("/ui/api/state", get(state))
        .route("/ui/api/stream", get(stream))
        .route("/ui/api/grants/{id}/approve", post(approve))
        .route("/ui/api/grants/{id}/deny", post(deny))
        .route("/ui/api/grants/{id}/revoke", post(revoke))
        .route("/ui/api/recordings", get(recordings))
        .route("/ui/api/recordings/{id}/playback", get(playback))
        .route("/ui/api/recordings/{id}/asciicast", get(asciicast))
        .route("/ui/api/recordings/{id}/follow", get(follow))
        .route("/ui/api/audit", get(audit))
        .with_state(app.clone())
        .merge(
            Router::new()
                .route("/v1/dashboard/link", post(link))
                .with_state(app.service.clone()),
        )
        .layer(axum::Extension(app))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(include_str!("assets/index.html")),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
        .into_response()
}

/// `POST /v1/dashboard/link` (signed): a one-time login link for the caller.
async fn link(
    axum::Extension(app): axum::Extension<App>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let t = token();
    let expires = now + app.ttls.link;
    {
        let mut links = lock(&app.links);
        links.retain(|_, (_, e)| *e > now);
        links.insert(t.clone(), (caller.user.clone(), expires));
    }
    app.audit(vec![Event::new(
        &caller.user,
        "dashboard-link",
        &caller.user,
        json!({"expires": expires}),
    )])
    .await?;
    let path = format!("/ui/login?token={t}");
    let url = app
        .public_url
        .as_ref()
        .map(|base| format!("{}{path}", base.trim_end_matches('/')));
    Ok(Json(json!({"path": path, "url": url, "expires": expires})).into_response())
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

fn error_page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>ramp-ca</title>\
         <body style=\"font:15px system-ui;background:#0f1115;color:#e6e6e6;padding:3em\">\
         <h1>ramp-ca</h1><p>{}</p><p>Run <code>ramp-ca dashboard</code> for a new login link.</p>",
        text.replace('<', "&lt;")
    );
    (status, Html(body)).into_response()
}

/// `GET /ui/login?token=T`: spends the link, starts the browser session.
async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    let now = Utc::now();
    let found = lock(&app.links).remove(&q.token);
    let Some((user, expires)) = found.filter(|(_, e)| *e > now) else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "This login link is unknown, already used or expired.",
        );
    };
    let session = WebSession {
        user: user.clone(),
        csrf: token(),
        expires: now + app.ttls.session,
    };
    let id = token();
    lock(&app.sessions).insert(id.clone(), session.clone());
    if let Err(e) = app
        .audit(vec![Event::new(
            &user,
            "dashboard-login",
            &user,
            json!({"link_expires": expires, "session_expires": session.expires}),
        )])
        .await
    {
        lock(&app.sessions).remove(&id);
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.1);
    }
    // Behind https (public_url says so) the cookie never travels in the clear.
    let secure = if app
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
    {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        app.ttls.session.num_seconds()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/".to_string()),
        ],
    )
        .into_response()
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Ok(s) = app.web_change(&headers) {
        lock(&app.sessions).retain(|_, v| v.csrf != s.csrf);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response()
}

async fn state(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = app.web_user(&headers)?;
    let app2 = app.clone();
    let out = tokio::task::spawn_blocking(move || app2.state(&session))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(out).into_response())
}

/// `GET /ui/api/stream`: the live state as server-sent events, on every audit record
/// (debounced) and every [`TICK`], until the browser session ends.
async fn stream(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = app.web_user(&headers)?;
    let feed = app.service.store.subscribe_audit();
    let state = (app, session, feed, true);
    let events =
        futures_util::stream::unfold(state, |(app, session, mut feed, first)| async move {
            if !first {
                let tick = tokio::time::sleep(TICK);
                tokio::pin!(tick);
                tokio::select! {
                    _ = &mut tick => {}
                    _ = feed.recv() => {
                        // Let a burst of records settle into one push.
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        while feed.try_recv().is_ok() {}
                    }
                }
            }
            // The browser session may have ended, or its user been removed, meanwhile.
            if !app.still_allowed(&session, false) {
                return None;
            }
            let app2 = app.clone();
            let s2 = session.clone();
            let data = tokio::task::spawn_blocking(move || app2.state(&s2))
                .await
                .ok()?
                .map(|v| v.to_string())
                .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string());
            let event = SseEvent::default().event("state").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (app, session, feed, false),
            ))
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn approve(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app.service.approve(&s.user, &id, Utc::now()).await?;
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

async fn deny(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReasonBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    let out = app
        .service
        .deny(&s.user, &id, &body.reason, Utc::now())
        .await?;
    Ok(Json(out).into_response())
}

async fn revoke(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReasonBody>,
) -> Result<Response, ApiError> {
    let s = app.web_change(&headers)?;
    if body.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a revocation from the dashboard needs a reason".into(),
        ));
    }
    let revoke = RevokeBody {
        grant: Some(id),
        reason: Some(body.reason),
        ..RevokeBody::default()
    };
    let out = app.service.revoke(&s.user, &revoke, Utc::now()).await?;
    Ok(Json(out).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct RecordingsQuery {
    user: Option<String>,
    target: Option<String>,
    /// Seconds back.
    since: Option<i64>,
    /// Text that must appear in the recording (input or output).
    text: Option<String>,
}

/// One row of the recordings list.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    session: SessionMeta,
    /// Lines that matched `text` and where, when searching.
    hits: Vec<crate::review::Hit>,
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
    };
    let text = q.text.filter(|t| !t.trim().is_empty());
    let rows = blocking(&app.service, move |svc| {
        let now = Utc::now();
        let sessions = svc.sessions(&s.user, &filter, now)?;
        let Some(text) = text else {
            return Ok(sessions
                .into_iter()
                .rev()
                .map(|session| Row {
                    session,
                    hits: Vec::new(),
                })
                .collect::<Vec<_>>());
        };
        let hits = svc.grep(
            &s.user,
            &GrepBody {
                pattern: text,
                filter,
            },
            now,
        )?;
        let mut by_session: HashMap<String, Vec<crate::review::Hit>> = HashMap::new();
        for h in hits {
            by_session.entry(h.session.clone()).or_default().push(h);
        }
        Ok(sessions
            .into_iter()
            .rev()
            .filter_map(|session| {
                let hits = by_session.remove(&session.id)?;
                Some(Row { session, hits })
            })
            .collect())
    })
    .await?;
    Ok(Json(rows).into_response())
}

/// Reads a recording for the browser's user (role-checked and audited as a read with
/// `purpose`, like the command line's) and shapes it with `f`, off the async threads.
async fn with_recording<T: Send + 'static>(
    app: &App,
    headers: &HeaderMap,
    id: String,
    purpose: &'static str,
    f: impl FnOnce(SessionMeta, Vec<crate::recording::Event>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let s = app.web_user(headers)?;
    blocking(&app.service, move |svc| {
        let (meta, events) = svc.session(&s.user, &id, purpose, Utc::now())?;
        Ok(f(meta, events))
    })
    .await
}

async fn playback(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let out = with_recording(&app, &headers, id, "dashboard-play", |meta, events| {
        let size = (meta.size().0, meta.size().1, meta.term.is_some());
        let playback = screen::playback(size, &events, MAX_FRAMES);
        json!({"session": meta, "playback": playback})
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
            crate::review::to_asciicast(&meta, &events),
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

/// `GET /ui/api/recordings/{id}/follow`: a live session's screen as server-sent events (a
/// full frame first, then changed rows), read from its recording as it is written; ends
/// with an `end` event when the session does.
async fn follow(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    if !app.is_reviewer(&s.user) {
        return Err(ServiceError::Denied(
            "following a session takes ramp-admin or ramp-auditor".into(),
        )
        .into());
    }
    let meta = app
        .service
        .store
        .session(&id)
        .map_err(ServiceError::from)?
        .ok_or_else(|| ServiceError::NotFound(format!("no recorded session with id `{id}`")))?;
    let tail = app
        .service
        .store
        .recordings
        .tail(&meta.id)
        .map_err(|e| ServiceError::Store(e.into()))?;
    app.audit(vec![Event::new(
        &s.user,
        "session-read",
        &meta.id,
        json!({"purpose": "dashboard-follow", "user": meta.user, "target": meta.target}),
    )])
    .await?;
    let term = screen::Terminal::new(meta.size().0, meta.size().1, meta.term.is_some());
    let started = meta.start;
    let state = (app, meta.id.clone(), tail, term, true, false);
    let events =
        futures_util::stream::unfold(state, move |(app, id, mut tail, mut term, first, done)| {
            let s = s.clone();
            async move {
                if done || !app.still_allowed(&s, true) {
                    return None;
                }
                let t = (Utc::now() - started).num_milliseconds().max(0) as u64;
                if first {
                    let f = term.full_frame(t);
                    let data = serde_json::to_string(&f).unwrap_or_default();
                    let ev = SseEvent::default().event("frame").data(data);
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (app, id, tail, term, false, false),
                    ));
                }
                loop {
                    tokio::time::sleep(FOLLOW_EVERY).await;
                    if !app.still_allowed(&s, true) {
                        return None;
                    }
                    // Asked before reading, so the session's last output is read before its end.
                    let still_live = app.recorders.is_live(&id);
                    let bytes = tail.read_new().unwrap_or_default();
                    if let Ok(events) = decode_events(&bytes) {
                        for e in &events {
                            term.feed(e);
                        }
                    }
                    let t = (Utc::now() - started).num_milliseconds().max(0) as u64;
                    if let Some(f) = term.frame(t) {
                        let data = serde_json::to_string(&f).unwrap_or_default();
                        let ev = SseEvent::default().event("frame").data(data);
                        return Some((Ok(ev), (app, id, tail, term, false, false)));
                    }
                    if !still_live {
                        let ev = SseEvent::default().event("end").data("{}");
                        return Some((Ok(ev), (app, id, tail, term, false, true)));
                    }
                }
            }
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    subject: Option<String>,
    /// Seconds back (default a day).
    since: Option<i64>,
    limit: Option<usize>,
}

async fn audit(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let s = app.web_user(&headers)?;
    if !app.is_reviewer(&s.user) {
        return Err(
            ServiceError::Denied("the audit log takes ramp-admin or ramp-auditor".into()).into(),
        );
    }
    // Verifying walks the whole chain under the ledger's writer lock: at most every
    // VERIFY_EVERY, however often the page asks.
    let cached = lock(&app.verified)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < VERIFY_EVERY)
        .map(|(_, report)| report.clone());
    let app2 = app.clone();
    let out = blocking(&app.service, move |svc| {
        let now = Utc::now();
        let since = crate::service::seconds_before(now, q.since.unwrap_or(86_400));
        let want = |field: &Option<String>, value: &str| {
            field
                .as_deref()
                .filter(|f| !f.is_empty())
                .is_none_or(|f| value.contains(f))
        };
        let mut records: Vec<_> = svc
            .store
            .audit_since(since)?
            .into_iter()
            .filter(|r| {
                want(&q.actor, &r.actor)
                    && want(&q.action, &r.action)
                    && want(&q.subject, &r.subject)
            })
            .collect();
        records.reverse();
        records.truncate(q.limit.unwrap_or(500).min(5000));
        let report = match cached {
            Some(r) => r,
            None => {
                let r = svc.store.verify_audit()?;
                *lock(&app2.verified) = Some((std::time::Instant::now(), r.clone()));
                r
            }
        };
        Ok(json!({"records": records, "verify": report}))
    })
    .await?;
    Ok(Json(out).into_response())
}
