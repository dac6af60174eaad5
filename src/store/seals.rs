//! Recording seals against the audit chain. A finished recording's seal (length and BLAKE3
//! hash) is in its session's metadata and in the audit record that ended the session
//! (`session-end`, or `session-interrupted` after a crash); the metadata names that record
//! (`sealed_in`). Reading a session checks the metadata's seal against the record's and the
//! file against the seal, so editing a recording and its metadata together is found too;
//! hiding that means editing the chain, which a checkpoint finds.

use std::collections::{HashMap, HashSet};

use super::{decode, Result, Store, StoreError};
use crate::domain::audit::{seal_in, AuditRecord, Kind};
use crate::domain::session::{RecordingSeal, SessionMeta, SessionState};
use crate::domain::Vocabulary;

/// Recordings checked against their seals in the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReport {
    /// Finished sessions whose seals were checked.
    pub sessions: u64,
    /// Whether the files were read and hashed too (not with `--skip-recordings`).
    pub files: bool,
    /// Every recording that does not match, in the order of the sessions.
    pub bad: Vec<BadRecording>,
}

/// A recording that does not match its seal, or a session the chain and the ledger
/// disagree about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecording {
    pub session: String,
    pub reason: String,
}

fn is_end(r: &AuditRecord) -> bool {
    r.kind().is_some_and(Kind::ends_session)
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// A session the ledger says is live although the chain ended it, put back as the chain
/// says (see [`Store::mark_interrupted`]).
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

impl Store {
    /// Every session-ending record in the chain, by session id, oldest first: one pass
    /// over the chain, for checks that cover every session.
    pub(super) fn session_ends(&self) -> Result<HashMap<String, Vec<AuditRecord>>> {
        let mut out: HashMap<String, Vec<AuditRecord>> = HashMap::new();
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let r: AuditRecord = decode("audit", &k, &v)?;
            if is_end(&r) {
                out.entry(r.subject.clone()).or_default().push(r);
            }
        }
        Ok(out)
    }

    /// The seal a finished session's recording must match: the metadata's, once it is
    /// found to be the one in the audit record that ended the session. `ends` is the
    /// chain's end records when the caller has them; without them (a session whose
    /// metadata names no record, from an older version) the chain is searched.
    fn checked_seal(
        &self,
        meta: &SessionMeta,
        ends: Option<&HashMap<String, Vec<AuditRecord>>>,
    ) -> Result<Option<RecordingSeal>> {
        if meta.unsealed_live() {
            // Still being written: there is nothing to check it against yet.
            return Ok(meta.recording.clone());
        }
        let path = || {
            self.recordings
                .path(&meta.id)
                .map_or_else(|_| meta.id.clone(), |p| p.display().to_string())
        };
        let mismatch = |seq: u64, why: String| StoreError::SealMismatch {
            path: path(),
            seq,
            why,
        };
        let end = match meta.sealed_in {
            Some(seq) => match self.audit_record(seq)? {
                Some(r) if is_end(&r) && r.subject == meta.id => r,
                Some(r) => {
                    return Err(mismatch(
                        seq,
                        format!(
                            "that record is `{}` of `{}`, not the end of this session",
                            r.action, r.subject
                        ),
                    ))
                }
                None => return Err(mismatch(seq, "there is no such record".into())),
            },
            None => {
                let found = match ends {
                    Some(all) => all.get(&meta.id).and_then(|e| e.first()).cloned(),
                    None => self
                        .session_ends()?
                        .remove(&meta.id)
                        .and_then(|e| e.into_iter().next()),
                };
                match found {
                    Some(r) => r,
                    None => {
                        return Err(StoreError::Unsealed {
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
        };
        let Some(audited) = seal_in(&end) else {
            // An end record from before seals were audited: the metadata's seal is all there is.
            return Ok(meta.recording.clone());
        };
        match &meta.recording {
            Some(s) if *s == audited => Ok(Some(audited)),
            Some(s) => Err(mismatch(
                end.seq,
                format!(
                    "the ledger's seal is {} bytes with BLAKE3 {}..., the audit record's {} bytes with BLAKE3 {}...",
                    s.bytes,
                    short(&s.blake3),
                    audited.bytes,
                    short(&audited.blake3)
                ),
            )),
            None => Err(mismatch(end.seq, "the ledger has no seal for it".into())),
        }
    }

    /// The seal a session's recording must match (see [`Store::session_events`]).
    pub fn audited_seal(&self, meta: &SessionMeta) -> Result<Option<RecordingSeal>> {
        self.checked_seal(meta, None)
    }

    /// Checks every finished session's seal against the audit chain and, with
    /// `read_files`, every recording file against its seal. Also names sessions the chain
    /// ended twice, ended while the ledger says they are live, or ended though the ledger
    /// does not know them. Reads the chain once; holds up no commit.
    pub fn verify_recordings(&self, read_files: bool) -> Result<SealReport> {
        // The chain first: a session that ends after this pass is still found ended below.
        let ends = self.session_ends()?;
        let sessions = self.sessions()?;
        let mut report = SealReport {
            sessions: 0,
            files: read_files,
            bad: Vec::new(),
        };
        let mut bad = |session: &str, reason: String| {
            report.bad.push(BadRecording {
                session: session.to_string(),
                reason,
            })
        };
        let known: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let mut strays: Vec<&AuditRecord> = ends
            .iter()
            .filter(|(id, _)| !known.contains(id.as_str()))
            .flat_map(|(_, e)| e)
            .collect();
        strays.sort_by_key(|r| r.seq);
        for r in strays {
            bad(
                &r.subject,
                format!(
                    "audit record {} ends session {}, which is not in the ledger",
                    r.seq, r.subject
                ),
            );
        }
        let mut checked = 0;
        for s in &sessions {
            let recorded = ends.get(&s.id).map(Vec::as_slice).unwrap_or_default();
            if recorded.len() > 1 {
                let seqs: Vec<String> = recorded.iter().map(|r| r.seq.to_string()).collect();
                bad(
                    &s.id,
                    format!(
                        "session {} ended more than once in the audit chain (records {})",
                        s.id,
                        seqs.join(", ")
                    ),
                );
            }
            if s.unsealed_live() {
                if let Some(r) = recorded.first() {
                    bad(
                        &s.id,
                        format!(
                            "session {} is live in the ledger but audit record {} ended it",
                            s.id, r.seq
                        ),
                    );
                }
                continue;
            }
            checked += 1;
            let seal = match self.checked_seal(s, Some(&ends)) {
                Ok(seal) => seal,
                Err(e) => {
                    bad(&s.id, e.to_string());
                    continue;
                }
            };
            if read_files {
                if let Err(e) = self.recordings.check(&s.id, seal.as_ref()) {
                    bad(&s.id, e.to_string());
                }
            }
        }
        report.sessions = checked;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::audit::{Action, Entry, Requested, SessionEnded, SessionInterrupted};
    use crate::recordings::format::{encode_event, EventKind};
    use crate::store::{commit_now, Change};

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            id: id.into(),
            state: SessionState::Live,
            exit_status: None,
            start: Utc::now(),
            ..crate::recordings::fixtures::meta()
        }
    }

    /// Writes session metadata as it stands.
    fn put(store: &Store, m: &SessionMeta) {
        commit_now(
            store,
            Change {
                sessions: vec![m.clone()],
                ..Change::default()
            },
        );
    }

    fn audit(store: &Store, subject: &str, action: impl Into<Action>) {
        commit_now(
            store,
            Change::audit(vec![Entry::new("alice", subject, action)]),
        );
    }

    fn ended(recording: Option<RecordingSeal>) -> SessionEnded {
        SessionEnded {
            exit_status: None,
            reason: None,
            bytes_in: 0,
            bytes_out: 0,
            files: Vec::new(),
            recording,
        }
    }

    /// What the service does at start: seals what a dead daemon left live, in the chain.
    fn mark_interrupted(store: &Store) -> Vec<SessionMeta> {
        let (change, sealed) = crate::service::interrupted_change(store.interrupted().unwrap());
        commit_now(store, change);
        sealed
    }

    /// Records session `id` with `output`, ends it as the recorder does, and returns it.
    fn recorded(store: &Store, id: &str, output: &[u8]) -> SessionMeta {
        let mut m = meta(id);
        let mut file = store.recordings.create(id).unwrap();
        put(store, &m);
        let mut events = Vec::new();
        encode_event(&mut events, 0, EventKind::Output, output);
        file.append(&events).unwrap();
        m.recording = Some(file.seal().0);
        m.state = SessionState::Ended;
        let end = Entry::new("alice", id, ended(m.recording.clone()));
        commit_now(
            store,
            Change {
                entries: vec![end],
                ended: vec![(m, 0)],
                ..Change::default()
            },
        );
        store.session(id).unwrap().unwrap()
    }

    /// Rewrites a recording's events and its metadata's seal together, as someone who can
    /// write `data/` would.
    fn forge(store: &Store, m: &SessionMeta, output: &[u8]) {
        let mut events = Vec::new();
        encode_event(&mut events, 0, EventKind::Output, output);
        let path = store.recordings.path(&m.id).unwrap();
        std::fs::write(&path, [crate::recordings::files::HEADER, &events].concat()).unwrap();
        let mut m = m.clone();
        m.recording = Some(RecordingSeal {
            bytes: events.len() as u64,
            blake3: blake3::hash(&events).to_hex().to_string(),
        });
        put(store, &m);
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        (dir, store)
    }

    fn read_err(store: &Store, id: &str) -> String {
        let m = store.session(id).unwrap().unwrap();
        store.session_events(&m).unwrap_err().to_string()
    }

    #[test]
    fn a_recording_edited_with_its_seal_is_named_with_its_audit_record() {
        let (_dir, store) = open();
        let request = Requested {
            contract: "prod-db".into(),
            step: "observe".into(),
            ttl_secs: 60,
            reason: None,
            needs_approvals: 0,
        };
        audit(&store, "g1", request);
        let m = recorded(&store, "s1", b"DROP TABLE users;\r\n");
        assert_eq!(m.sealed_in, Some(2), "the end record's sequence number");
        assert_eq!(store.session_events(&m).unwrap().len(), 1);
        assert_eq!(store.verify_recordings(true).unwrap().bad, vec![]);

        forge(&store, &m, b"SELECT 1;\r\n");
        let err = read_err(&store, "s1");
        assert!(
            err.contains("recording ")
                && err.contains("s1.rec does not match its seal in audit record 2")
                && err.contains("the ledger's seal is 24 bytes"),
            "{err}"
        );
        let report = store.verify_recordings(false).unwrap();
        assert_eq!(report.sessions, 1);
        assert_eq!(report.bad.len(), 1, "found without reading the file");
        assert!(
            report.bad[0].reason.contains("audit record 2"),
            "{report:?}"
        );

        // Pointing the metadata at another record does not help.
        let mut moved = store.session("s1").unwrap().unwrap();
        moved.sealed_in = Some(1);
        put(&store, &moved);
        let err = read_err(&store, "s1");
        assert!(
            err.contains("that record is `request` of `g1`, not the end of this session"),
            "{err}"
        );
        // Nor removing the pointer: the chain is searched for the session's end.
        moved.sealed_in = None;
        put(&store, &moved);
        let err = read_err(&store, "s1");
        assert!(err.contains("in audit record 2"), "{err}");
        // Nor removing the seal.
        moved.recording = None;
        put(&store, &moved);
        let err = read_err(&store, "s1");
        assert!(err.contains("the ledger has no seal for it"), "{err}");
    }

    #[test]
    fn a_recording_edited_alone_is_named_against_its_seal() {
        let (_dir, store) = open();
        let m = recorded(&store, "s2", b"hello\r\n");
        let path = store.recordings.path("s2").unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        std::fs::write(&path, raw).unwrap();
        let err = store.session_events(&m).unwrap_err().to_string();
        assert!(err.contains("changed or damaged"), "{err}");
        let checked = store.verify_recordings(true).unwrap();
        assert!(
            checked.bad[0].reason.contains("BLAKE3 hash differs"),
            "{checked:?}"
        );
        assert_eq!(
            store.verify_recordings(false).unwrap().bad,
            vec![],
            "files not read"
        );
    }

    #[test]
    fn verify_names_sessions_the_chain_and_the_ledger_disagree_about() {
        let (_dir, store) = open();
        let m = recorded(&store, "s3", b"x");
        // Ended twice, and a live session the chain already ended.
        let again = SessionInterrupted {
            target: "db-1".into(),
            bytes_in: 0,
            bytes_out: 0,
            recording: m.recording.clone(),
        };
        audit(&store, "s3", again);
        audit(&store, "gone", ended(None));
        put(&store, &meta("s4"));
        audit(&store, "s4", ended(None));
        let reasons: Vec<String> = store
            .verify_recordings(true)
            .unwrap()
            .bad
            .into_iter()
            .map(|b| b.reason)
            .collect();
        let all = reasons.join("\n");
        assert!(
            all.contains("audit record 3 ends session gone, which is not in the ledger"),
            "{all}"
        );
        assert!(
            all.contains("session s3 ended more than once in the audit chain (records 1, 2)"),
            "{all}"
        );
        assert!(
            all.contains("session s4 is live in the ledger but audit record 4 ended it"),
            "{all}"
        );
        // At the next start the live one is put back as the chain says, not sealed again.
        let restored = mark_interrupted(&store);
        assert!(restored.is_empty(), "nothing new was interrupted");
        let s4 = store.session("s4").unwrap().unwrap();
        assert_eq!((s4.state, s4.sealed_in), (SessionState::Ended, Some(4)));
        assert_eq!(store.audit_len().unwrap(), 4, "no new record");
    }

    #[test]
    fn a_session_from_an_older_version_is_linked_to_its_end_record_at_start() {
        let (_dir, store) = open();
        let mut m = recorded(&store, "s6", b"old");
        m.sealed_in = None;
        put(&store, &m);
        assert_eq!(
            store.session_events(&m).unwrap().len(),
            1,
            "found by searching"
        );
        forge(&store, &m, b"new");
        assert!(read_err(&store, "s6").contains("audit record 1"));
        assert!(mark_interrupted(&store).is_empty());
        assert_eq!(store.session("s6").unwrap().unwrap().sealed_in, Some(1));
        assert!(read_err(&store, "s6").contains("audit record 1"));
    }

    #[test]
    fn an_interrupted_session_is_sealed_in_its_audit_record() {
        let (_dir, store) = open();
        let m = meta("s5");
        let mut file = store.recordings.create("s5").unwrap();
        put(&store, &m);
        let mut events = Vec::new();
        encode_event(&mut events, 0, EventKind::Output, b"before the crash");
        file.append(&events).unwrap();
        drop(file);
        let mut feed = store.subscribe_audit();
        let out = mark_interrupted(&store);
        assert_eq!(out.len(), 1);
        let rec = feed.try_recv().unwrap();
        assert_eq!(
            (rec.kind(), rec.subject.as_str()),
            (Some(Kind::SessionInterrupted), "s5")
        );
        assert_eq!(seal_in(&rec), out[0].recording);
        let s5 = store.session("s5").unwrap().unwrap();
        assert_eq!(s5.sealed_in, Some(rec.seq));
        assert_eq!(store.session_events(&s5).unwrap().len(), 1);
        assert_eq!(store.verify_recordings(true).unwrap().bad, vec![]);
    }
}
