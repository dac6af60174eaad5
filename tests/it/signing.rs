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

    // A short certificate works inside its window and is refused after it. Ten seconds leave
    // a busy machine time for one login; the refusal waits for the window's end, not a guess.
    // alice gives up her first grant so that the short one is a grant of its own.
    crate::support::run_ok(&mut daemon.cmd(&dir, ALICE, &["revoke", "--grant", &grant]));
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
            "10s",
            "--reason",
            "x",
        ],
    ));
    let short = cert_of(&dir, ALICE);
    assert_eq!(short.valid_before() - short.valid_after(), 70);
    let inside = ssh_exec(&sshd, "root", &dir.join(ALICE), "true");
    assert!(
        inside.status.success(),
        "refused inside its window: {}",
        String::from_utf8_lossy(&inside.stderr)
    );
    while (chrono::Utc::now().timestamp() as u64) < short.valid_before() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let late = ssh_exec(&sshd, "root", &dir.join(ALICE), "true");
    assert!(!late.status.success(), "expired certificate accepted");
    assert!(
        sshd.log().contains("Certificate invalid: expired"),
        "{}",
        sshd.log()
    );
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
    // Six shell loops sign as fast as they can until the daemon dies under them. Each signs
    // with its own copy of alice's key, so each has its own certificate file, and keeps a copy
    // of every certificate it received: those are what must never share a serial (the
    // ledger's tree is keyed by serial, so a reused serial would only overwrite a record).
    let received = dir.join("received");
    std::fs::create_dir(&received).unwrap();
    let signers: Vec<std::process::Child> = (0..6)
        .map(|n| {
            let key = format!("signer-{n}/id_ed25519");
            std::fs::create_dir(dir.join(format!("signer-{n}"))).unwrap();
            std::fs::copy(dir.join(ALICE), dir.join(&key)).unwrap();
            std::fs::copy(
                dir.join(format!("{ALICE}.pub")),
                dir.join(format!("{key}.pub")),
            )
            .unwrap();
            let sign = shell_words(&daemon.cmd(&dir, &key, &["sign", "--contract", "prod-web"]));
            let cert = dir.join(format!("{key}-cert.pub"));
            let line = format!(
                "for i in $(seq 1 200); do {sign} >/dev/null 2>&1 || exit 0; cp '{}' '{}/{n}-'$i || exit 1; done",
                cert.display(),
                received.display()
            );
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&line)
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill only once the load has got some certificates out (order, not a time budget).
    let count = || std::fs::read_dir(&received).unwrap().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "the signers got {} certificates in 60 s:\n{}",
            count(),
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon.kill9();
    for mut s in signers {
        let status = s.wait().unwrap();
        assert!(status.success(), "a signer could not keep its certificate");
    }
    let held: Vec<Certificate> = std::fs::read_dir(&received)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            Certificate::from_openssh(text.trim())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    let mut serials: Vec<u64> = held.iter().map(Certificate::serial).collect();
    serials.sort_unstable();
    let distinct = {
        let mut d = serials.clone();
        d.dedup();
        d
    };
    assert_eq!(distinct, serials, "two clients hold the same serial");

    // Everyone who got a certificate got it after its record was on disk.
    let store = crate::stores::TestLedger::open(&dir);
    for cert in &held {
        let record = store.cert(cert.serial());
        assert_eq!(
            record.map(|r| r.key_id),
            Some(cert.key_id().to_string()),
            "serial {} is not in the ledger as it was handed out",
            cert.serial()
        );
    }
    assert!(store.verify_audit().first_bad.is_none());
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
