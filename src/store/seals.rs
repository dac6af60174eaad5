//! Recording seals against the audit chain. A finished recording's seal (length and BLAKE3
//! hash) is in its session's metadata and in the audit record that ended the session
//! (`session-end`, or `session-interrupted` after a crash); the metadata names that record
//! (`sealed_in`). Reading a session checks the metadata's seal against the record's and the
//! file against the seal, so editing a recording and its metadata together is found too;
//! hiding that means editing the chain, which a checkpoint finds.

use std::collections::{HashMap, HashSet};

use super::{on_thread, Engine, Ledger, Result, StoreError};
use crate::domain::audit::{seal_in, AuditRecord, Kind};
use crate::domain::session::{RecordingSeal, SessionMeta, SessionState};
use crate::domain::Vocabulary;
use crate::recordings::files::Recordings;
use crate::recordings::format::{decode_events, Event};

/// Recordings checked against their seals in the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// Finished sessions whose seals were checked.
    pub sessions: u64,
    /// Whether the files were read and hashed too (not with `--skip-recordings`).
    pub files: bool,
    /// Every recording that does not match, in the order of the sessions.
    pub bad: Vec<BadRecording>,
    /// Of the sessions checked, those whose recording retention removed, each proven by
    /// its `recording-removed` record (their files are not read).
    pub removed: u64,
    /// Of the sessions checked, those another node recorded on its own disk: their seals
    /// are checked against the chain, their files are not here to read.
    pub elsewhere: u64,
}

/// A recording that does not match its seal, or a session the chain and the ledger
/// disagree about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecording {
    pub session: String,
    pub reason: String,
}

/// Whether a record ends a session (`session-end`, `session-interrupted`).
pub(crate) fn is_end(r: &AuditRecord) -> bool {
    r.kind().is_some_and(Kind::ends_session)
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// A session the ledger says is live although the chain ended it, put back as the chain
/// says (see [`Ledger::interrupted`]).
pub(super) fn restore_from(mut s: SessionMeta, end: &AuditRecord) -> SessionMeta {
    s.state = if end.kind() == Some(Kind::SessionEnd) {
        SessionState::Ended
    } else {
        SessionState::Interrupted
    };
    s.recording = seal_in(end);
    s.sealed_in = Some(end.seq);
    s.end = s.end.or(Some(end.at));
    s.end_reason = Some(format!(
        "the ledger said live after audit record {} ended the session: its metadata was altered",
        end.seq
    ));
    s
}

/// The chain's session-ending records, read once for checks that cover every session.
pub(super) struct Ends {
    /// By session id, oldest first.
    by_session: HashMap<String, Vec<AuditRecord>>,
    /// Where each record is in `by_session`, by sequence number.
    by_seq: HashMap<u64, (String, usize)>,
}

impl Ends {
    pub(super) fn new(by_session: HashMap<String, Vec<AuditRecord>>) -> Ends {
        let by_seq = by_session
            .iter()
            .flat_map(|(id, ends)| {
                ends.iter()
                    .enumerate()
                    .map(move |(i, r)| (r.seq, (id.clone(), i)))
            })
            .collect();
        Ends { by_session, by_seq }
    }

    /// The records that end session `id`, oldest first.
    pub(super) fn of(&self, id: &str) -> &[AuditRecord] {
        self.by_session
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn seq(&self, seq: u64) -> Option<&AuditRecord> {
        let (id, i) = self.by_seq.get(&seq)?;
        self.by_session.get(id)?.get(*i)
    }
}

/// The path of a session's recording, for messages.
fn shown_path(recordings: &Recordings, id: &str) -> String {
    recordings
        .path(id)
        .map_or_else(|_| id.to_string(), |p| p.display().to_string())
}

/// The seal a finished session's recording must match, given the record that ended it:
/// the metadata's, once it is found to be the one in that record.
fn seal_against(
    recordings: &Recordings,
    meta: &SessionMeta,
    end: &AuditRecord,
) -> Result<Option<RecordingSeal>> {
    let Some(audited) = seal_in(end) else {
        // An end record from before seals were audited: the metadata's seal is all there is.
        return Ok(meta.recording.clone());
    };
    let mismatch = |why: String| StoreError::SealMismatch {
        path: shown_path(recordings, &meta.id),
        seq: end.seq,
        why,
    };
    match &meta.recording {
        Some(s) if *s == audited => Ok(Some(audited)),
        Some(s) => Err(mismatch(format!(
            "the ledger's seal is {} bytes with BLAKE3 {}..., the audit record's {} bytes with BLAKE3 {}...",
            s.bytes,
            short(&s.blake3),
            audited.bytes,
            short(&audited.blake3)
        ))),
        None => Err(mismatch("the ledger has no seal for it".into())),
    }
}

/// What [`Ledger::verify_recordings`] found for one session, in the order of the sessions.
enum Finding {
    Bad(String, String),
    /// A finished session whose seal checks out: its file is checked against it.
    Sealed(String, Option<RecordingSeal>),
}

impl Ledger {
    /// The first record the chain has that ends session `id`.
    async fn first_session_end(&self, id: &str) -> Result<Option<AuditRecord>> {
        match &self.engine {
            Engine::Sled(s) => {
                let id = id.to_string();
                super::blocking(s, move |s| {
                    Ok(s.session_ends()?
                        .remove(&id)
                        .and_then(|e| e.into_iter().next()))
                })
                .await
            }
            Engine::Postgres(p) => p.first_session_end(id).await,
        }
    }

    /// Every session-ending record in the chain, by session id, oldest first.
    pub(super) async fn session_ends(&self) -> Result<Ends> {
        let by_session = match &self.engine {
            Engine::Sled(s) => super::blocking(s, |s| s.session_ends()).await?,
            Engine::Postgres(p) => p.session_ends().await?,
        };
        Ok(Ends::new(by_session))
    }

    /// The record that ended a finished session: the one its metadata names, else (from an
    /// older version, it names none) the first the chain has for it. `ends` is the chain's
    /// end records when the caller has them.
    async fn end_record(&self, meta: &SessionMeta, ends: Option<&Ends>) -> Result<AuditRecord> {
        let path = || shown_path(&self.recordings, &meta.id);
        match meta.sealed_in {
            Some(seq) => {
                let found = match ends.and_then(|e| e.seq(seq)) {
                    Some(r) => Some(r.clone()),
                    None => self.audit_record(seq).await?,
                };
                let mismatch = |why: String| StoreError::SealMismatch {
                    path: path(),
                    seq,
                    why,
                };
                match found {
                    Some(r) if is_end(&r) && r.subject == meta.id => Ok(r),
                    Some(r) => Err(mismatch(format!(
                        "that record is `{}` of `{}`, not the end of this session",
                        r.action, r.subject
                    ))),
                    None => Err(mismatch("there is no such record".into())),
                }
            }
            None => {
                let found = match ends {
                    Some(all) => all.of(&meta.id).first().cloned(),
                    None => self.first_session_end(&meta.id).await?,
                };
                found.ok_or_else(|| StoreError::Unsealed {
                    path: path(),
                    why: format!(
                        "the session is {} but no {} record names it",
                        meta.state,
                        Kind::SessionEnd.label()
                    ),
                })
            }
        }
    }

    /// The seal a session's recording must match: for a finished session, the metadata's,
    /// once it is found to be the one in the audit record that ended the session.
    async fn checked_seal(
        &self,
        meta: &SessionMeta,
        ends: Option<&Ends>,
    ) -> Result<Option<RecordingSeal>> {
        if meta.unsealed_live() {
            // Still being written: there is nothing to check it against yet.
            return Ok(meta.recording.clone());
        }
        let end = self.end_record(meta, ends).await?;
        seal_against(&self.recordings, meta, &end)
    }

    /// Checks that a session the ledger says retention removed has the `recording-removed`
    /// record it names: without it, a recording deleted by hand with its metadata edited.
    async fn removal_proven(&self, meta: &SessionMeta) -> Result<std::result::Result<(), String>> {
        let Some(removed) = &meta.removed else {
            return Ok(Ok(()));
        };
        let path = shown_path(&self.recordings, &meta.id);
        Ok(match self.audit_record(removed.record).await? {
            Some(r) if r.kind() == Some(Kind::RecordingRemoved) && r.subject == meta.id => Ok(()),
            Some(r) => Err(format!(
                "recording {path} is said to be removed by retention in audit record {}, but that record is `{}` of `{}`: it was deleted without the audit chain saying so",
                removed.record, r.action, r.subject
            )),
            None => Err(format!(
                "recording {path} is said to be removed by retention in audit record {}, which does not exist: it was deleted without the audit chain saying so",
                removed.record
            )),
        })
    }

    /// The seal a session's recording must match (see [`Ledger::session_events`]).
    pub async fn audited_seal(&self, meta: &SessionMeta) -> Result<Option<RecordingSeal>> {
        self.checked_seal(meta, None).await
    }

    /// A session's events in order, checked against its seal: the one in its metadata,
    /// which must be the one in the audit record that ended the session.
    pub async fn session_events(&self, meta: &SessionMeta) -> Result<Vec<Event>> {
        let seal = self.audited_seal(meta).await?;
        if let Some(removed) = &meta.removed {
            if let Err(why) = self.removal_proven(meta).await? {
                return Err(StoreError::Conflict(why));
            }
            return Err(StoreError::Removed(format!(
                "the recording of session {} was {}",
                meta.id,
                removed.words()
            )));
        }
        let (recordings, id) = (self.recordings.clone(), meta.id.clone());
        let bytes = on_thread(move || Ok(recordings.read(&id, seal.as_ref())?)).await?;
        decode_events(&bytes).map_err(|e| StoreError::Corrupt {
            tree: "recordings",
            key: meta.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks every finished session's seal against the audit chain and, with
    /// `read_files`, every recording file against its seal. Also names sessions the chain
    /// ended twice, ended while the ledger says they are live, or ended though the ledger
    /// does not know them. Reads the chain's end records once; holds up no commit. `here`
    /// names this node when its recordings are its own disk's (not shared): the files of
    /// sessions other nodes recorded are theirs to read (`audit verify` on that node).
    pub async fn verify_recordings(
        &self,
        read_files: bool,
        here: Option<&str>,
    ) -> Result<SealReport> {
        // The chain first: a session that ends after this read is still found ended below.
        let ends = self.session_ends().await?;
        let sessions = self.sessions().await?;
        let mut found = Vec::new();
        let bad = |session: &str, reason: String| Finding::Bad(session.to_string(), reason);
        let known: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let mut strays: Vec<&AuditRecord> = ends
            .by_session
            .iter()
            .filter(|(id, _)| !known.contains(id.as_str()))
            .flat_map(|(_, e)| e)
            .collect();
        strays.sort_by_key(|r| r.seq);
        for r in strays {
            found.push(bad(
                &r.subject,
                format!(
                    "audit record {} ends session {}, which is not in the ledger",
                    r.seq, r.subject
                ),
            ));
        }
        let (mut checked, mut removed, mut elsewhere) = (0, 0, 0);
        let recorded_elsewhere =
            |s: &SessionMeta| here.is_some_and(|node| s.node.as_deref().is_some_and(|n| n != node));
        for s in &sessions {
            let recorded = ends.of(&s.id);
            if recorded.len() > 1 {
                let seqs: Vec<String> = recorded.iter().map(|r| r.seq.to_string()).collect();
                found.push(bad(
                    &s.id,
                    format!(
                        "session {} ended more than once in the audit chain (records {})",
                        s.id,
                        seqs.join(", ")
                    ),
                ));
            }
            if s.unsealed_live() {
                if let Some(r) = recorded.first() {
                    found.push(bad(
                        &s.id,
                        format!(
                            "session {} is live in the ledger but audit record {} ended it",
                            s.id, r.seq
                        ),
                    ));
                }
                continue;
            }
            checked += 1;
            found.push(match self.checked_seal(s, Some(&ends)).await {
                Ok(_) if s.removed.is_some() => match self.removal_proven(s).await? {
                    Ok(()) => {
                        removed += 1;
                        continue;
                    }
                    Err(why) => bad(&s.id, why),
                },
                Ok(_) if recorded_elsewhere(s) => {
                    elsewhere += 1;
                    continue;
                }
                Ok(seal) => Finding::Sealed(s.id.clone(), seal),
                Err(e) => bad(&s.id, e.to_string()),
            });
        }
        let recordings = self.recordings.clone();
        let bad = on_thread(move || {
            let mut out = Vec::new();
            for f in found {
                let (session, reason) = match f {
                    Finding::Bad(session, reason) => (session, reason),
                    Finding::Sealed(session, seal) if read_files => {
                        match recordings.check(&session, seal.as_ref()) {
                            Ok(()) => continue,
                            Err(e) => (session, e.to_string()),
                        }
                    }
                    Finding::Sealed(..) => continue,
                };
                out.push(BadRecording { session, reason });
            }
            Ok(out)
        })
        .await?;
        Ok(SealReport {
            sessions: checked,
            files: read_files,
            bad,
            removed,
            elsewhere,
        })
    }
}

#[cfg(test)]
mod tests;
