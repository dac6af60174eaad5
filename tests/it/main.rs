//! End-to-end tests: the real `ramp-ca` binary, real sled on disk, real OpenSSH.

mod audit;
mod bad_input;
mod daemon;
mod init_policy;
mod revocation;
mod signing;
mod sshd_harness;
mod support;

use daemon::Daemon;
use support::{ramp, run_ok, TestDir};

/// Demo identities that `ramp-ca init` registers in people.yaml.
pub const ALICE: &str = "demo/alice/id_ed25519"; // sre
pub const BOB: &str = "demo/bob/id_ed25519"; // sre-lead, ramp-auditor
pub const CAROL: &str = "demo/carol/id_ed25519"; // sre-lead, ramp-admin

/// An initialised installation with its daemon running.
pub fn setup() -> (TestDir, Daemon) {
    let dir = TestDir::new();
    run_ok(ramp(&dir).arg("init"));
    let daemon = Daemon::start(&dir);
    (dir, daemon)
}

/// Parses `--json` output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}
