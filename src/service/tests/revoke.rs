//! Revocation and the grants that climbed from what was revoked; the KRL.

use super::*;

/// Regression (issue 9): a pending operate request counted as holding operate, so revoking
/// the approved operate grant left break-glass standing.
#[tokio::test]
async fn a_pending_request_does_not_shield_a_dependent_from_revocation() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let op1 = f.grant_of("operate", at(1)).await;
    f.service.approve("bob", &op1, at(2)).await.unwrap();
    let bg = f.grant_of("break-glass", at(3)).await;
    f.service.approve("bob", &bg, at(4)).await.unwrap();
    f.service.approve("carol", &bg, at(5)).await.unwrap();
    assert_eq!(f.state(&bg, at(5)).await, State::Active);
    // A second operate request, pending (the ledger allows one from before this rule).
    let mut op2 = f.stored(&op1).await;
    op2.id = "op2pending00".into();
    op2.state = State::Pending;
    op2.approvals.clear();
    op2.start = None;
    op2.end = None;
    f.plant(vec![op2], at(6)).await;
    let out = f
        .service
        .revoke("carol", &revoke_grant(&op1), at(7))
        .await
        .unwrap();
    assert!(
        out.grants.contains(&bg),
        "break-glass goes with operate: {out:?}"
    );
    assert_eq!(f.state(&bg, at(7)).await, State::Revoked);
    assert_eq!(
        f.state("op2pending00", at(7)).await,
        State::Pending,
        "the request stays"
    );
}

/// Regression (issue 9): revoking the longer of two observe grants left operate running to
/// that grant's old end.
#[tokio::test]
async fn a_dependent_is_reclamped_to_the_prerequisite_left_standing() {
    let f = fixture().await;
    let o1 = f.ask_for("observe", "30m", t0()).await.grant.grant.id;
    let op = f.grant_of("operate", at(1)).await;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    assert_eq!(f.state(&op, at(2)).await, State::Active);
    let key = f.key("alice");
    let cert = f.service.certificate("alice", &key, &op, at(2));
    let cert = cert.await.unwrap().certificate.unwrap();
    let cert = russh::keys::ssh_key::Certificate::from_openssh(&cert).unwrap();
    let peer = "127.0.0.1:5000".parse().unwrap();
    let live = f.service.check_login(&cert, "dbadmin@db-1", peer, at(3));
    let live = live.await.unwrap();
    // A second, short observe grant (the ledger keeps it beside the first).
    let mut o2 = f.stored(&o1).await;
    o2.id = "o2shortgrant".into();
    o2.end = Some(at(10));
    f.plant(vec![o2], at(3)).await;
    let out = f
        .service
        .revoke("carol", &revoke_grant(&o1), at(4))
        .await
        .unwrap();
    assert!(!out.grants.contains(&op), "o2 still holds observe");
    let g = f.service.grant("carol", &op, at(4)).await.unwrap();
    assert_eq!(g.grant.end, Some(at(10)), "operate ends with o2");
    assert_eq!(f.state(&op, at(11)).await, State::Expired);
    // Its live session ends then, and its terminal says why (not "revoked").
    assert_eq!(f.service.recheck(&live, at(9)).await, None);
    let why = f.service.recheck(&live, at(11)).await.unwrap();
    assert_eq!(
        why,
        "the grant ended at 17:46:50 UTC, cut short with the grant it climbed from"
    );
}

#[tokio::test]
async fn revoking_a_prerequisite_takes_its_dependents_along() {
    let f = fixture().await;
    let o = f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    let out = f
        .service
        .revoke("alice", &revoke_grant(&o), at(3))
        .await
        .unwrap();
    assert_eq!(out.grants.len(), 2, "{out:?}");
    assert_eq!(f.state(&op, at(3)).await, State::Revoked);
}

#[tokio::test]
async fn only_admins_revoke_what_is_not_theirs() {
    let f = fixture().await;
    let o = f.grant_of("observe", t0()).await;
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

#[tokio::test]
async fn the_krl_lists_every_revoked_serial_and_changes_only_with_a_revocation() {
    let f = fixture().await;
    let empty = f.service.krl().await.unwrap();
    let first = f.ask("alice", "observe", true, t0()).await.unwrap();
    let web = RequestBody {
        contract: "prod-web".into(),
        certify: true,
        ..RequestBody::default()
    };
    let other = f
        .service
        .request("alice", &f.key("alice"), &web, at(1))
        .await
        .unwrap();
    assert_eq!(f.service.krl().await.unwrap(), empty, "nothing revoked yet");
    let serial = first.serial.unwrap();
    let by_serial = RevokeBody {
        serial: Some(serial),
        ..RevokeBody::default()
    };
    let revoked = f.service.revoke("carol", &by_serial, at(2)).await.unwrap();
    assert_eq!(revoked.serials, [serial]);
    let krl = f.service.krl().await.unwrap();
    assert_eq!(
        krl,
        f.service.krl().await.unwrap(),
        "the same bytes until the next"
    );
    assert_eq!(&krl[12..20], &1u64.to_be_bytes(), "version: one revocation");
    let keys = &f.service.keys;
    let cas = [
        keys.user_ca.public_key(),
        keys.node_ca.public_key(),
        keys.host_ca.public_key(),
    ];
    let revocations = f.service.store.revocations().await.unwrap();
    let expected = crate::domain::krl::of_revocations(&cas, &[serial], &revocations);
    assert_eq!(krl, expected);
    let rest = f
        .service
        .revoke("alice", &revoke_grant(&other.grant.grant.id), at(3))
        .await
        .unwrap();
    assert_eq!(rest.serials, [other.serial.unwrap()]);
    let krl2 = f.service.krl().await.unwrap();
    assert_ne!(krl2, krl);
    assert_eq!(&krl2[12..20], &2u64.to_be_bytes());
    assert!(f
        .service
        .store
        .is_revoked(other.serial.unwrap())
        .await
        .unwrap());
    let audited = f.audited("revoke").await;
    let subjects: Vec<String> = audited.iter().map(|r| r.subject.clone()).collect();
    assert_eq!(
        subjects,
        [
            format!("serial:{serial}"),
            format!("grant:{}", other.grant.grant.id)
        ]
    );
}
