//! Windows asked for ahead (`sign|request --start`, issue 14) end to end: a certificate real
//! OpenSSH refuses before its window and accepts in it; approvals given ahead and a window
//! that opens by itself through the bastion; `policy explain` for a start and an extension.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::rig::{rig, Rig};
use crate::support::{client_opts, run_err, run_ok, Sshd};
use crate::{json, ALICE, BOB};

/// The real ssh client straight to `sshd` as root, offering the certificate in `cert`.
fn ssh_with_cert(sshd: &Sshd, key: &Path, cert: &Path) -> Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &sshd.port().to_string(), "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args(client_opts())
        .args(["root@127.0.0.1", "echo in-the-window"])
        .output()
        .unwrap()
}

/// Through the bastion as a person runs ssh (so ramp-ca's reason is shown), offering `cert`.
fn bastion_with_cert(rig: &Rig, cert: &Path, login: &str) -> Output {
    let opts = [
        "-o".to_string(),
        "BatchMode=no".to_string(),
        "-o".to_string(),
        "LogLevel=INFO".to_string(),
        "-o".to_string(),
        format!("CertificateFile={}", cert.display()),
    ];
    rig.ssh_with(ALICE, &opts, login, &["echo through-the-bastion"])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_scheduled_certificate_is_refused_by_openssh_before_its_window_and_accepted_in_it() {
    let rig = rig();
    let out = rig.sign(
        ALICE,
        &[
            "--contract",
            "prod-db",
            "--step",
            "observe",
            "--reason",
            "CHG-7 tonight",
            "--start",
            "+75s",
            "--no-agent",
        ],
    );
    assert_eq!(out["grant"]["state"], "scheduled", "{out:#}");
    let own = rig.dir.join(format!("{ALICE}-prod-db-observe-cert.pub"));
    assert_eq!(Path::new(out["path"].as_str().unwrap()), own);
    assert!(
        !rig.dir.join(format!("{ALICE}-cert.pub")).exists(),
        "the certificate ssh offers by default is left alone until the window opens"
    );
    let cert = russh::keys::ssh_key::Certificate::read_file(&own).unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        cert.valid_after() > now + 5,
        "valid from the start less 60 s: {} vs now {now}",
        cert.valid_after()
    );

    // Trusting user-ca directly only proves the format (targets trust node-ca).
    let sshd = crate::readonly_sshd(rig.dir.join("keys/user-ca.pub"), None);
    let early = ssh_with_cert(&sshd, &rig.dir.join(ALICE), &own);
    assert!(!early.status.success(), "{}", text(&early));
    assert!(sshd.log().contains("not yet valid"), "{}", sshd.log());

    let grants = json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
    assert_eq!(grants[0]["state"], "scheduled", "{grants:#}");
    let table = run_ok(&mut rig.ramp(ALICE, &["grants"]));
    assert!(
        table.contains("scheduled") && table.contains(" in 1m"),
        "{table}"
    );
    // Written ahead, `ssh db-1` reaches the bastion, which says when the window opens.
    let config = run_ok(&mut rig.ramp(ALICE, &["ssh-config"]));
    assert!(config.contains("Host db-1\n"), "{config}");

    // Once the certificate's window begins, OpenSSH lets it in; the bastion still holds it
    // to the grant's window and says when that opens.
    let wait = Duration::from_secs(cert.valid_after().saturating_sub(now) + 1);
    std::thread::sleep(wait);
    let inside = ssh_with_cert(&sshd, &rig.dir.join(ALICE), &own);
    assert!(inside.status.success(), "{}", text(&inside));
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout).trim(),
        "in-the-window"
    );
    let told = text(&bastion_with_cert(&rig, &own, "readonly@db-1"));
    let id = out["grant"]["id"].as_str().unwrap();
    assert!(
        told.contains(&format!("grant {id} is scheduled: its window opens at")),
        "{told}"
    );
}

#[test]
fn a_window_approved_ahead_opens_by_itself_and_sign_wait_waits_for_it() {
    let rig = rig();
    rig.observe("CHG-8", &["--no-agent"]);
    let asked = json(&run_ok(&mut rig.ramp(
        ALICE,
        &[
            "request",
            "--contract",
            "prod-db",
            "--step",
            "operate",
            "--reason",
            "CHG-8 schema change",
            "--start",
            "+12s",
            "--json",
        ],
    )));
    let id = asked["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(asked["grant"]["state"], "pending");
    assert!(asked["grant"]["scheduled"].is_string(), "{asked:#}");
    let asked_at = Instant::now();

    // Its holder cannot approve it; another approver does, before the window.
    let (_, own) = run_err(&mut rig.ramp(ALICE, &["approve", &id]));
    assert!(own.contains("your own request"), "{own}");
    let approved = json(&run_ok(&mut rig.ramp(BOB, &["approve", &id, "--json"])));
    assert_eq!(approved["grant"]["state"], "scheduled", "{approved:#}");
    let metrics =
        run_ok(Command::new("curl").args(["-sf", &format!("{}/metrics", rig.daemon.url)]));
    assert!(metrics.contains("ramp_scheduled_grants 1"), "{metrics}");

    // Picked up before the window: dbadmin is refused by the bastion, saying when it opens.
    rig.sign(ALICE, &["--grant", &id, "--no-agent"]);
    let own = rig.dir.join(format!("{ALICE}-prod-db-operate-cert.pub"));
    let told = text(&bastion_with_cert(&rig, &own, "dbadmin@db-1"));
    assert!(
        asked_at.elapsed() < Duration::from_secs(12),
        "too slow to test before the start"
    );
    assert!(told.contains("is scheduled: its window opens at"), "{told}");
    let refused = rig.audited("login-refused");
    assert!(
        refused.iter().any(|r| r["detail"]["reason"]
            .as_str()
            .is_some_and(|why| why.contains("is scheduled"))),
        "{refused:#?}"
    );

    // `sign --grant --wait` waits for the start, then writes the certificate ssh offers.
    let waited = run_ok(&mut rig.ramp(ALICE, &["sign", "--grant", &id, "--wait", "--no-agent"]));
    assert!(asked_at.elapsed() >= Duration::from_secs(11), "{waited}");
    let ok = rig
        .ssh(ALICE, "dbadmin@db-1", &["echo through-the-bastion"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "through-the-bastion"
    );
    let grants = json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == id.as_str() && g["state"] == "active"),
        "{grants:#}"
    );
}

#[test]
fn a_start_in_the_past_or_too_far_is_refused_and_policy_explain_says_what_a_start_and_an_extension_get(
) {
    let rig = rig();
    for (start, says) in [
        ("2020-01-01T00:00:00Z", "is in the past"),
        ("+31d", "at most 30d ahead"),
        ("tonight", "bad start `tonight`"),
    ] {
        let (_, err) = run_err(&mut rig.ramp(
            ALICE,
            &[
                "request",
                "--contract",
                "prod-db",
                "--reason",
                "CHG-9",
                "--start",
                start,
            ],
        ));
        assert!(err.contains(says), "{start}: {err}");
    }

    let explain = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--user",
            "alice",
            "--contract",
            "prod-db",
            "--reason",
            "CHG-9",
        ];
        args.extend_from_slice(extra);
        crate::ramp(&rig.dir).args(&args).output().unwrap()
    };
    let said = text(&explain(&[
        "--step",
        "operate",
        "--holding",
        "observe",
        "--start",
        "+2h",
        "--extend",
        "30m",
        "--ttl",
        "1h",
    ]));
    assert!(
        said.contains("NEEDS APPROVAL prod-db/operate for 1h"),
        "{said}"
    );
    assert!(
        said.contains("window opens at") && said.contains("(in 2h)"),
        "{said}"
    );
    assert!(
        said.contains("extension: EXTEND by 30m NEEDS APPROVAL: 1 from sre-lead"),
        "{said}"
    );
    assert!(said.contains("never by its holder"), "{said}");

    // Past max_ttl, the extension is refused with how much is left.
    let past = explain(&["--step", "observe", "--ttl", "20m", "--extend", "20m"]);
    assert!(!past.status.success());
    let said = text(&past);
    assert!(said.contains("GRANT prod-db/observe for 20m"), "{said}");
    assert!(
        said.contains("extension: DENY") && said.contains("at most 10m more"),
        "{said}"
    );
    let far = text(&explain(&["--step", "observe", "--start", "+40d"]));
    assert!(
        far.contains("DENY: start") && far.contains("at most 30d ahead"),
        "{far}"
    );
    let js = json(&String::from_utf8_lossy(
        &explain(&[
            "--step", "observe", "--ttl", "10m", "--extend", "5m", "--json",
        ])
        .stdout,
    ));
    assert_eq!(
        js["extension"]["decision"], "EXTEND by 5m at once",
        "{js:#}"
    );
}
