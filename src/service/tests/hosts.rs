//! Host certificates: admins only, named for the host and its address, audited.

use russh::keys::ssh_key::{Algorithm, Certificate, PrivateKey};

use super::*;
use crate::wire::grants::SignHostBody;

fn host_key() -> String {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    key.public_key().to_openssh().unwrap()
}

#[tokio::test]
async fn only_admins_sign_host_certificates_and_each_is_audited() {
    let f = fixture().await;
    let body = SignHostBody {
        name: "db-1".into(),
        public_key: host_key(),
        ttl: Some("1d".into()),
    };
    let err = f.service.sign_host("bob", &body, t0()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("signing host certificates takes ramp-admin"),
        "{err}"
    );
    let line = f.service.sign_host("carol", &body, t0()).await.unwrap();
    let cert = Certificate::from_openssh(&line).unwrap();
    assert_eq!(cert.key_id(), "ramp-host:db-1");
    assert_eq!(
        cert.valid_principals(),
        ["db-1", "127.0.0.1"],
        "its address too"
    );
    assert_eq!(cert.valid_before(), at(86400).timestamp() as u64);
    let signed = f.audited("sign-host").await;
    assert_eq!(signed.len(), 1);
    assert_eq!(
        (signed[0].actor.as_str(), signed[0].subject.as_str()),
        ("carol", "db-1")
    );
    assert_eq!(signed[0].detail["serial"], cert.serial());
    for (name, key, why) in [
        ("db 1", host_key(), "bad host name"),
        ("db-9", "not a key".to_string(), "not an OpenSSH public key"),
    ] {
        let bad = SignHostBody {
            name: name.into(),
            public_key: key,
            ttl: None,
        };
        let err = f.service.sign_host("carol", &bad, t0()).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
}
