//! Requests, approvals, denials and certificates from grants.

use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::service::ServiceError;

#[tokio::test]
async fn a_step_without_approvals_is_granted_and_certified_at_once() {
    let f = fixture().await;
    let out = f.ask("alice", "observe", true, t0()).await.unwrap();
    assert_eq!(out.grant.grant.state, State::Active);
    assert_eq!(out.grant.grant.end, Some(at(30 * 60)), "the step's max_ttl");
    assert!(out.certificate.is_some() && out.serial.is_some());
    assert!(!out.existing);
}

#[tokio::test]
async fn a_higher_step_needs_its_prerequisite_held() {
    let f = fixture().await;
    let err = f.ask("alice", "operate", false, t0()).await.unwrap_err();
    assert!(err.to_string().contains("request `observe` first"), "{err}");
}

/// Regression (issue 9): `sign` for a step already held filed a duplicate request.
#[tokio::test]
async fn asking_again_for_a_held_step_mints_from_the_grant_held() {
    let f = fixture().await;
    let first = f.ask("alice", "observe", true, t0()).await.unwrap();
    let again = f.ask("alice", "observe", true, at(60)).await.unwrap();
    assert_eq!(again.grant.grant.id, first.grant.grant.id);
    assert!(again.existing);
    assert_ne!(again.serial, first.serial, "a fresh certificate");
    assert!(again
        .reasons
        .last()
        .unwrap()
        .contains("you already hold grant"));
    let all = f.service.grants("alice", true, at(60)).await.unwrap();
    assert_eq!(all.len(), 1, "no second grant");
}

/// Regression (issue 9): a second request while one is pending was filed again.
#[tokio::test]
async fn asking_again_while_a_request_is_pending_returns_that_request() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let pending = f.ask("alice", "operate", true, at(1)).await.unwrap();
    assert_eq!(pending.grant.grant.state, State::Pending);
    let again = f.ask("alice", "operate", true, at(2)).await.unwrap();
    assert_eq!(again.grant.grant.id, pending.grant.grant.id);
    assert!(again.existing && again.certificate.is_none());
    let seen = f.service.grants("bob", false, at(2)).await.unwrap();
    assert_eq!(
        seen.iter().filter(|g| g.grant.step == "operate").count(),
        1,
        "bob sees one request"
    );
}

#[tokio::test]
async fn nobody_approves_their_own_request_and_one_approval_counts_once() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    let bg = &f.grant_of("break-glass", at(3)).await;
    let err = f.service.approve("alice", bg, at(4)).await.unwrap_err();
    assert!(err.to_string().contains("your own request"), "{err}");
    f.service.approve("bob", bg, at(5)).await.unwrap();
    let err = f.service.approve("bob", bg, at(6)).await.unwrap_err();
    assert!(err.to_string().contains("count once"), "{err}");
    assert_eq!(f.state(bg, at(6)).await, State::Pending);
    f.service.approve("carol", bg, at(7)).await.unwrap();
    assert_eq!(f.state(bg, at(7)).await, State::Active);
}

#[tokio::test]
async fn an_approval_after_the_prerequisite_ended_denies_the_request() {
    let f = fixture().await;
    f.ask_for("observe", "1m", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    let out = f.service.approve("bob", &op, at(120)).await.unwrap();
    assert_eq!(out.grant.grant.state, State::Denied);
    assert!(out
        .reasons
        .last()
        .unwrap()
        .contains("request `observe` first"));
}

#[tokio::test]
async fn a_higher_step_is_clamped_to_the_step_it_climbed_from() {
    let f = fixture().await;
    f.ask_for("observe", "10m", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    let out = f.service.approve("bob", &op, at(2)).await.unwrap();
    assert_eq!(out.grant.grant.end, Some(at(600)), "ends with observe");
}

/// Regression (issue 9): `sign --wait` read every grant each second; a wait is now a
/// subscription that answers when the grant is decided.
#[tokio::test]
async fn a_wait_answers_when_the_request_is_decided_and_not_before() {
    let f = std::sync::Arc::new(fixture().await);
    // On the real clock: the wait reads the grant as it stands now.
    let base = Utc::now() - chrono::Duration::seconds(10);
    f.grant_of("observe", base).await;
    let op = f
        .grant_of("operate", base + chrono::Duration::seconds(1))
        .await;
    // Nothing happens: the wait runs out and answers the request as it stands.
    let started = std::time::Instant::now();
    let view = f
        .service
        .wait_grant("alice", &op, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(view.grant.state, State::Pending);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Another grant's change does not answer it; the approval does.
    let waiter = {
        let (f, op) = (f.clone(), op.clone());
        tokio::spawn(async move {
            f.service
                .wait_grant("alice", &op, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let later = base + chrono::Duration::seconds(2);
    f.ask("bob", "observe", false, later).await.unwrap_err(); // bob is no requester
    assert!(!waiter.is_finished());
    f.service.approve("bob", &op, Utc::now()).await.unwrap();
    let view = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the wait answered")
        .unwrap()
        .unwrap();
    assert_eq!(view.grant.state, State::Active);
}

#[tokio::test]
async fn a_grant_is_seen_by_its_owner_reviewers_and_its_approvers_only() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    for who in ["alice", "bob", "carol"] {
        f.service.grant(who, &op, at(1)).await.unwrap();
    }
    let err = f.service.grant("mallory", &op, at(1)).await.unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_request_is_denied_by_an_approver_withdrawn_by_its_requester_and_nobody_else() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    let err = f.service.deny("carol", &op, " ", at(2)).await.unwrap_err();
    assert!(err.to_string().contains("needs a reason"), "{err}");
    let err = f
        .service
        .deny("mallory", &op, "no", at(2))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`mallory` may not deny this request: it takes one of the roles sre-lead"),
        "{err}"
    );
    let denied = f.service.deny("bob", &op, "not now", at(3)).await.unwrap();
    assert_eq!(denied.grant.state, State::Denied);
    let closed = denied.grant.closed.unwrap();
    assert_eq!(
        (closed.by.as_str(), closed.reason.as_str()),
        ("bob", "not now")
    );
    let err = f
        .service
        .deny("bob", &op, "again", at(4))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is denied, not pending"), "{err}");
    // The requester withdraws a request of their own.
    let again = f.grant_of("operate", at(5)).await;
    assert_ne!(again, op, "a denied request is not reused");
    let withdrawn = f
        .service
        .deny("alice", &again, "fixed it", at(6))
        .await
        .unwrap();
    assert_eq!(withdrawn.grant.state, State::Denied);
    let denials = f.audited("deny").await;
    let who: Vec<&str> = denials.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(who, ["bob", "alice"]);
    assert_eq!(denials[1].detail["reason"], "fixed it");
}

#[tokio::test]
async fn a_certificate_comes_from_the_callers_own_active_grant_only() {
    let f = fixture().await;
    let o = f.grant_of("observe", t0()).await;
    let out = f
        .service
        .certificate("alice", &f.key("alice"), &o, at(10))
        .await
        .unwrap();
    let cert = russh::keys::ssh_key::Certificate::from_openssh(&out.certificate.unwrap()).unwrap();
    assert_eq!(Some(cert.serial()), out.serial);
    assert_eq!(cert.key_id(), format!("ramp:alice:prod-db:observe:{o}"));
    assert_eq!(cert.valid_principals(), ["readonly"]);
    assert_eq!(
        cert.valid_before(),
        at(30 * 60).timestamp() as u64,
        "never past the grant"
    );
    let issued = f.audited("issue").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].subject, cert.serial().to_string());
    let err = f
        .service
        .certificate("bob", &f.key("bob"), &o, at(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("belongs to `alice`, not you"),
        "{err}"
    );
    let op = f.grant_of("operate", at(11)).await;
    let err = f
        .service
        .certificate("alice", &f.key("alice"), &op, at(12))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still pending: 0 of 1"), "{err}");
    let err = f
        .service
        .certificate("alice", &f.key("alice"), &o, at(30 * 60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is expired"), "{err}");
}

#[tokio::test]
async fn refusals_by_the_policy_and_of_an_approval_are_audited() {
    let f = fixture().await;
    let err = f.ask("bob", "observe", false, t0()).await.unwrap_err();
    assert!(matches!(err, ServiceError::Denied(_)), "{err}");
    let refused = f.audited("request-denied").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].actor, "bob");
    assert_eq!(refused[0].detail["step"], "observe");
    f.grant_of("observe", at(1)).await;
    let op = f.grant_of("operate", at(2)).await;
    let err = f.service.approve("alice", &op, at(3)).await.unwrap_err();
    assert!(err.to_string().contains("your own request"), "{err}");
    let refused = f.audited("approve-refused").await;
    assert_eq!(
        (refused[0].actor.as_str(), refused[0].subject.as_str()),
        ("alice", op.as_str())
    );
    assert_eq!(f.state(&op, at(3)).await, State::Pending, "nothing changed");
}

#[tokio::test]
async fn a_policy_reload_with_problems_keeps_the_old_set_in_force() {
    let f = fixture().await;
    let policies = f.dir.path().join("policies");
    std::fs::write(policies.join("broken.yaml"), "contract: [unclosed\n").unwrap();
    let err = f.service.reload_policies().unwrap_err();
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    assert!(f.service.policies().contracts.contains_key("prod-db"));
    f.grant_of("observe", t0()).await;
    // A good change takes effect at once: alice leaves people.yaml.
    std::fs::remove_file(policies.join("broken.yaml")).unwrap();
    let people = std::fs::read_to_string(policies.join("people.yaml")).unwrap();
    let without: String = people
        .split_inclusive('\n')
        .scan(false, |skip, line| {
            if line.starts_with("  alice:") {
                *skip = true;
            } else if line.starts_with("  ") && !line.starts_with("    ") {
                *skip = false;
            }
            Some(if *skip { "" } else { line })
        })
        .collect();
    std::fs::write(policies.join("people.yaml"), without).unwrap();
    f.service.reload_policies().unwrap();
    assert!(!f.service.knows_user("alice"));
    let err = f.ask("alice", "observe", false, at(1)).await.unwrap_err();
    assert!(matches!(err, ServiceError::Denied(_)), "{err}");
}

#[tokio::test]
async fn a_request_nobody_approved_lapses_after_a_day_and_a_window_ahead_when_it_would_have_ended()
{
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    let day = 24 * 3600;
    assert_eq!(f.state(&op, at(day)).await, State::Pending);
    assert_eq!(f.state(&op, at(day + 1)).await, State::Expired);
    let late = f
        .service
        .approve("bob", &op, at(day + 2))
        .await
        .unwrap_err();
    assert!(
        late.to_string().contains("is expired, not pending"),
        "{late}"
    );
    // Asked again, it is filed anew rather than answered from the lapsed one.
    f.grant_of("observe", at(day + 3)).await;
    let again = f.ask("alice", "operate", false, at(day + 4)).await.unwrap();
    assert!(
        !again.existing && again.grant.grant.id != op,
        "{:?}",
        again.reasons
    );
    let listed = f.service.grants("bob", false, at(day + 5)).await.unwrap();
    assert!(
        listed.iter().all(|g| g.grant.id != op),
        "gone from the queue"
    );

    // A window three days ahead waits for its approvals until it would have ended.
    let ahead = |step: &str| RequestBody {
        contract: "prod-db".into(),
        step: Some(step.into()),
        ttl: Some("10m".into()),
        reason: Some("CHG-3".into()),
        certify: false,
        start: Some("+3d".into()),
    };
    let key = f.key("alice");
    let first = f
        .service
        .request("alice", &key, &ahead("observe"), at(10))
        .await;
    assert_eq!(first.unwrap().grant.grant.state, State::Scheduled);
    let op = f
        .service
        .request("alice", &key, &ahead("operate"), at(10))
        .await;
    let op = op.unwrap().grant.grant.id;
    let ends = 10 + 3 * day + 600;
    assert_eq!(f.state(&op, at(2 * day)).await, State::Pending);
    assert_eq!(f.state(&op, at(ends - 1)).await, State::Pending);
    assert_eq!(f.state(&op, at(ends)).await, State::Expired);
}
