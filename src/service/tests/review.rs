//! Flags audited as a session runs; the review queue, sign-off and overdue reviews, with a
//! fixed clock.

use super::*;
use crate::domain::policy::{FlagOn, FlagRule};
use crate::domain::review::{ReviewDue, Verdict};
use crate::domain::session::{SessionMeta, SessionState};
use crate::recordings::writer::Recorders;
use crate::service::ServiceError;

/// alice's ended session `id` (t0 to `end` seconds), needing sre-lead's review within an hour.
fn ended(id: &str, end: i64) -> SessionMeta {
    SessionMeta {
        id: id.into(),
        start: t0(),
        end: Some(at(end)),
        state: SessionState::Ended,
        review: Some(ReviewDue {
            by: vec!["sre-lead".into()],
            within_secs: 3600,
        }),
        ..crate::recordings::fixtures::meta()
    }
}

#[tokio::test]
async fn typed_and_exact_flags_are_audited_and_marked() {
    let f = fixture().await;
    let recorders = Recorders::new(f.service.clone(), 0);
    let rules = vec![FlagRule {
        name: "drop-table".into(),
        pattern: regex::Regex::new("(?i)drop table").unwrap(),
        on: FlagOn::Command,
        block: true,
    }];
    let meta = SessionMeta {
        id: "sh1".into(),
        kind: "shell".into(),
        term: Some("xterm".into()),
        state: SessionState::Live,
        exit_status: None,
        ..crate::recordings::fixtures::meta()
    };
    let rec = recorders.start(meta, rules).await.unwrap();
    rec.input(b"drop tab\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7fls\r");
    rec.input(b"psql -c 'DROP TABLE t'\r");
    assert_eq!(
        rec.operation(FlagOn::Command, "DROP TABLE u").as_deref(),
        Some("drop-table")
    );
    rec.finish(Some(0), None);
    recorders.flush_all().await;
    let flagged = f.audited("session-flag").await;
    assert_eq!(flagged.len(), 2);
    assert_eq!(flagged[0].detail["line"], "psql -c 'DROP TABLE t'");
    assert_eq!(flagged[0].detail["on"], "command");
    assert_eq!(flagged[1].detail["blocked"], true);
    let m = f.service.session_record("sh1").await.unwrap().unwrap();
    assert_eq!(m.flags.len(), 2, "markers in the metadata");
}

#[tokio::test]
async fn a_reviewer_signs_off_once_and_never_their_own_or_a_live_session() {
    let f = fixture().await;
    let mut live = ended("s-live", 0);
    (live.state, live.end) = (SessionState::Live, None);
    let sessions = vec![ended("s-late", 600), ended("s-early", 60), live];
    f.service.update_sessions(sessions, t0()).await.unwrap();
    // bob holds sre-lead: both ended ones, the one due first first; alice nothing of her own.
    let queue = f.service.review_queue("bob", at(700)).await.unwrap();
    let ids: Vec<&str> = queue.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s-early", "s-late"]);
    assert!(f
        .service
        .review_queue("alice", at(700))
        .await
        .unwrap()
        .is_empty());
    let refused = |r: Result<SessionMeta>| match r {
        Err(ServiceError::Denied(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let own = refused(
        f.service
            .review("alice", "s-early", Verdict::Ok, "fine", at(700))
            .await,
    );
    assert!(own.contains("your own"), "{own}");
    let live = refused(
        f.service
            .review("bob", "s-live", Verdict::Ok, "fine", at(700))
            .await,
    );
    assert!(live.contains("still live"), "{live}");
    assert!(matches!(
        f.service
            .review("bob", "nope", Verdict::Ok, "x", at(700))
            .await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        f.service
            .review("bob", "s-early", Verdict::Ok, " ", at(700))
            .await,
        Err(ServiceError::BadRequest(_))
    ));
    let m = f
        .service
        .review("bob", "s-early", Verdict::Concern, "why sudo?", at(700))
        .await
        .unwrap();
    assert_eq!(m.reviewed.as_ref().map(|r| r.by.as_str()), Some("bob"));
    let record = &f.audited("session-review").await[0];
    assert_eq!(
        (record.actor.as_str(), record.subject.as_str()),
        ("bob", "s-early")
    );
    assert_eq!(record.detail["verdict"], "concern");
    let again = refused(
        f.service
            .review("carol", "s-early", Verdict::Ok, "ok", at(800))
            .await,
    );
    assert!(again.contains("reviewed already by bob"), "{again}");
    let ids: Vec<String> = f
        .service
        .review_queue("bob", at(800))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s-late"]);
}

#[tokio::test]
async fn an_overdue_review_is_announced_once_and_counted() {
    let f = fixture().await;
    let sessions = vec![ended("s1", 0), ended("s2", 3000)];
    f.service.update_sessions(sessions, t0()).await.unwrap();
    let counts = f.service.check_reviews(at(1800)).await.unwrap();
    assert_eq!((counts.pending, counts.overdue), (2, 0));
    // Two checks at once (two nodes on one ledger): announced once, each counting it.
    let (a, b) = tokio::join!(
        f.service.check_reviews(at(3700)),
        f.service.check_reviews(at(3700))
    );
    for counts in [a.unwrap(), b.unwrap()] {
        assert_eq!((counts.pending, counts.overdue), (2, 1));
    }
    f.service.check_reviews(at(3800)).await.unwrap();
    let overdue = f.audited("review-overdue").await;
    assert_eq!(overdue.len(), 1, "announced once");
    assert_eq!(overdue[0].subject, "s1");
    let metrics = f.service.metrics_text(at(3800)).await.unwrap();
    assert!(metrics.contains("ramp_reviews_overdue 1"), "{metrics}");
}

#[tokio::test]
async fn the_review_page_lists_the_queue_with_step_due_and_overdue() {
    let f = fixture().await;
    let grant = f.grant_of("observe", t0()).await;
    let mut early = ended("s-early", 60);
    early.grant = grant.clone();
    let mut orphan = ended("s-orphan", 3000);
    orphan.grant = "gone".into();
    f.service
        .update_sessions(vec![orphan, early], t0())
        .await
        .unwrap();
    // At 3700 s the first is past due (60 + 3600), the second not yet.
    let rows = f.service.review_page("bob", at(3700)).await.unwrap();
    let got: Vec<(&str, Option<&str>, Option<&str>, bool)> = rows
        .iter()
        .map(|r| {
            let (c, s) = (r.contract.as_deref(), r.step.as_deref());
            (r.session.id.as_str(), c, s, r.overdue)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("s-early", Some("prod-db"), Some("observe"), true),
            ("s-orphan", None, None, false)
        ]
    );
    assert_eq!(rows[0].due, Some(at(3660)));
    assert!(f
        .service
        .review_page("alice", at(3700))
        .await
        .unwrap()
        .is_empty());
    // The page is for those some step's review names: the example's approvers (sre-lead).
    assert!(f.service.may_review_any("bob", t0()));
    assert!(!f.service.may_review_any("alice", t0()));
}
