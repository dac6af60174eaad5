//! Recorded sessions: reading them (for reviewers, every read audited), and the ledger side
//! of recording them (a session's start, its metadata, its end with its seal, and what a
//! crash left behind).

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::access::Reading;
use super::{Result, Service, ServiceError, GREP_LIMIT};
use crate::domain::audit::{
    Entry, SessionEnded, SessionInterrupted, SessionRead, SessionStarted, SessionsListed,
    SessionsSearched,
};
use crate::domain::session::{SessionFilter, SessionMeta};
use crate::recordings::files::{RecordingFile, Tail};
use crate::recordings::format::Event;
use crate::recordings::search::{self, Hit, Needle};
use crate::store::{Change, Interrupted, StoreError};
use crate::wire::sessions::GrepBody;

impl From<Hit> for crate::wire::sessions::Hit {
    fn from(h: Hit) -> crate::wire::sessions::Hit {
        crate::wire::sessions::Hit {
            session: h.session,
            at_ms: h.at_ms,
            line: h.line,
            stream: h.stream.label().into(),
        }
    }
}

/// The change that ends what a dead daemon left live: each interrupted session with the
/// `session-interrupted` record carrying its seal (written by `node`, for `why` when another
/// node ends them), and the metadata repaired; and the interrupted sessions.
pub(crate) fn interrupted_change(
    found: Interrupted,
    node: &str,
    why: Option<&str>,
) -> (Change, Vec<SessionMeta>) {
    let mut change = Change {
        sessions: found.repaired,
        ..Change::default()
    };
    for s in &found.sealed {
        let interrupted = SessionInterrupted {
            target: s.target.clone(),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            recording: s.recording.clone(),
            node: Some(node.to_string()),
            why: why.map(String::from),
        };
        change.entries.push(Entry::new(&s.user, &s.id, interrupted));
        change.ended.push((s.clone(), change.entries.len() - 1));
    }
    (change, found.sealed)
}

/// What a search found, the recordings it could not read (session id, why), and the
/// sessions whose recordings retention removed (not searched).
#[derive(Debug, Default)]
pub struct Grepped {
    pub hits: Vec<Hit>,
    pub damaged: Vec<(String, String)>,
    pub removed: Vec<String>,
}

impl From<Grepped> for crate::wire::sessions::Grepped {
    fn from(g: Grepped) -> Self {
        crate::wire::sessions::Grepped {
            hits: g.hits.into_iter().map(Into::into).collect(),
            damaged: g
                .damaged
                .into_iter()
                .map(|(session, error)| crate::wire::sessions::Damaged { session, error })
                .collect(),
            removed: g.removed,
        }
    }
}

impl Service {
    /// Recorded sessions matching `filter`: every one for admins and auditors, one's own for
    /// anyone else; the listing is audited.
    pub async fn sessions(
        &self,
        who: &str,
        mut filter: SessionFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionMeta>> {
        self.recordings_of(who, &mut filter, Reading::Recordings)?;
        let mut out = self.store.sessions().await?;
        out.retain(|m| filter.matches(m, now));
        let listed = SessionsListed {
            filter,
            count: out.len() as u64,
        };
        let entry = Entry::new(who, "sessions", listed);
        self.write_audit(entry, now).await?;
        Ok(out)
    }

    /// One session's metadata and events, for admins, auditors and its own user; every read
    /// is audited with its purpose (show, play, export, dashboard-play...).
    pub async fn session(
        &self,
        who: &str,
        id: &str,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<(SessionMeta, Vec<Event>)> {
        let meta = self.recorded(id).await?;
        if !self.may_review(who, &meta, now) {
            self.require_own_or_reviewer(who, &meta.user, Reading::Recordings)?;
        }
        let events = match self.store.session_events(&meta).await {
            // What the ledger keeps of it is still shown; nothing else can be read.
            Err(StoreError::Removed(_)) if purpose == "show" => Vec::new(),
            Err(StoreError::Removed(why)) => {
                return Err(ServiceError::Gone(format!(
                    "{why}: there is nothing to {purpose}; `ramp-ca sessions show {}` has what the ledger keeps of it",
                    meta.id
                )))
            }
            read => read?,
        };
        self.audit_read(who, &meta, purpose, now).await?;
        Ok((meta, events))
    }

    /// How a session someone follows ended: its state and why, once the ledger has its end.
    /// Only for the reviewer already following it (its read was audited then).
    pub async fn how_it_ended(&self, id: &str) -> Option<(String, Option<String>)> {
        let meta = self.store.session(id).await.ok().flatten()?;
        Some((meta.state.to_string(), meta.end_reason))
    }

    async fn recorded(&self, id: &str) -> Result<SessionMeta> {
        self.store
            .session(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no recorded session with id `{id}`")))
    }

    async fn audit_read(
        &self,
        who: &str,
        meta: &SessionMeta,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let read = SessionRead {
            purpose: purpose.to_string(),
            user: meta.user.clone(),
            target: meta.target.clone(),
        };
        let entry = Entry::new(who, &meta.id, read);
        self.write_audit(entry, now).await
    }

    /// Searches recordings for a pattern (see [`Needle::new`]), for admins and auditors; the
    /// search is audited. A recording that cannot be read (changed, truncated, missing) does
    /// not stop it: the others are searched, and it is named with why.
    pub async fn grep(&self, who: &str, ask: &GrepBody, now: DateTime<Utc>) -> Result<Grepped> {
        let mut filter: SessionFilter = ask.filter.clone().into();
        self.recordings_of(who, &mut filter, Reading::Recordings)?;
        let needle = Needle::new(&ask.pattern, ask.ignore_case, ask.regex)
            .map_err(ServiceError::BadRequest)?;
        let (mut hits, mut damaged, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for meta in self
            .store
            .sessions()
            .await?
            .iter()
            .filter(|m| filter.matches(m, now))
        {
            let events = match self.store.session_events(meta).await {
                Ok(events) => events,
                Err(StoreError::Removed(_)) => {
                    removed.push(meta.id.clone());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(session = %meta.id, error = %e, "a search skipped a recording it cannot read");
                    damaged.push((meta.id.clone(), e.to_string()));
                    continue;
                }
            };
            let left = GREP_LIMIT - hits.len().min(GREP_LIMIT);
            let (meta, needle) = (meta.clone(), needle.clone());
            // Matching reads every event: off the async threads.
            let found =
                tokio::task::spawn_blocking(move || search::grep(&meta, &events, &needle, left))
                    .await
                    .map_err(|e| ServiceError::Internal(format!("the search failed: {e}")))?;
            hits.extend(found);
            if hits.len() >= GREP_LIMIT {
                break;
            }
        }
        let searched = SessionsSearched {
            pattern: ask.pattern.clone(),
            filter,
            hits: hits.len() as u64,
            ignore_case: ask.ignore_case,
            regex: ask.regex,
            damaged: damaged.iter().map(|(id, _)| id.clone()).collect(),
        };
        let entry = Entry::new(who, "sessions", searched);
        self.write_audit(entry, now).await?;
        Ok(Grepped {
            hits,
            damaged,
            removed,
        })
    }

    /// A live session's recording to follow as it is written, for admins and auditors;
    /// audited as a read (`dashboard-follow`).
    pub async fn follow(
        &self,
        who: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(SessionMeta, Tail)> {
        self.require_reviewer(who, Reading::Follow)?;
        let meta = self.recorded(id).await?;
        let tail = self.store.tail_recording(&meta.id)?;
        self.audit_read(who, &meta, "dashboard-follow", now).await?;
        Ok((meta, tail))
    }

    /// Whether the ledger still says session `id` is live (on whichever node records it),
    /// for a follower of a session recorded elsewhere; not audited (the follow was).
    pub async fn session_is_live(&self, id: &str) -> Result<bool> {
        Ok(self
            .store
            .session(id)
            .await?
            .is_some_and(|m| m.state == crate::domain::session::SessionState::Live))
    }

    /// Starts a session's recording: its file exists and its metadata (naming this node) is
    /// on disk, and audited (`session-start`), before it returns.
    pub async fn start_recording(
        &self,
        meta: &mut SessionMeta,
        now: DateTime<Utc>,
    ) -> Result<RecordingFile> {
        if let Some(why) = self.ledger_down() {
            return Err(ServiceError::Ledger(crate::store::StoreError::Conflict(
                why,
            )));
        }
        meta.node = Some(self.node.clone());
        let file = self.store.create_recording(&meta.id)?;
        let started = SessionStarted {
            target: meta.target.clone(),
            principal: meta.principal.clone(),
            kind: meta.kind.clone(),
            command: meta.command.clone(),
            grant: meta.grant.clone(),
            serial: meta.serial,
            client: meta.client.clone(),
            node: meta.node.clone(),
        };
        let change = Change {
            sessions: vec![meta.clone()],
            entries: vec![Entry::new(&meta.user, &meta.id, started)],
            ..Change::default()
        };
        self.commit(change, now).await?;
        Ok(file)
    }

    /// Writes live sessions' metadata as it stands.
    pub async fn update_sessions(&self, metas: Vec<SessionMeta>, now: DateTime<Utc>) -> Result<()> {
        let change = Change {
            sessions: metas,
            ..Change::default()
        };
        self.commit(change, now).await?;
        Ok(())
    }

    /// Writes sessions that ended with the `session-end` records that carry their seals,
    /// in one transaction, durably: each session's `sealed_in` names its record.
    pub async fn end_sessions(&self, ended: Vec<SessionMeta>, now: DateTime<Utc>) -> Result<()> {
        let ids: Vec<String> = ended.iter().map(|m| m.id.clone()).collect();
        let mut change = Change::default();
        for (i, m) in ended.into_iter().enumerate() {
            let end = SessionEnded {
                exit_status: m.exit_status,
                reason: m.end_reason.clone(),
                bytes_in: m.bytes_in,
                bytes_out: m.bytes_out,
                files: m.files.clone(),
                recording: m.recording.clone(),
                node: Some(self.node.clone()),
            };
            change.entries.push(Entry::new(&m.user, &m.id, end));
            change.ended.push((m, i));
        }
        self.commit(change, now).await?;
        self.store.recordings_done(&ids);
        Ok(())
    }

    /// Seals and audits the sessions a daemon that died left live (`session-interrupted`,
    /// in one commit); returns them.
    pub async fn recover_interrupted(&self, now: DateTime<Utc>) -> Result<Vec<SessionMeta>> {
        let found = self.store.interrupted(&self.node).await?;
        let (change, sealed) = interrupted_change(found, &self.node, None);
        self.commit(change, now).await?;
        let ids: Vec<String> = sealed.iter().map(|m| m.id.clone()).collect();
        self.store.recordings_done(&ids);
        Ok(sealed)
    }

    /// With object storage, starts the task that uploads this node's recordings (after
    /// queueing what a previous run left in the spool); `None` otherwise.
    pub async fn upload_recordings(&self) -> Option<crate::recordings::upload::Uploader> {
        let recordings = self.store.uploaded_recordings()?;
        match self.store.queue_finished_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                recordings = n,
                "finished recordings left in the spool, queued for upload"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which recordings in the spool are finished; they upload at the next start")
            }
        }
        crate::recordings::upload::Uploader::start(recordings, self.metrics.clone())
    }

    /// Bytes free on the recording disk, and where the recordings are.
    pub fn recording_space(&self) -> Result<(u64, PathBuf)> {
        let (free, dir) = self.store.recording_space()?;
        Ok((free, dir.to_path_buf()))
    }
}
