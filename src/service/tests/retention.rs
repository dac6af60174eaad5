//! Retention with a fixed clock: a recording past its contract's `keep:` goes once its
//! review is done (or when none is needed), audited first; `audit verify` tells it from one
//! deleted by hand.

use super::*;
use crate::domain::retention::Removed;
use crate::domain::review::{ReviewDue, Verdict};
use crate::domain::session::{SessionMeta, SessionState};
use crate::recordings::writer::Recorders;
use crate::service::ServiceError;

/// Sets prod-db's `keep:` and reloads the policies.
fn keep(f: &Fixture, keep: &str) {
    let path = f.dir.path().join("policies/prod-db.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\nkeep: {keep}\n")).unwrap();
    f.service.reload_policies().unwrap();
}

/// alice's prod-db session `id`, recorded through the recorder and ended; it needs
/// sre-lead's review within an hour when `review`.
async fn recorded(f: &Fixture, id: &str, review: bool) -> SessionMeta {
    let recorders = Recorders::new(f.service.clone(), 0);
    let meta = SessionMeta {
        id: id.into(),
        key_id: "ramp:alice:prod-db:operate:g1".into(),
        state: SessionState::Live,
        exit_status: None,
        start: t0(),
        review: review.then(|| ReviewDue {
            by: vec!["sre-lead".into()],
            within_secs: 3600,
        }),
        ..crate::recordings::fixtures::meta()
    };
    let rec = recorders.start(meta, Vec::new()).await.unwrap();
    rec.output(b"DROP TABLE users;\r\n");
    rec.finish(Some(0), None);
    recorders.flush_all().await;
    f.service.session_record(id).await.unwrap().unwrap()
}

fn removed_ids(swept: &crate::service::Swept) -> Vec<&str> {
    swept.removed.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn past_keep_only_reviewed_or_unneeded_recordings_go_audited_and_verified() {
    let f = fixture().await;
    let signed = recorded(&f, "signed", true).await;
    recorded(&f, "waiting", true).await;
    recorded(&f, "unasked", false).await;
    let end = signed.end.unwrap();
    let after = |secs: i64| end + chrono::Duration::seconds(secs);
    f.service
        .review("bob", "signed", Verdict::Ok, "looked", after(1))
        .await
        .unwrap();

    // No keep: forever, and nothing is even read.
    let swept = f.service.sweep_retention(after(99_999), 100).await.unwrap();
    assert_eq!(swept, crate::service::Swept::default());

    keep(&f, "60s");
    let swept = f.service.sweep_retention(after(30), 100).await.unwrap();
    assert!(swept.removed.is_empty(), "within keep: {swept:?}");

    let swept = f.service.sweep_retention(after(120), 100).await.unwrap();
    assert_eq!(removed_ids(&swept), ["signed", "unasked"]);
    assert_eq!(swept.awaiting_review, 1, "waiting keeps its recording");
    assert!(swept.failed.is_empty());
    let path = |id: &str| f.dir.path().join(format!("data/recordings/{id}.rec"));
    assert!(!path("signed").exists() && !path("unasked").exists());
    assert!(path("waiting").exists());
    // A crash between the commit and the deletion leaves the file: found after a restart.
    std::fs::write(path("signed"), b"left by a crash").unwrap();
    assert_eq!(f.service.leftover_removals(100).await.unwrap(), ["signed"]);
    let failed = f
        .service
        .delete_removed_recordings(&["signed".into()])
        .await;
    assert!(failed.is_empty() && !path("signed").exists());
    assert!(f.service.leftover_removals(100).await.unwrap().is_empty());

    let records = f.audited("recording-removed").await;
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].actor.as_str(), records[0].subject.as_str()),
        ("ramp-ca", "signed")
    );
    assert_eq!(records[0].detail["contract"], "prod-db");
    assert_eq!(records[0].detail["keep"], "1m");
    assert_eq!(records[0].detail["reviewed"], "ok by bob");
    let m = f.service.session_record("signed").await.unwrap().unwrap();
    assert_eq!(
        m.removed,
        Some(Removed {
            at: after(120),
            record: records[0].seq,
            contract: "prod-db".into(),
            keep_secs: 60
        })
    );
    assert!(m.recording.is_some(), "the seal stays");

    // Shown (what the ledger keeps), never played; searched around.
    let (shown, events) = f
        .service
        .session("bob", "signed", "show", after(130))
        .await
        .unwrap();
    assert!(events.is_empty() && shown.removed.is_some());
    match f.service.session("bob", "signed", "play", after(130)).await {
        Err(ServiceError::Gone(why)) => assert!(
            why.contains("removed by retention") && why.contains("contract `prod-db`"),
            "{why}"
        ),
        other => panic!("expected gone, got {other:?}"),
    }
    let body = crate::wire::sessions::GrepBody {
        pattern: "DROP".into(),
        ..Default::default()
    };
    let found = f.service.grep("bob", &body, after(130)).await.unwrap();
    assert_eq!(found.removed, ["signed", "unasked"]);
    assert_eq!(found.hits.len(), 1, "the waiting one is still searched");

    let report = f.service.store.verify_recordings(true, None).await.unwrap();
    assert_eq!((report.bad.clone(), report.removed), (vec![], 2));

    // Another pass removes nothing twice; once signed off, the waiting one goes too.
    let again = f.service.sweep_retention(after(200), 100).await.unwrap();
    assert!(again.removed.is_empty());
    f.service
        .review("carol", "waiting", Verdict::Ok, "fine", after(300))
        .await
        .unwrap();
    let last = f.service.sweep_retention(after(301), 100).await.unwrap();
    assert_eq!(removed_ids(&last), ["waiting"]);
    assert_eq!(f.audited("recording-removed").await.len(), 3);
}

#[tokio::test]
async fn a_pass_is_bounded_and_a_recording_deleted_by_hand_still_fails_verify() {
    let f = fixture().await;
    for id in ["a1", "a2", "a3"] {
        recorded(&f, id, false).await;
    }
    keep(&f, "1s");
    let later = Utc::now() + chrono::Duration::seconds(10);
    let one = f.service.sweep_retention(later, 1).await.unwrap();
    assert_eq!(one.removed.len(), 1, "at most the limit a pass");

    // Deleted by hand, without the chain saying so: named.
    let left = f.dir.path().join("data/recordings/a3.rec");
    std::fs::remove_file(&left).unwrap();
    let report = f.service.store.verify_recordings(true, None).await.unwrap();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert_eq!(report.bad[0].session, "a3");
    // Nor does marking it removed in the metadata help: the record it names is not one.
    let mut forged = f.service.session_record("a3").await.unwrap().unwrap();
    forged.removed = Some(Removed {
        at: later,
        record: forged.sealed_in.unwrap(),
        contract: "prod-db".into(),
        keep_secs: 1,
    });
    f.service
        .update_sessions(vec![forged], later)
        .await
        .unwrap();
    let report = f.service.store.verify_recordings(true, None).await.unwrap();
    assert!(
        report.bad[0]
            .reason
            .contains("deleted without the audit chain saying so"),
        "{report:?}"
    );
    assert_eq!(report.removed, 1);
    // A sweep does not paper over it: the forged session is not removed again.
    let swept = f.service.sweep_retention(later, 10).await.unwrap();
    assert_eq!(swept.removed.len(), 1, "only a2 is left to remove");
}
