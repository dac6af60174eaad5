//! Logins through the bastion as the service checks them, with a certificate the service
//! minted and a fixed `now`: every refusal names what is wrong, live logins are rechecked,
//! and refusals are audited for people the CA knows only.

use std::net::SocketAddr;

use russh::keys::ssh_key::{Algorithm, Certificate, PrivateKey};

use super::*;
use crate::domain::login::{Label, Login, Refusal};
use crate::service::Attempt;

const PEER: &str = "127.0.0.1:5000";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

/// alice's certificate for `observe` of prod-db, minted at `t0`, and its grant.
async fn observer(f: &Fixture) -> (Certificate, String) {
    let out = f.ask("alice", "observe", true, t0()).await.unwrap();
    let cert = Certificate::from_openssh(&out.certificate.unwrap()).unwrap();
    (cert, out.grant.grant.id)
}

async fn refusal(f: &Fixture, cert: &Certificate, login: &str, now: DateTime<Utc>) -> Refusal {
    f.service
        .check_login(cert, login, peer(), now)
        .await
        .unwrap_err()
}

/// alice on db-1 as readonly with `cert`, at `now`.
async fn logged_in(f: &Fixture, cert: &Certificate, now: DateTime<Utc>) -> Login {
    f.service
        .check_login(cert, "readonly@db-1", peer(), now)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_minted_certificate_logs_in_where_its_contract_covers_and_nowhere_else() {
    let f = fixture().await;
    let (cert, grant) = observer(&f).await;
    let login = logged_in(&f, &cert, at(60)).await;
    assert_eq!(
        (login.user.as_str(), login.principal.as_str()),
        ("alice", "readonly")
    );
    assert_eq!(
        (login.target.name.as_str(), login.grant.id.as_str()),
        ("db-1", grant.as_str())
    );
    assert_eq!(login.client, "127.0.0.1");
    let default = f
        .service
        .check_login(&cert, "db-2", peer(), at(60))
        .await
        .unwrap();
    assert_eq!(default.principal, "readonly", "the first principal");
    let uncovered = format!("contract `prod-db` of grant {grant} does not cover target `web-1`");
    let cases = [
        ("readonly@web-1", uncovered.as_str(), Label::Target),
        (
            "readonly@nowhere",
            "unknown target `nowhere`: not in hosts.yaml",
            Label::Target,
        ),
        (
            "dbadmin@db-1",
            "principal `dbadmin` is not in the certificate",
            Label::Principal,
        ),
        (
            "ro\x1b[2Jot@db-1",
            "holds control characters: write PRINCIPAL@TARGET",
            Label::LoginName,
        ),
    ];
    for (login, why, label) in cases {
        let r = refusal(&f, &cert, login, at(60)).await;
        assert!(r.to_string().contains(why), "{login}: {r}");
        assert_eq!(r.label(), label, "{login}");
    }
    let r = refusal(&f, &cert, "readonly@db-1", at(31 * 60)).await;
    assert_eq!(r.label(), Label::Expired, "{r}");
}

#[tokio::test]
async fn a_revoked_serial_a_grant_ended_early_and_a_removed_person_are_refused() {
    let f = fixture().await;
    let (cert, grant) = observer(&f).await;
    // The grant ends before the certificate does (a prerequisite revoked, say).
    let mut shortened = f.stored(&grant).await;
    shortened.end = Some(at(60));
    f.plant(vec![shortened], at(1)).await;
    let r = refusal(&f, &cert, "readonly@db-1", at(120)).await;
    assert_eq!(
        r,
        Refusal::GrantEnded {
            grant: grant.clone(),
            state: State::Expired
        }
    );
    assert_eq!(r.label(), Label::Expired);
    let web = RequestBody {
        contract: "prod-web".into(),
        certify: true,
        ..RequestBody::default()
    };
    let out = f
        .service
        .request("alice", &f.key("alice"), &web, at(2))
        .await
        .unwrap();
    let web_cert = Certificate::from_openssh(&out.certificate.unwrap()).unwrap();
    let serial = RevokeBody {
        serial: out.serial,
        ..RevokeBody::default()
    };
    f.service.revoke("carol", &serial, at(3)).await.unwrap();
    let r = refusal(&f, &web_cert, "logs@web-1", at(4)).await;
    assert_eq!(
        r.to_string(),
        format!("certificate serial {} is revoked", web_cert.serial())
    );
    assert_eq!(r.label(), Label::Revoked);
    // A certificate this CA never recorded: signed by user-ca, but not in the ledger.
    let stranger = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let grant_of = f.stored(&grant).await;
    let step = f.service.step_of(&grant_of).unwrap();
    let spec =
        crate::domain::cert::user_cert_for(&grant_of, &step, stranger.public_key(), 999, at(30))
            .unwrap();
    let forged =
        crate::domain::cert::mint_user_cert(&f.service.keys.user_ca, &spec, &mut rand::rng())
            .unwrap();
    assert_eq!(
        refusal(&f, &forged, "readonly@db-1", at(31)).await.label(),
        Label::UnknownSerial
    );
}

#[tokio::test]
async fn a_live_login_is_rechecked_against_the_ledger_and_the_policies() {
    let f = fixture().await;
    let (cert, grant) = observer(&f).await;
    let login = logged_in(&f, &cert, at(5)).await;
    assert_eq!(f.service.recheck(&login, at(6)).await, None);
    let by_serial = RevokeBody {
        serial: Some(cert.serial()),
        ..RevokeBody::default()
    };
    f.service.revoke("alice", &by_serial, at(7)).await.unwrap();
    assert_eq!(
        f.service.recheck(&login, at(8)).await,
        Some(format!("certificate serial {} was revoked", cert.serial()))
    );
    f.service
        .revoke("alice", &revoke_grant(&grant), at(9))
        .await
        .unwrap();
    assert_eq!(
        f.service.recheck(&login, at(10)).await.as_deref(),
        Some("alice revoked the grant: revoked")
    );
}

#[tokio::test]
async fn refusals_are_counted_always_and_audited_for_people_the_ca_knows_only() {
    let f = fixture().await;
    let (cert, _) = observer(&f).await;
    let refused = refusal(&f, &cert, "dbadmin@db-1", at(5)).await;
    let ours = Attempt {
        login_name: "dbadmin@db-1",
        peer: peer(),
        cert: Some(&cert),
        owner: None,
    };
    f.service
        .login_refused(ours, &refused, at(5))
        .await
        .unwrap();
    let stranger_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let (plain, owner) = f
        .service
        .unusable_key(stranger_key.public_key(), at(5))
        .await;
    assert_eq!((plain.label(), owner.as_deref()), (Label::PlainKey, None));
    let anonymous = Attempt {
        login_name: "root@db-1",
        peer: peer(),
        cert: None,
        owner: None,
    };
    f.service
        .login_refused(anonymous, &plain, at(5))
        .await
        .unwrap();
    let audited = f.audited("login-refused").await;
    assert_eq!(audited.len(), 1, "strangers are not audited");
    assert_eq!(
        (audited[0].actor.as_str(), audited[0].subject.as_str()),
        ("alice", "dbadmin@db-1")
    );
    assert_eq!(audited[0].detail["client"], PEER);
    assert_eq!(audited[0].detail["serial"], cert.serial());
    let metrics = f.service.metrics_text(at(5)).await.unwrap();
    assert!(
        metrics.contains("ramp_logins_refused_total{reason=\"principal\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ramp_logins_refused_total{reason=\"plain-key\"} 1"),
        "{metrics}"
    );
    // alice's own key, once her certificate expired: the newest certificate tells why.
    let (why, owner) = f.service.unusable_key(&f.key("alice"), at(31 * 60)).await;
    assert_eq!(owner.as_deref(), Some("alice"));
    assert_eq!(why.label(), Label::Expired);
    assert!(
        why.to_string()
            .contains(&format!("(serial {})", cert.serial())),
        "{why}"
    );
}

#[tokio::test]
async fn logins_and_refused_forwards_are_audited() {
    let f = fixture().await;
    let (cert, grant) = observer(&f).await;
    let login = logged_in(&f, &cert, at(5)).await;
    f.service.logged_in(&login, at(5)).await.unwrap();
    let why = "the certificate does not permit port forwarding";
    f.service
        .forward_refused("alice", "10.0.0.1:5432", why, at(6))
        .await
        .unwrap();
    let logged = &f.audited("login").await[0];
    assert_eq!(
        (logged.actor.as_str(), logged.subject.as_str()),
        ("alice", "db-1")
    );
    assert_eq!(logged.detail["grant"], grant);
    let refused = &f.audited("forward-refused").await[0];
    assert_eq!(
        (refused.subject.as_str(), refused.detail["reason"].as_str()),
        ("10.0.0.1:5432", Some(why))
    );
}
