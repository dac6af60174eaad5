//! Proves the test harness in `support` against real OpenSSH, independent of
//! ramp-ca itself, so harness breakage is not mistaken for product bugs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{free_port, keygen, run_err, run_ok, ssh_exec, Sshd, SshdOptions, TestDir};

/// Signs `key`'s public half with `ca` for `principal`; returns the cert path.
fn sign(ca: &Path, key: &Path, principal: &str) -> PathBuf {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", "test", "-n", principal, "-V", "-1m:+5m"])
            .arg(key.with_extension("pub")),
    );
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    assert!(cert.exists(), "ssh-keygen wrote no {}", cert.display());
    cert
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

/// An sshd trusting `ca` that lets principal `readonly` log in as root.
fn readonly_sshd(ca: &Path, revoked_keys: Option<PathBuf>) -> Sshd {
    Sshd::start(SshdOptions {
        trusted_user_ca_keys: ca.with_extension("pub"),
        revoked_keys,
        principals: vec![("root".to_string(), vec!["readonly".to_string()])],
        ..SshdOptions::default()
    })
}

#[test]
fn sshd_accepts_cert_with_allowed_principal_and_refuses_others() {
    let dir = TestDir::new();
    let ca = keygen(dir.path(), "ca");
    let user = keygen(dir.path(), "user");
    sign(&ca, &user, "readonly");
    let intruder = keygen(dir.path(), "intruder");
    sign(&ca, &intruder, "other");

    let sshd = readonly_sshd(&ca, None);

    let out = ssh_exec(&sshd, "root", &user, "echo hi");
    assert!(
        out.status.success(),
        "{}\n--- sshd ---\n{}",
        describe(&out),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    let out = ssh_exec(&sshd, "root", &intruder, "echo hi");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let log = sshd.log();
    assert!(
        log.contains("Certificate does not contain an authorized principal"),
        "sshd log lacks the principal refusal:\n{log}"
    );
}

#[test]
fn sshd_refuses_revoked_cert() {
    let dir = TestDir::new();
    let ca = keygen(dir.path(), "ca");
    let user = keygen(dir.path(), "user");
    let cert = sign(&ca, &user, "readonly");
    let krl = dir.join("revoked.krl");
    run_ok(
        Command::new("ssh-keygen")
            .arg("-k")
            .arg("-f")
            .arg(&krl)
            .arg(&cert),
    );

    let sshd = readonly_sshd(&ca, Some(krl));

    let out = ssh_exec(&sshd, "root", &user, "echo hi");
    assert!(!out.status.success(), "{}", describe(&out));
    let log = sshd.log();
    assert!(
        log.contains("revoked by file"),
        "sshd log lacks the revocation:\n{log}"
    );
}

#[test]
fn sshd_refuses_login_user_without_principals_file() {
    let dir = TestDir::new();
    let ca = keygen(dir.path(), "ca");
    let user = keygen(dir.path(), "user");
    sign(&ca, &user, "readonly");
    let sshd = Sshd::start(SshdOptions {
        trusted_user_ca_keys: ca.with_extension("pub"),
        ..SshdOptions::default()
    });

    let out = ssh_exec(&sshd, "root", &user, "echo hi");
    assert!(!out.status.success(), "{}", describe(&out));
}

#[test]
fn test_dir_round_trips_files() {
    let dir = TestDir::new();
    let path = dir.write("a/b/c.txt", "hello");
    assert_eq!(path, dir.join("a/b/c.txt"));
    assert!(path.starts_with(dir.path()));
    assert_eq!(dir.read("a/b/c.txt"), "hello");
}

#[test]
fn run_ok_and_run_err_report_output_and_code() {
    assert_eq!(run_ok(Command::new("sh").args(["-c", "echo out"])), "out\n");
    let (code, stderr) = run_err(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]));
    assert_eq!(code, 3);
    assert_eq!(stderr, "oops\n");
}

#[test]
#[should_panic(expected = "expected success")]
fn run_ok_panics_on_failure() {
    run_ok(&mut Command::new("false"));
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind free port");
}
