//! Request authentication and body decoding: everything the API reads from the network
//! before it trusts a caller.
//!
//! Input: lines `METHOD`, `PATH`, `x-ramp-timestamp`, `x-ramp-nonce`, `x-ramp-signature`,
//! then the body (all the rest, newlines included). A header whose line is missing is
//! absent. The seeds include requests really signed by the fixed key below, so mutations
//! start from the signature-checking path, not just the header parsing.
//!
//! Property: `auth::verify` and the JSON body decoders never panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use ramp_ca::auth::{verify, Headers};
use ramp_ca::domain::policy::Policies;
use ramp_ca::wire::grants::{RequestBody, RevokeBody};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::PublicKey;

/// The registered user's key comes from a fixed seed, so a signature made once (the seeds
/// in fuzz/seeds/api_request) stays valid and crashes reproduce. Seed bytes 0x01..=0x20.
const ALICE_SEED: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8 + 1;
        i += 1;
    }
    s
};

/// The time the seeds were signed for (`x-ramp-timestamp: 1800000000`).
const NOW: i64 = 1_800_000_000;

/// A small valid policy set, built once: alice (the key above), bob (another key), a host
/// and a contract, like the unit test in src/auth.rs.
fn policies() -> &'static Policies {
    static P: OnceLock<Policies> = OnceLock::new();
    P.get_or_init(|| {
        let key = |seed: &[u8; 32]| {
            PublicKey::from(Ed25519Keypair::from_seed(seed).public)
                .to_openssh()
                .expect("an Ed25519 key encodes")
        };
        let people = format!(
            "users:\n  alice:\n    keys: [\"{}\"]\n    roles: [sre]\n  bob:\n    keys: [\"{}\"]\n    roles: [sre-lead, ramp-admin]\n",
            key(&ALICE_SEED),
            key(&[0x42; 32]),
        );
        let hosts = "hosts:\n  db-1:\n    address: 10.0.3.7:22\n    labels: {env: prod}\n";
        let contract = "contract: prod-db\ntargets: {names: [\"db-*\"]}\nrequesters: [sre]\nsteps:\n  - name: observe\n    principals: [readonly]\n    max_ttl: 30m\n";
        ramp_ca::domain::policy::load_texts(&[
            (PathBuf::from("people.yaml"), people),
            (PathBuf::from("hosts.yaml"), hosts.into()),
            (PathBuf::from("prod-db.yaml"), contract.into()),
        ])
        .expect("the fixed fuzzing policies are valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let policies = policies();
    let mut rest = data;
    let mut fields: Vec<String> = Vec::with_capacity(5);
    while fields.len() < 5 {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        fields.push(String::from_utf8_lossy(&rest[..nl]).into_owned());
        rest = &rest[nl + 1..];
    }
    // With fewer than five lines the last partial line is the next field and there is no body.
    if fields.len() < 5 && !rest.is_empty() {
        fields.push(String::from_utf8_lossy(rest).into_owned());
        rest = &[];
    }
    let body = rest;
    let field = |i: usize| fields.get(i).map(String::as_str);
    let headers = Headers {
        timestamp: field(2),
        nonce: field(3),
        signature: field(4),
    };
    let now = DateTime::<Utc>::from_timestamp(NOW, 0).expect("in range");
    let _ = verify(
        policies,
        field(0).unwrap_or(""),
        field(1).unwrap_or(""),
        &headers,
        body,
        now,
    );
    let _ = serde_json::from_slice::<RequestBody>(body);
    let _ = serde_json::from_slice::<RevokeBody>(body);
});
