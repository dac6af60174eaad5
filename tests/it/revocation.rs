//! Approvals, denials and revocation, down to a real sshd reading the KRL.

use std::process::Command;
use std::time::Duration;

use crate::support::{run_err, run_ok, ssh_exec};
use crate::{json, setup, ALICE, BOB, CAROL};

fn grant_id(out: &str) -> String {
    json(out)["grant"]["id"].as_str().unwrap().to_string()
}

#[test]
fn approvals_follow_the_contract_and_sign_wait_picks_up_the_certificate() {
    let (dir, daemon) = setup();
    let sign = |step: &str| {
        daemon.cmd(
            &dir,
            ALICE,
            &[
                "sign",
                "--contract",
                "prod-db",
                "--step",
                step,
                "--reason",
                "INC-7",
                "--json",
            ],
        )
    };
    let (code, err) = run_err(&mut sign("operate"));
    assert_eq!(code, 1);
    assert!(err.contains("request `observe` first"), "{err}");
    let observe = grant_id(&run_ok(&mut sign("observe")));

    // `sign --wait` blocks until bob approves, then writes the certificate.
    let waiting = daemon
        .cmd(
            &dir,
            ALICE,
            &[
                "sign",
                "--contract",
                "prod-db",
                "--step",
                "operate",
                "--reason",
                "INC-7",
                "--wait",
                "--timeout",
                "60s",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pending = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let list = json(&run_ok(&mut daemon.cmd(&dir, BOB, &["grants", "--json"])));
            list.as_array()
                .unwrap()
                .iter()
                .find(|g| g["state"] == "pending")
                .map(|g| g["id"].as_str().unwrap().to_string())
        })
        .expect("bob sees alice's pending request");
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["approve", &pending]));
    assert!(err.contains("cannot approve your own request"), "{err}");
    run_ok(&mut daemon.cmd(&dir, BOB, &["approve", &pending]));
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = dir.read(format!("{ALICE}-cert.pub"));
    let cert = russh::keys::ssh_key::Certificate::from_openssh(cert.trim()).unwrap();
    assert_eq!(cert.valid_principals(), ["readonly", "dbadmin"]);
    assert_eq!(
        cert.key_id(),
        format!("ramp:alice:prod-db:operate:{pending}")
    );

    // break-glass takes two distinct approvers; the same one twice counts once.
    let glass = grant_id(&run_ok(&mut sign("break-glass")));
    run_ok(&mut daemon.cmd(&dir, BOB, &["approve", &glass]));
    let (_, err) = run_err(&mut daemon.cmd(&dir, BOB, &["approve", &glass]));
    assert!(err.contains("count once"), "{err}");
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["sign", "--grant", &glass]));
    assert!(err.contains("still pending: 1 of 2 approvals"), "{err}");
    let out = json(&run_ok(&mut daemon.cmd(
        &dir,
        CAROL,
        &["approve", &glass, "--json"],
    )));
    assert_eq!(out["grant"]["state"], "active");
    run_ok(&mut daemon.cmd(&dir, ALICE, &["sign", "--grant", &glass]));

    // A step is held only while the step it climbed from is: revoking observe takes
    // operate and break-glass along.
    let out = json(&run_ok(&mut daemon.cmd(
        &dir,
        CAROL,
        &["revoke", "--grant", &observe, "--json"],
    )));
    let mut revoked: Vec<String> = out["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    revoked.sort();
    let mut want = vec![observe.clone(), pending.clone(), glass.clone()];
    want.sort();
    assert_eq!(revoked, want);
    run_ok(&mut sign("observe"));

    // A denied request yields no certificate.
    let again = grant_id(&run_ok(&mut sign("operate")));
    run_ok(&mut daemon.cmd(&dir, BOB, &["deny", &again, "--reason", "not now"]));
    let (code, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["sign", "--grant", &again]));
    assert_eq!(code, 1);
    assert!(err.contains(&format!("grant `{again}` is denied")), "{err}");
}

#[test]
fn revoked_certificates_are_in_the_krl_and_real_sshd_refuses_them() {
    let (dir, daemon) = setup();
    let sign_copy = |name: &str| {
        let out = json(&run_ok(&mut daemon.cmd(
            &dir,
            ALICE,
            &crate::observe("r", &["--json"]),
        )));
        std::fs::copy(
            dir.join(format!("{ALICE}-cert.pub")),
            dir.join(format!("{name}-cert.pub")),
        )
        .unwrap();
        std::fs::copy(dir.join(ALICE), dir.join(name)).unwrap();
        (
            out["serial"].as_u64().unwrap(),
            out["grant"]["id"].as_str().unwrap().to_string(),
        )
    };
    let (serial_a, _) = sign_copy("a");
    let (_, grant_b) = sign_copy("b");

    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["revoke", "--user", "bob"]));
    assert!(err.contains("only ramp-admin"), "{err}");
    run_ok(&mut daemon.cmd(
        &dir,
        CAROL,
        &[
            "revoke",
            "--serial",
            &serial_a.to_string(),
            "--reason",
            "laptop lost",
        ],
    ));
    run_ok(&mut daemon.cmd(&dir, CAROL, &["krl", "--out", "revoked.krl"]));
    let query = |name: &str| {
        Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(dir.join("revoked.krl"))
            .arg(dir.join(format!("{name}-cert.pub")))
            .output()
            .unwrap()
    };
    let a = query("a");
    assert_eq!(a.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&a.stdout).contains("REVOKED"));
    assert!(query("b").status.success(), "b is not revoked");

    let sshd = crate::readonly_sshd(dir.join("keys/user-ca.pub"), Some(dir.join("revoked.krl")));
    assert!(
        !ssh_exec(&sshd, "root", &dir.join("a"), "true")
            .status
            .success(),
        "revoked certificate accepted"
    );
    let revoked_by = format!("revoked by file {}", dir.join("revoked.krl").display());
    assert!(
        sshd.log()
            .lines()
            .any(|l| l.starts_with("Authentication key ED25519-CERT") && l.ends_with(&revoked_by)),
        "{}",
        sshd.log()
    );
    assert!(ssh_exec(&sshd, "root", &dir.join("b"), "true")
        .status
        .success());

    // The KRL only changes with a revocation, so a deployed copy only changes then.
    let first = std::fs::read(dir.join("revoked.krl")).unwrap();
    run_ok(&mut daemon.cmd(&dir, CAROL, &["krl", "--out", "revoked.krl"]));
    assert_eq!(std::fs::read(dir.join("revoked.krl")).unwrap(), first);

    // Revoking the grant takes its certificates along; revoking the user takes every grant.
    run_ok(&mut daemon.cmd(&dir, CAROL, &["revoke", "--grant", &grant_b]));
    run_ok(&mut daemon.cmd(&dir, CAROL, &["krl", "--out", "revoked.krl"]));
    assert_eq!(query("b").status.code(), Some(1));
    assert_ne!(std::fs::read(dir.join("revoked.krl")).unwrap(), first);
    // (a and b came from one observe grant: a second `sign` for a step alice holds mints
    // from the grant she has. With it revoked, she asks again, and for prod-web.)
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe("r", &[])));
    run_ok(&mut daemon.cmd(&dir, ALICE, &["sign", "--contract", "prod-web"]));
    let out = json(&run_ok(&mut daemon.cmd(
        &dir,
        CAROL,
        &["revoke", "--user", "alice", "--json"],
    )));
    assert_eq!(
        out["grants"].as_array().unwrap().len(),
        2,
        "the new observe grant and prod-web: {out}"
    );
    let all = json(&run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &["grants", "--all", "--json"],
    )));
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|g| g["state"] == "revoked"),
        "{all}"
    );
}

/// Regression: after bob approved alice's `operate` request, running the same `sign` again
/// (as the pending message said) filed a second request, which approvers then saw twice.
#[test]
fn signing_again_for_a_step_held_or_asked_for_files_no_duplicate() {
    let (dir, daemon) = setup();
    let sign = |step: &str, json: bool| {
        let mut args = vec![
            "sign",
            "--contract",
            "prod-db",
            "--step",
            step,
            "--reason",
            "INC-8",
        ];
        if json {
            args.push("--json");
        }
        daemon.cmd(&dir, ALICE, &args)
    };
    let observe = grant_id(&run_ok(&mut sign("observe", true)));
    let again = json(&run_ok(&mut sign("observe", true)));
    assert_eq!(again["grant"]["id"], observe.as_str(), "{again}");
    assert!(again["certificate"].is_string(), "minted from it: {again}");

    let first = run_ok(&mut sign("operate", false));
    let pending = first.split_whitespace().next().unwrap().to_string();
    let key = dir.join(ALICE);
    assert!(
        first.contains(&format!(
            "once approved, pick the certificate up with: ramp-ca sign --grant {pending} --key {}",
            key.display()
        )),
        "{first}"
    );
    let second = run_ok(&mut sign("operate", false));
    assert!(second.starts_with(&pending), "{second}");
    assert!(
        second.contains(&format!("request {pending} is pending"))
            && second.contains("no new request filed"),
        "{second}"
    );
    let asked = json(&run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "request",
            "--contract",
            "prod-db",
            "--step",
            "operate",
            "--reason",
            "INC-8",
            "--json",
        ],
    )));
    assert_eq!(asked["grant"]["id"], pending.as_str());
    // `request` says what to run next too (issue 12).
    let said = run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "request",
            "--contract",
            "prod-db",
            "--step",
            "operate",
            "--reason",
            "INC-8",
        ],
    ));
    assert!(
        said.contains(&format!(
            "once approved, pick the certificate up with: ramp-ca sign --grant {pending}"
        )),
        "{said}"
    );
    let seen = json(&run_ok(&mut daemon.cmd(&dir, BOB, &["grants", "--json"])));
    let operate: Vec<&serde_json::Value> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["step"] == "operate")
        .collect();
    assert_eq!(operate.len(), 1, "bob sees one request: {seen}");

    // A wait that runs out says the request is still filed, and how to pick it up.
    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        ALICE,
        &["sign", "--grant", &pending, "--wait", "--timeout", "2s"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("request {pending} is still pending after 2s"))
            && err.contains("it stays filed"),
        "{err}"
    );

    run_ok(&mut daemon.cmd(&dir, BOB, &["approve", &pending]));
    let minted = json(&run_ok(&mut sign("operate", true)));
    assert_eq!(minted["grant"]["id"], pending.as_str(), "{minted}");
    assert_eq!(minted["grant"]["state"], "active");
    assert!(minted["certificate"].is_string(), "{minted}");
    let all = json(&run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &["grants", "--all", "--json"],
    )));
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "observe and operate only: {all}"
    );
}
