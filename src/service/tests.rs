//! The service's rules with a real ledger in a temporary directory and a fixed `now`: the
//! fast tier (no sshd, no browser, no binary), beside the end-to-end tests in `tests/it`.

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::PublicKey;

use super::*;

/// An installation made by `init` (the example policies, alice sre, bob sre-lead +
/// ramp-auditor, carol sre-lead + ramp-admin) and its service.
struct Fixture {
    _dir: tempfile::TempDir,
    service: Service,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    crate::init::init(dir.path()).unwrap();
    let service = Service::open(dir.path()).unwrap();
    Fixture { _dir: dir, service }
}

impl Fixture {
    fn key(&self, user: &str) -> PublicKey {
        crate::keys::read_public(&self._dir.path().join(format!("demo/{user}/id_ed25519.pub")))
            .unwrap()
    }

    async fn ask(
        &self,
        user: &str,
        step: &str,
        certify: bool,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let body = RequestBody {
            contract: "prod-db".into(),
            step: Some(step.into()),
            ttl: None,
            reason: Some("INC-1".into()),
            certify,
        };
        self.service
            .request(user, &self.key(user), &body, now)
            .await
    }

    async fn ask_for(&self, step: &str, ttl: &str, now: DateTime<Utc>) -> Outcome {
        let body = RequestBody {
            contract: "prod-db".into(),
            step: Some(step.into()),
            ttl: Some(ttl.into()),
            reason: Some("INC-1".into()),
            certify: false,
        };
        self.service
            .request("alice", &self.key("alice"), &body, now)
            .await
            .unwrap()
    }

    fn state(&self, id: &str, now: DateTime<Utc>) -> State {
        self.service.grant("carol", id, now).unwrap().state
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn revoke_grant(id: &str) -> RevokeBody {
    RevokeBody {
        grant: Some(id.into()),
        ..RevokeBody::default()
    }
}

#[tokio::test]
async fn a_step_without_approvals_is_granted_and_certified_at_once() {
    let f = fixture();
    let out = f.ask("alice", "observe", true, t0()).await.unwrap();
    assert_eq!(out.grant.state, State::Active);
    assert_eq!(out.grant.grant.end, Some(at(30 * 60)), "the step's max_ttl");
    assert!(out.certificate.is_some() && out.serial.is_some());
    assert!(!out.existing);
}

#[tokio::test]
async fn a_higher_step_needs_its_prerequisite_held() {
    let f = fixture();
    let err = f.ask("alice", "operate", false, t0()).await.unwrap_err();
    assert!(err.to_string().contains("request `observe` first"), "{err}");
}

/// Regression (issue 9): `sign` for a step already held filed a duplicate request.
#[tokio::test]
async fn asking_again_for_a_held_step_mints_from_the_grant_held() {
    let f = fixture();
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
    let all = f.service.grants("alice", true, at(60)).unwrap();
    assert_eq!(all.len(), 1, "no second grant");
}

/// Regression (issue 9): a second request while one is pending was filed again.
#[tokio::test]
async fn asking_again_while_a_request_is_pending_returns_that_request() {
    let f = fixture();
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let pending = f.ask("alice", "operate", true, at(1)).await.unwrap();
    assert_eq!(pending.grant.state, State::Pending);
    let again = f.ask("alice", "operate", true, at(2)).await.unwrap();
    assert_eq!(again.grant.grant.id, pending.grant.grant.id);
    assert!(again.existing && again.certificate.is_none());
    let seen = f.service.grants("bob", false, at(2)).unwrap();
    assert_eq!(
        seen.iter().filter(|g| g.grant.step == "operate").count(),
        1,
        "bob sees one request"
    );
}

#[tokio::test]
async fn nobody_approves_their_own_request_and_one_approval_counts_once() {
    let f = fixture();
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    f.ask("alice", "break-glass", false, at(3)).await.unwrap();
    let bg = f.service.grants("alice", false, at(3)).unwrap();
    let bg = &bg
        .iter()
        .find(|g| g.grant.step == "break-glass")
        .unwrap()
        .grant
        .id;
    let err = f.service.approve("alice", bg, at(4)).await.unwrap_err();
    assert!(err.to_string().contains("your own request"), "{err}");
    f.service.approve("bob", bg, at(5)).await.unwrap();
    let err = f.service.approve("bob", bg, at(6)).await.unwrap_err();
    assert!(err.to_string().contains("count once"), "{err}");
    assert_eq!(f.state(bg, at(6)), State::Pending);
    f.service.approve("carol", bg, at(7)).await.unwrap();
    assert_eq!(f.state(bg, at(7)), State::Active);
}

#[tokio::test]
async fn an_approval_after_the_prerequisite_ended_denies_the_request() {
    let f = fixture();
    f.ask_for("observe", "1m", t0()).await;
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    let out = f.service.approve("bob", &op, at(120)).await.unwrap();
    assert_eq!(out.grant.state, State::Denied);
    assert!(out
        .reasons
        .last()
        .unwrap()
        .contains("request `observe` first"));
}

#[tokio::test]
async fn a_higher_step_is_clamped_to_the_step_it_climbed_from() {
    let f = fixture();
    f.ask_for("observe", "10m", t0()).await;
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    let out = f.service.approve("bob", &op, at(2)).await.unwrap();
    assert_eq!(out.grant.grant.end, Some(at(600)), "ends with observe");
}

/// Regression (issue 9): a pending operate request counted as holding operate, so revoking
/// the approved operate grant left break-glass standing.
#[tokio::test]
async fn a_pending_request_does_not_shield_a_dependent_from_revocation() {
    let f = fixture();
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let op1 = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    f.service.approve("bob", &op1, at(2)).await.unwrap();
    f.ask("alice", "break-glass", false, at(3)).await.unwrap();
    let bg = f.service.grants("alice", false, at(3)).unwrap();
    let bg = bg
        .iter()
        .find(|g| g.grant.step == "break-glass")
        .unwrap()
        .grant
        .id
        .clone();
    f.service.approve("bob", &bg, at(4)).await.unwrap();
    f.service.approve("carol", &bg, at(5)).await.unwrap();
    assert_eq!(f.state(&bg, at(5)), State::Active);
    // A second operate request, pending (the ledger allows one from before this rule).
    let mut op2 = f.service.store.grant(&op1).unwrap().unwrap();
    op2.id = "op2pending00".into();
    op2.status = crate::grant::Status::Pending;
    op2.approvals.clear();
    op2.start = None;
    op2.end = None;
    f.service
        .store
        .apply(
            Change {
                grants: vec![op2],
                ..Change::default()
            },
            at(6),
        )
        .unwrap();
    let out = f
        .service
        .revoke("carol", &revoke_grant(&op1), at(7))
        .await
        .unwrap();
    assert!(
        out.grants.contains(&bg),
        "break-glass goes with operate: {out:?}"
    );
    assert_eq!(f.state(&bg, at(7)), State::Revoked);
    assert_eq!(
        f.state("op2pending00", at(7)),
        State::Pending,
        "the request stays"
    );
}

/// Regression (issue 9): revoking the longer of two observe grants left operate running to
/// that grant's old end.
#[tokio::test]
async fn a_dependent_is_reclamped_to_the_prerequisite_left_standing() {
    let f = fixture();
    let o1 = f.ask_for("observe", "30m", t0()).await.grant.grant.id;
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    assert_eq!(f.state(&op, at(2)), State::Active);
    // A second, short observe grant (the ledger keeps it beside the first).
    let mut o2 = f.service.store.grant(&o1).unwrap().unwrap();
    o2.id = "o2shortgrant".into();
    o2.end = Some(at(10));
    f.service
        .store
        .apply(
            Change {
                grants: vec![o2],
                ..Change::default()
            },
            at(3),
        )
        .unwrap();
    let out = f
        .service
        .revoke("carol", &revoke_grant(&o1), at(4))
        .await
        .unwrap();
    assert!(!out.grants.contains(&op), "o2 still holds observe");
    let g = f.service.grant("carol", &op, at(4)).unwrap();
    assert_eq!(g.grant.end, Some(at(10)), "operate ends with o2");
    assert_eq!(f.state(&op, at(11)), State::Expired);
}

#[tokio::test]
async fn revoking_a_prerequisite_takes_its_dependents_along() {
    let f = fixture();
    let o = f
        .ask("alice", "observe", false, t0())
        .await
        .unwrap()
        .grant
        .grant
        .id;
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    let out = f
        .service
        .revoke("alice", &revoke_grant(&o), at(3))
        .await
        .unwrap();
    assert_eq!(out.grants.len(), 2, "{out:?}");
    assert_eq!(f.state(&op, at(3)), State::Revoked);
}

#[tokio::test]
async fn only_admins_revoke_what_is_not_theirs() {
    let f = fixture();
    let o = f
        .ask("alice", "observe", false, t0())
        .await
        .unwrap()
        .grant
        .grant
        .id;
    let err = f
        .service
        .revoke("bob", &revoke_grant(&o), at(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only ramp-admin"), "{err}");
    f.service
        .revoke("carol", &revoke_grant(&o), at(2))
        .await
        .unwrap();
}

/// Regression (issue 9): `sign --wait` read every grant each second; a wait is now a
/// subscription that answers when the grant is decided.
#[tokio::test]
async fn a_wait_answers_when_the_request_is_decided_and_not_before() {
    let f = std::sync::Arc::new(fixture());
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    // Nothing happens: the wait runs out and answers the request as it stands.
    let started = std::time::Instant::now();
    let view = f
        .service
        .wait_grant("alice", &op, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(view.state, State::Pending);
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
    f.ask("bob", "observe", false, at(2)).await.unwrap_err(); // bob is no requester
    assert!(!waiter.is_finished());
    f.service.approve("bob", &op, Utc::now()).await.unwrap();
    let view = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the wait answered")
        .unwrap()
        .unwrap();
    assert_eq!(view.state, State::Active);
}

#[tokio::test]
async fn a_grant_is_seen_by_its_owner_reviewers_and_its_approvers_only() {
    let f = fixture();
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let op = f
        .ask("alice", "operate", false, at(1))
        .await
        .unwrap()
        .grant
        .grant
        .id;
    for who in ["alice", "bob", "carol"] {
        f.service.grant(who, &op, at(1)).unwrap();
    }
    let err = f.service.grant("mallory", &op, at(1)).unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
}

/// Regression (issue 9): `GET /v1/audit?since=9223372036854775807` panicked a worker before
/// the role check.
#[tokio::test]
async fn an_absurd_audit_age_is_bounded_after_the_role_check() {
    let f = fixture();
    f.ask("alice", "observe", false, t0()).await.unwrap();
    let err = f.service.audit("alice", Some(i64::MAX), t0()).unwrap_err();
    assert!(matches!(err, ServiceError::Denied(_)), "{err}");
    let all = f.service.audit("bob", Some(i64::MAX), t0()).unwrap();
    assert!(!all.is_empty());
    assert!(f.service.audit("bob", Some(i64::MIN), t0()).is_ok());
}

#[tokio::test]
async fn old_nonces_are_forgotten_by_the_sweep_only() {
    let f = fixture();
    assert!(f.service.store.remember_nonce("00ab", t0()).unwrap());
    assert_eq!(
        f.service.forget_old_nonces(at(60)).unwrap(),
        0,
        "still in the window"
    );
    assert!(!f.service.store.remember_nonce("00ab", at(60)).unwrap());
    assert_eq!(f.service.forget_old_nonces(at(3600)).unwrap(), 1);
}
