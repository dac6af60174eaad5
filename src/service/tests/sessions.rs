//! Recorded sessions: written through the recorder, read by reviewers only, every read and
//! every start and end in the audit chain.

use std::sync::Arc;

use super::*;
use crate::domain::session::{SessionFilter, SessionMeta, SessionState};
use crate::recordings::writer::Recorders;

/// alice's session `id` as the bastion starts it at `now`.
fn live(id: &str, now: DateTime<Utc>) -> SessionMeta {
    SessionMeta {
        id: id.into(),
        state: SessionState::Live,
        exit_status: None,
        start: now,
        ..crate::recordings::fixtures::meta()
    }
}

/// Records session `id` with `output` through the recorder and ends it.
async fn recorded(f: &Fixture, id: &str, output: &[u8]) -> SessionMeta {
    let recorders = Recorders::new(f.service.clone(), 0);
    let rec = recorders.start(live(id, t0())).await.unwrap();
    rec.output(output);
    rec.finish(Some(0), None);
    recorders.flush_all().await;
    assert!(!recorders.is_live(id));
    f.service.session_record(id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_recording_starts_audited_and_ends_sealed_in_its_audit_record() {
    let f = fixture().await;
    let m = recorded(&f, "rec1", b"hello\r\n").await;
    let started = f.audited("session-start").await;
    assert_eq!(
        (started[0].actor.as_str(), started[0].subject.as_str()),
        ("alice", "rec1")
    );
    assert_eq!(started[0].detail["target"], "db1");
    let ended = f.audited("session-end").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(m.state, SessionState::Ended);
    assert_eq!(
        m.sealed_in,
        Some(ended[0].seq),
        "the metadata names its end record"
    );
    let seal = crate::domain::audit::seal_in(&ended[0]);
    assert_eq!(seal, m.recording, "one seal in both");
    assert_eq!(m.bytes_out, 7);
}

#[tokio::test]
async fn what_a_dead_daemon_left_live_is_sealed_interrupted_at_the_next_start() {
    let f = fixture().await;
    let recorders = Recorders::new(f.service.clone(), 0);
    let rec = recorders.start(live("crashed", t0())).await.unwrap();
    rec.output(b"half");
    recorders.flush_all().await;
    drop(recorders);
    let found = f.service.recover_interrupted(at(60)).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, SessionState::Interrupted);
    let record = &f.audited("session-interrupted").await[0];
    assert_eq!(record.subject, "crashed");
    let m = f.service.session_record("crashed").await.unwrap().unwrap();
    assert_eq!(m.sealed_in, Some(record.seq));
    assert_eq!(m.bytes_out, 4, "counted from the file");
    assert!(f
        .service
        .recover_interrupted(at(61))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn reviewers_read_every_recording_others_their_own_and_every_read_is_audited() {
    let f = fixture().await;
    recorded(&f, "rec1", b"SELECT secret FROM t;\r\n").await;
    recorded(&f, "rec2", b"ls\r\n").await;
    let svc: &Arc<Service> = &f.service;
    let all = SessionFilter::default();
    // Someone who does not review reads only their own: dave has none, and asking for
    // someone else's is refused.
    assert!(svc
        .sessions("dave", all.clone(), at(5))
        .await
        .unwrap()
        .is_empty());
    let theirs = SessionFilter {
        user: Some("alice".into()),
        ..SessionFilter::default()
    };
    let err = svc
        .sessions("dave", theirs.clone(), at(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("reading recordings of `alice` takes ramp-admin or ramp-auditor"),
        "{err}"
    );
    let err = svc
        .session("dave", "rec1", "show", at(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("of someone else"), "{err}");
    assert!(svc
        .grep("dave", &ask("secret"), at(5))
        .await
        .unwrap()
        .hits
        .is_empty());
    assert_eq!(
        f.audited("sessions-list").await.len(),
        1,
        "refusals read nothing"
    );
    // alice reads her own.
    assert_eq!(
        svc.sessions("alice", all.clone(), at(5))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(svc.session("alice", "rec1", "show", at(5)).await.is_ok());

    assert_eq!(
        svc.sessions("bob", all.clone(), at(5)).await.unwrap().len(),
        2
    );
    let mine = SessionFilter {
        target: Some("db2".into()),
        ..SessionFilter::default()
    };
    assert!(svc.sessions("carol", mine, at(5)).await.unwrap().is_empty());
    let listed = f.audited("sessions-list").await;
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[2].detail["count"], 2);
    assert_eq!(listed[3].detail["filter"]["target"], "db2");

    let (meta, events) = svc
        .session("bob", "rec1", "dashboard-play", at(6))
        .await
        .unwrap();
    assert_eq!((meta.id.as_str(), events.len()), ("rec1", 1));
    let read = &f.audited("session-read").await[1];
    assert_eq!(read.detail["purpose"], "dashboard-play");
    let err = svc.session("bob", "nope", "show", at(6)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no recorded session with id `nope`"),
        "{err}"
    );

    let found = svc.grep("bob", &ask("secret"), at(7)).await.unwrap();
    assert_eq!(found.hits.len(), 1);
    assert_eq!(found.hits[0].session, "rec1");
    assert!(found.damaged.is_empty());
    let err = svc.grep("bob", &ask(""), at(7)).await.unwrap_err();
    assert!(err.to_string().contains("pattern is empty"), "{err}");
    // dave's search (narrowed to his own, none) and bob's.
    let searched = f.audited("sessions-grep").await;
    assert_eq!(searched.len(), 2);
    assert_eq!(searched[0].detail["filter"]["user"], "dave");
    assert_eq!(
        (
            searched[1].detail["pattern"].as_str(),
            searched[1].detail["hits"].as_u64()
        ),
        (Some("secret"), Some(1))
    );
}

/// A search for `pattern` over every session, as typed.
fn ask(pattern: &str) -> crate::wire::sessions::GrepBody {
    crate::wire::sessions::GrepBody {
        pattern: pattern.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_live_session_is_ended_by_an_admin_or_its_user_with_a_reason_and_nobody_else() {
    let f = fixture().await;
    let svc = &f.service;
    let recorders = Recorders::new(svc.clone(), 0);
    let rec = recorders.start(live("s-live", t0())).await.unwrap();
    let (cutoff, mut told) = tokio::sync::watch::channel(None);
    rec.ends_with(cutoff);
    recorders.flush_all().await;

    let err = svc
        .stop_session("bob", "s-live", "x", at(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ending it takes ramp-admin"),
        "{err}"
    );
    let err = svc
        .stop_session("carol", "s-live", " ", at(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("takes a reason"), "{err}");
    let err = svc
        .stop_session("carol", "nope", "x", at(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no recorded session"), "{err}");
    assert!(svc.stop_orders(at(1)).await.unwrap().is_empty());

    svc.stop_session("carol", "s-live", "wrong host", at(2))
        .await
        .unwrap();
    let orders = svc.stop_orders(at(3)).await.unwrap();
    assert_eq!(
        orders,
        [crate::service::StopOrder {
            session: "s-live".into(),
            told: "carol ended this session: wrong host".into(),
        }]
    );
    // The bastion hands the order to the recording, which cuts its connection.
    assert!(recorders.stop("s-live", orders[0].told.clone()));
    told.changed().await.unwrap();
    assert_eq!(
        told.borrow().as_deref(),
        Some("carol ended this session: wrong host")
    );
    let stop = &f.audited("session-stop").await[0];
    assert_eq!(
        (stop.actor.as_str(), stop.subject.as_str()),
        ("carol", "s-live")
    );
    assert_eq!(stop.detail["reason"], "wrong host");
    // Orders are acted on for ten minutes, then forgotten.
    assert!(svc
        .stop_orders(at(2) + chrono::Duration::minutes(11))
        .await
        .unwrap()
        .is_empty());

    // Once it has ended, it cannot be ended again; its own user may end a live one.
    rec.finish(None, Some("carol ended this session: wrong host".into()));
    recorders.flush_all().await;
    let err = svc
        .stop_session("carol", "s-live", "x", at(4))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not live"), "{err}");
    let _own = recorders.start(live("s-own", t0())).await.unwrap();
    recorders.flush_all().await;
    svc.stop_session("alice", "s-own", "done", at(5))
        .await
        .unwrap();
}
