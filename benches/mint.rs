//! Minting one user certificate in-process: the CA's core cost, without IO.

use std::time::Duration;

use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ramp_ca::domain::cert::{mint_user_cert, user_cert_for};
use ramp_ca::domain::grant::{Asked, Grant};
use ramp_ca::domain::policy::{CertOptions, Step};
use russh::keys::ssh_key::{Algorithm, PrivateKey};

fn mint(c: &mut Criterion) {
    let mut rng = rand::rng();
    let ca = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
    let user = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
    let now = Utc::now();
    let asked = Asked {
        id: "bench".into(),
        user: "alice",
        contract: "prod-db",
        step: "operate".into(),
        reason: Some("bench"),
        ttl_secs: 3600,
        approvals_from: vec![],
        approvals_needed: 0,
        start: None,
    };
    let grant = Grant::requested(asked, now);
    let step = Step {
        name: "operate".into(),
        after: None,
        principals: vec!["readonly".into(), "dbadmin".into()],
        max_ttl: Duration::from_secs(7200),
        approvals: None,
        options: CertOptions {
            source_address: vec!["10.0.0.0/8".parse().unwrap()],
            ..CertOptions::default()
        },
        break_glass: false,
        review: Default::default(),
    };
    let mut serial = 0u64;
    c.bench_function("mint one user certificate", |b| {
        b.iter(|| {
            serial += 1;
            let spec = user_cert_for(&grant, &step, user.public_key(), serial, now).unwrap();
            black_box(mint_user_cert(&ca, &spec, &mut rng).unwrap())
        })
    });
}

criterion_group!(benches, mint);
criterion_main!(benches);
