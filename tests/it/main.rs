//! End-to-end tests: the real `ramp-ca` binary, its ledger in sled on disk or (with
//! `RAMP_TEST_STORE=postgres`) in a real PostgreSQL of their own, real OpenSSH.

mod audit;
mod bad_input;
mod bastion;
mod certs;
mod daemon;
mod dashboard;
mod extend;
mod faults;
mod init_policy;
mod nodes;
mod notify;
mod object_recordings;
mod on_call;
mod pg_store;
mod postgres;
mod refusals_told;
mod retention;
mod review;
mod review_page;
mod revocation;
mod rig;
mod schedule;
mod shared_recordings;
mod signing;
mod sshd_harness;
mod store_copy;
mod stores;
mod support;
mod tls;

use daemon::Daemon;
use std::path::PathBuf;

use support::{ramp, run_ok, Sshd, SshdOptions, TestDir};

/// Demo identities that `ramp-ca init` registers in people.yaml.
pub const ALICE: &str = "demo/alice/id_ed25519"; // sre
pub const BOB: &str = "demo/bob/id_ed25519"; // sre-lead, ramp-auditor
pub const CAROL: &str = "demo/carol/id_ed25519"; // sre-lead, ramp-admin

/// An initialised installation with its daemon running.
pub fn setup() -> (TestDir, Daemon) {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let daemon = Daemon::start(&dir);
    (dir, daemon)
}

/// Parses `--json` output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A real sshd trusting `ca_pub` (and reading `revoked_keys`) that lets principal
/// `readonly` log in as root.
pub fn readonly_sshd(ca_pub: PathBuf, revoked_keys: Option<PathBuf>) -> Sshd {
    Sshd::start(SshdOptions {
        trusted_user_ca_keys: ca_pub,
        revoked_keys,
        principals: vec![("root".into(), vec!["readonly".into()])],
        ..SshdOptions::default()
    })
}

/// `sign --contract prod-db --step observe --reason REASON EXTRA...`: alice's usual first step.
pub fn observe<'a>(reason: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "sign",
        "--contract",
        "prod-db",
        "--step",
        "observe",
        "--reason",
        reason,
    ];
    args.extend_from_slice(extra);
    args
}

/// `request --contract prod-db --step STEP --reason REASON --json`: alice's next step.
pub fn ask<'a>(step: &'a str, reason: &'a str) -> Vec<&'a str> {
    vec![
        "request",
        "--contract",
        "prod-db",
        "--step",
        step,
        "--reason",
        reason,
        "--json",
    ]
}
