//! Signing end to end: the certificate's fields, a real sshd honouring them, serials.

use russh::keys::ssh_key::Certificate;

use crate::support::{ssh_exec, TestDir};
use crate::{json, setup, ALICE};

fn cert_of(dir: &TestDir, key: &str) -> Certificate {
    Certificate::from_openssh(dir.read(format!("{key}-cert.pub")).trim()).unwrap()
}

#[test]
fn a_minted_certificate_carries_the_grant_and_real_sshd_honours_it() {
    let (dir, daemon) = setup();
    let out = crate::support::run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &crate::observe("INC-42", &["--json"]),
    ));
    let out = json(&out);
    let grant = out["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(out["grant"]["state"], "active");

    let listing = crate::support::run_ok(
        std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(dir.join(format!("{ALICE}-cert.pub"))),
    );
    assert!(
        listing.contains(&format!("Key ID: \"ramp:alice:prod-db:observe:{grant}\"")),
        "{listing}"
    );
    assert!(listing.contains("user certificate"), "{listing}");
    assert!(
        listing.contains("Principals: \n                readonly\n"),
        "{listing}"
    );
    assert!(listing.contains("Critical Options: (none)"), "{listing}");
    assert!(listing.contains("permit-pty"), "{listing}");
    assert!(!listing.contains("permit-port-forwarding"), "{listing}");

    let cert = cert_of(&dir, ALICE);
    assert_eq!(cert.serial(), out["serial"].as_u64().unwrap());
    assert_eq!(
        cert.valid_before() - cert.valid_after(),
        60 + 30 * 60,
        "backdated 60 s, 30 m step"
    );
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        cert.valid_after() <= now - 59 && cert.valid_after() >= now - 120,
        "valid_after {}",
        cert.valid_after()
    );

    // Trusting user-ca directly only proves the format; in production targets trust node-ca.
    let sshd = crate::readonly_sshd(dir.join("keys/user-ca.pub"), None);
    let ok = ssh_exec(&sshd, "root", &dir.join(ALICE), "echo through-the-window");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "through-the-window"
    );

    // prod-web/logs grants principal `logs`, which this sshd does not accept for root.
    crate::support::run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &["sign", "--contract", "prod-web", "--step", "logs"],
    ));
    assert_eq!(cert_of(&dir, ALICE).valid_principals(), ["logs"]);
    let refused = ssh_exec(&sshd, "root", &dir.join(ALICE), "true");
    assert!(!refused.status.success());
    assert!(
        sshd.log()
            .contains("Certificate does not contain an authorized principal"),
        "{}",
        sshd.log()
    );

    // A six-second certificate works inside its window and is refused after it.
    crate::support::run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "sign",
            "--contract",
            "prod-db",
            "--step",
            "observe",
            "--ttl",
            "6s",
            "--reason",
            "x",
        ],
    ));
    let short = cert_of(&dir, ALICE);
    assert_eq!(short.valid_before() - short.valid_after(), 66);
    assert!(ssh_exec(&sshd, "root", &dir.join(ALICE), "true")
        .status
        .success());
    std::thread::sleep(std::time::Duration::from_millis(6500));
    let late = ssh_exec(&sshd, "root", &dir.join(ALICE), "true");
    assert!(!late.status.success(), "expired certificate accepted");
    assert!(sshd.log().contains("expired"), "{}", sshd.log());
}

#[test]
fn serials_are_unique_and_never_reused_across_restarts() {
    let (dir, daemon) = setup();
    let sign = |daemon: &crate::Daemon| {
        let out = crate::support::run_ok(&mut daemon.cmd(
            &dir,
            ALICE,
            &["sign", "--contract", "prod-web", "--json"],
        ));
        json(&out)["serial"].as_u64().unwrap()
    };
    let mut serials = vec![sign(&daemon), sign(&daemon)];
    assert!(daemon.stop().success(), "clean stop on SIGTERM");
    let daemon = crate::Daemon::start(&dir);
    serials.push(sign(&daemon));
    serials.push(sign(&daemon));
    let mut sorted = serials.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted, serials,
        "strictly increasing, no repeats: {serials:?}"
    );
    assert!(serials[0] > 0, "serial 0 cannot be revoked by KRL");
}

#[test]
fn sign_falls_back_to_ssh_agent_when_the_key_file_is_not_there() {
    let (dir, daemon) = setup();
    let sock = dir.join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    crate::support::run_ok(
        std::process::Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &sock)
            .arg(dir.join(ALICE)),
    );
    // Only the public half stays on disk: the agent must do the signing.
    std::fs::rename(dir.join(ALICE), dir.join("alice-private-elsewhere")).unwrap();
    let out = crate::support::run_ok(
        daemon
            .cmd(&dir, ALICE, &["sign", "--contract", "prod-web", "--json"])
            .env("SSH_AUTH_SOCK", &sock),
    );
    assert_eq!(json(&out)["grant"]["user"], "alice");
    assert_eq!(cert_of(&dir, ALICE).valid_principals(), ["logs"]);
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn kill_9_while_signing_leaves_unique_serials_and_an_intact_audit_chain() {
    let (dir, daemon) = setup();
    // Six shell loops sign as fast as they can until the daemon dies under them.
    let sign = shell_words(&daemon.cmd(&dir, ALICE, &["sign", "--contract", "prod-web"]));
    let line = format!("for i in $(seq 1 200); do {sign} >/dev/null 2>&1 || exit 0; done");
    let signers: Vec<std::process::Child> = (0..6)
        .map(|_| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&line)
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    daemon.kill9();
    for mut s in signers {
        let _ = s.wait();
    }
    let store = ramp_ca::store::Store::open(&dir.join("data")).unwrap();
    let certs = store.certs().unwrap();
    let mut serials: Vec<u64> = certs.iter().map(|c| c.serial).collect();
    let minted = serials.len();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), minted, "a serial was used twice");
    assert!(
        minted > 3,
        "the load signed something before the kill ({minted})"
    );
    assert!(store.verify_audit().unwrap().first_bad.is_none());
    drop(store);
    let daemon = crate::Daemon::start(&dir);
    let out = crate::support::run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &["sign", "--contract", "prod-web", "--json"],
    ));
    let next = json(&out)["serial"].as_u64().unwrap();
    assert!(
        next > *serials.last().unwrap(),
        "serial {next} reused after the crash"
    );
}

/// A command line for `sh -c`, each word single-quoted.
fn shell_words(cmd: &std::process::Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}='{}'",
                k.to_string_lossy(),
                v?.to_string_lossy()
            ))
        })
        .collect();
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    format!("env {} {}", envs.join(" "), quoted.join(" "))
}
