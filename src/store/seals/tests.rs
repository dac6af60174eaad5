//! Seals against the chain: forged, edited, ended twice, from older versions, interrupted.
use chrono::Utc;

use super::*;
use crate::domain::audit::{Action, Entry, Requested, SessionEnded, SessionInterrupted};
use crate::recordings::format::{encode_event, EventKind};
use crate::store::{Change, Location};

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
async fn put(store: &Ledger, m: &SessionMeta) {
    store
        .commit(
            Change {
                sessions: vec![m.clone()],
                ..Change::default()
            },
            Utc::now(),
        )
        .await
        .unwrap();
}

async fn audit(store: &Ledger, subject: &str, action: impl Into<Action>) {
    store
        .commit(
            Change::audit(vec![Entry::new("alice", subject, action)]),
            Utc::now(),
        )
        .await
        .unwrap();
}

fn ended(recording: Option<RecordingSeal>) -> SessionEnded {
    SessionEnded {
        exit_status: None,
        reason: None,
        bytes_in: 0,
        bytes_out: 0,
        files: Vec::new(),
        recording,
        node: None,
    }
}

/// What the service does at start: seals what a dead daemon left live, in the chain.
async fn mark_interrupted(store: &Ledger) -> Vec<SessionMeta> {
    let (change, sealed) =
        crate::service::interrupted_change(store.interrupted("n1").await.unwrap(), "n1", None);
    store.commit(change, Utc::now()).await.unwrap();
    sealed
}

/// Records session `id` with `output`, ends it as the recorder does, and returns it.
async fn recorded(store: &Ledger, id: &str, output: &[u8]) -> SessionMeta {
    let mut m = meta(id);
    let mut file = store.recordings.create(id).unwrap();
    put(store, &m).await;
    let mut events = Vec::new();
    encode_event(&mut events, 0, EventKind::Output, output);
    file.append(&events).unwrap();
    m.recording = Some(file.seal().0);
    m.state = SessionState::Ended;
    let end = Entry::new("alice", id, ended(m.recording.clone()));
    store
        .commit(
            Change {
                entries: vec![end],
                ended: vec![(m, 0)],
                ..Change::default()
            },
            Utc::now(),
        )
        .await
        .unwrap();
    store.session(id).await.unwrap().unwrap()
}

/// Rewrites a recording's events and its metadata's seal together, as someone who can
/// write `data/` would.
async fn forge(store: &Ledger, m: &SessionMeta, output: &[u8]) {
    let mut events = Vec::new();
    encode_event(&mut events, 0, EventKind::Output, output);
    let path = store.recordings.path(&m.id).unwrap();
    std::fs::write(&path, [crate::recordings::files::HEADER, &events].concat()).unwrap();
    let mut m = m.clone();
    m.recording = Some(RecordingSeal {
        bytes: events.len() as u64,
        blake3: blake3::hash(&events).to_hex().to_string(),
    });
    put(store, &m).await;
}

async fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Ledger::open(&data, &Location::Embedded).await.unwrap();
    (dir, store)
}

async fn read_err(store: &Ledger, id: &str) -> String {
    let m = store.session(id).await.unwrap().unwrap();
    store.session_events(&m).await.unwrap_err().to_string()
}

#[tokio::test]
async fn a_recording_edited_with_its_seal_is_named_with_its_audit_record() {
    let (_dir, store) = open().await;
    let request = Requested {
        contract: "prod-db".into(),
        step: "observe".into(),
        ttl_secs: 60,
        reason: None,
        needs_approvals: 0,
        start: None,
    };
    audit(&store, "g1", request).await;
    let m = recorded(&store, "s1", b"DROP TABLE users;\r\n").await;
    assert_eq!(m.sealed_in, Some(2), "the end record's sequence number");
    assert_eq!(store.session_events(&m).await.unwrap().len(), 1);
    assert_eq!(
        store.verify_recordings(true, None).await.unwrap().bad,
        vec![]
    );

    forge(&store, &m, b"SELECT 1;\r\n").await;
    let err = read_err(&store, "s1").await;
    assert!(
        err.contains("recording ")
            && err.contains("s1.rec does not match its seal in audit record 2")
            && err.contains("the ledger's seal is 24 bytes"),
        "{err}"
    );
    let report = store.verify_recordings(false, None).await.unwrap();
    assert_eq!(report.sessions, 1);
    assert_eq!(report.bad.len(), 1, "found without reading the file");
    assert!(
        report.bad[0].reason.contains("audit record 2"),
        "{report:?}"
    );

    // Pointing the metadata at another record does not help.
    let mut moved = store.session("s1").await.unwrap().unwrap();
    moved.sealed_in = Some(1);
    put(&store, &moved).await;
    let err = read_err(&store, "s1").await;
    assert!(
        err.contains("that record is `request` of `g1`, not the end of this session"),
        "{err}"
    );
    // Nor removing the pointer: the chain is searched for the session's end.
    moved.sealed_in = None;
    put(&store, &moved).await;
    let err = read_err(&store, "s1").await;
    assert!(err.contains("in audit record 2"), "{err}");
    // Nor removing the seal.
    moved.recording = None;
    put(&store, &moved).await;
    let err = read_err(&store, "s1").await;
    assert!(err.contains("the ledger has no seal for it"), "{err}");
}

#[tokio::test]
async fn a_recording_edited_alone_is_named_against_its_seal() {
    let (_dir, store) = open().await;
    let m = recorded(&store, "s2", b"hello\r\n").await;
    let path = store.recordings.path("s2").unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    std::fs::write(&path, raw).unwrap();
    let err = store.session_events(&m).await.unwrap_err().to_string();
    assert!(err.contains("changed or damaged"), "{err}");
    let checked = store.verify_recordings(true, None).await.unwrap();
    assert!(
        checked.bad[0].reason.contains("BLAKE3 hash differs"),
        "{checked:?}"
    );
    assert_eq!(
        store.verify_recordings(false, None).await.unwrap().bad,
        vec![],
        "files not read"
    );
}

#[tokio::test]
async fn verify_names_sessions_the_chain_and_the_ledger_disagree_about() {
    let (_dir, store) = open().await;
    let m = recorded(&store, "s3", b"x").await;
    // Ended twice, and a live session the chain already ended.
    let again = SessionInterrupted {
        target: "db-1".into(),
        bytes_in: 0,
        bytes_out: 0,
        recording: m.recording.clone(),
        node: None,
        why: None,
    };
    audit(&store, "s3", again).await;
    audit(&store, "gone", ended(None)).await;
    put(&store, &meta("s4")).await;
    audit(&store, "s4", ended(None)).await;
    let reasons: Vec<String> = store
        .verify_recordings(true, None)
        .await
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
    let restored = mark_interrupted(&store).await;
    assert!(restored.is_empty(), "nothing new was interrupted");
    let s4 = store.session("s4").await.unwrap().unwrap();
    assert_eq!((s4.state, s4.sealed_in), (SessionState::Ended, Some(4)));
    assert_eq!(store.audit_len().await.unwrap(), 4, "no new record");
}

#[tokio::test]
async fn a_session_from_an_older_version_is_linked_to_its_end_record_at_start() {
    let (_dir, store) = open().await;
    let mut m = recorded(&store, "s6", b"old").await;
    m.sealed_in = None;
    put(&store, &m).await;
    assert_eq!(
        store.session_events(&m).await.unwrap().len(),
        1,
        "found by searching"
    );
    forge(&store, &m, b"new").await;
    assert!(read_err(&store, "s6").await.contains("audit record 1"));
    assert!(mark_interrupted(&store).await.is_empty());
    assert_eq!(
        store.session("s6").await.unwrap().unwrap().sealed_in,
        Some(1)
    );
    assert!(read_err(&store, "s6").await.contains("audit record 1"));
}

#[tokio::test]
async fn an_interrupted_session_is_sealed_in_its_audit_record() {
    let (_dir, store) = open().await;
    let m = meta("s5");
    let mut file = store.recordings.create("s5").unwrap();
    put(&store, &m).await;
    let mut events = Vec::new();
    encode_event(&mut events, 0, EventKind::Output, b"before the crash");
    file.append(&events).unwrap();
    drop(file);
    let mut feed = store.subscribe_audit();
    let out = mark_interrupted(&store).await;
    assert_eq!(out.len(), 1);
    let rec = feed.try_recv().unwrap();
    assert_eq!(
        (rec.kind(), rec.subject.as_str()),
        (Some(Kind::SessionInterrupted), "s5")
    );
    assert_eq!(seal_in(&rec), out[0].recording);
    let s5 = store.session("s5").await.unwrap().unwrap();
    assert_eq!(s5.sealed_in, Some(rec.seq));
    assert_eq!(store.session_events(&s5).await.unwrap().len(), 1);
    assert_eq!(
        store.verify_recordings(true, None).await.unwrap().bad,
        vec![]
    );
}

/// Several nodes, each recording on its own disk: `audit verify` on one checks the seals of
/// every session against the chain, and reads only the files of the sessions it recorded.
#[tokio::test]
async fn a_session_another_node_recorded_on_its_own_disk_is_checked_by_its_seal_only() {
    let (_dir, store) = open().await;
    let mut mine = recorded(&store, "s-here", b"ls\r\n").await;
    mine.node = Some("n1".into());
    put(&store, &mine).await;
    let mut theirs = recorded(&store, "s-there", b"ps\r\n").await;
    theirs.node = Some("n2".into());
    put(&store, &theirs).await;
    std::fs::remove_file(store.recordings.path("s-there").unwrap()).unwrap();

    let here = store.verify_recordings(true, Some("n1")).await.unwrap();
    assert_eq!((here.sessions, here.elsewhere), (2, 1));
    assert_eq!(here.bad, vec![], "n2's file is on n2's disk");
    // Read as one node that should hold every file, the missing one is named.
    let all = store.verify_recordings(true, None).await.unwrap();
    assert_eq!(all.bad.len(), 1);
    assert!(all.bad[0].reason.contains("s-there"), "{:?}", all.bad);
}
