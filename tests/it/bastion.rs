//! The bastion end to end: the real ssh/scp/sftp clients through `ramp-ca serve` to a real
//! sshd target that trusts node-ca only.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::rig::{rig, rig_with, Rig};
use crate::support::SpawnPiped;
use crate::support::{client_opts, keygen, run_err, run_ok, Sshd, SshdOptions, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

#[test]
fn exec_goes_through_recorded_with_its_exit_status_and_the_cast_plays() {
    let rig = rig();
    rig.observe("INC-1", &[]);

    // The client checks the bastion's host certificate against host-ca.
    rig.dir.write(
        "known_hosts",
        run_ok(crate::ramp(&rig.dir).args(["trust", "known-hosts"])),
    );
    let known = format!(
        "UserKnownHostsFile={}",
        rig.dir.join("known_hosts").display()
    );
    let opts = [
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        known,
    ];
    let mut strict = rig.ssh_with(
        ALICE,
        &opts,
        "readonly@db-1",
        &["echo", "hello-from-$(whoami)", ";", "exit", "7"],
    );
    let out = run(&mut strict);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert_eq!(stdout, "hello-from-readonly\n");

    // TARGET alone logs in as the certificate's first principal.
    let out = run(&mut rig.ssh(ALICE, "db-1", &["whoami"]));
    assert_eq!(text(&out).0, "readonly\n", "{}", text(&out).1);

    let list = rig.wait_sessions("two ended sessions", |l| {
        l.len() == 2 && l.iter().all(|s| s["state"] == "ended")
    });
    let first = &list[0];
    assert_eq!(
        (
            first["user"].as_str(),
            first["principal"].as_str(),
            first["target"].as_str()
        ),
        (Some("alice"), Some("readonly"), Some("db-1"))
    );
    assert_eq!(first["exit_status"], 7);
    assert_eq!(first["kind"], "exec");
    assert!(first["key_id"]
        .as_str()
        .unwrap()
        .starts_with("ramp:alice:prod-db:observe:"));
    assert_eq!(first["bytes_out"], 20);
    let id = first["id"].as_str().unwrap();

    let cast = rig.dir.join("s.cast");
    run_ok(&mut rig.ramp(
        BOB,
        &["sessions", "export", id, "--out", cast.to_str().unwrap()],
    ));
    let played = Command::new("asciinema")
        .arg("play")
        .arg("-i")
        .arg("0.01")
        .arg(&cast)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played).1);
    assert!(
        text(&played).0.contains("hello-from-readonly"),
        "{}",
        text(&played).0
    );
    let exported = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "export", id, "--format", "json"]),
    ));
    assert_eq!(exported["session"]["id"], id);
    let hits = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "grep", "hello-from", "--json"]),
    ));
    // The exec command line, then the output.
    let found = hits["hits"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{hits}");
    assert_eq!(found[0]["stream"], "command");
    assert_eq!(found[1]["session"], id);
    assert_eq!(found[1]["stream"], "output");
    assert_eq!(hits["damaged"], serde_json::json!([]));

    // alice reads her own recordings, nobody else's.
    let own = json(&run_ok(
        &mut rig.ramp(ALICE, &["sessions", "list", "--json"]),
    ));
    let own = own.as_array().unwrap();
    assert!(
        !own.is_empty() && own.iter().all(|s| s["user"] == "alice"),
        "{own:?}"
    );
    let (code, err) = run_err(&mut rig.ramp(ALICE, &["sessions", "list", "--user", "bob"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("of `bob` takes ramp-admin or ramp-auditor"),
        "{err}"
    );
    let audit = rig.audit();
    for action in [
        " login ",
        " session-start ",
        " session-end ",
        " session-read ",
        " sessions-grep ",
    ] {
        assert!(audit.contains(action), "{action} not audited:\n{audit}");
    }
}

/// Waits (bounded) until the daemon's log contains `what`; some refusals are logged as the
/// connection winds down, just after ssh exits.
fn wait_log(rig: &Rig, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.daemon.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "log lacks {what:?}:\n{}",
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `login-refused` audit records of connections from `client` (an IP address).
fn refusals_from(audit: &[serde_json::Value], client: &str) -> Vec<serde_json::Value> {
    audit
        .iter()
        .filter(|r| r["action"] == "login-refused")
        .filter(|r| {
            let from = r["detail"]["client"].as_str();
            let addr = from.and_then(|c| c.parse::<std::net::SocketAddr>().ok());
            addr.unwrap_or_else(|| panic!("a refusal without a client address: {r}"))
                .ip()
                .to_string()
                == client
        })
        .cloned()
        .collect()
}

#[test]
fn logins_are_refused_for_every_reason_and_each_refusal_is_audited() {
    let rig = rig();
    let observe = rig.observe("INC-2", &[]);
    let (serial, grant) = (
        observe["serial"].as_u64().unwrap(),
        observe["grant"]["id"].as_str().unwrap().to_string(),
    );
    // Each attempt comes from an address of its own, so each audit record can be told apart.
    let refused = |from: &str, login: &str, identity: &str, why: &str| {
        let bind = ["-b".to_string(), from.to_string()];
        let out = run(&mut rig.ssh_with(identity, &bind, login, &["true"]));
        assert!(!out.status.success(), "{login} got in from {from}");
        wait_log(&rig, &format!("login refused peer={from}:"));
        wait_log(&rig, why);
    };
    refused(
        "127.0.0.11",
        "dbadmin@db-1",
        ALICE,
        "principal `dbadmin` is not in the certificate",
    );
    refused(
        "127.0.0.12",
        "readonly@web-1",
        ALICE,
        &format!("contract `prod-db` of grant {grant} does not cover target `web-1`"),
    );
    refused(
        "127.0.0.13",
        "readonly@nowhere",
        ALICE,
        "unknown target `nowhere`: not in hosts.yaml",
    );
    // alice's registered key on its own, without its certificate.
    std::fs::create_dir(rig.dir.join("bare")).unwrap();
    std::fs::copy(rig.dir.join(ALICE), rig.dir.join("bare/alice")).unwrap();
    let alice_fp = crate::support::run_ok(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(rig.dir.join(format!("{ALICE}.pub"))),
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    refused(
        "127.0.0.14",
        "readonly@db-1",
        "bare/alice",
        &format!("a plain key ({alice_fp}) is not accepted: sign in with a ramp-ca certificate"),
    );
    // A stranger's key: logged, not audited.
    keygen(rig.dir.path(), "stranger");
    refused(
        "127.0.0.15",
        "readonly@db-1",
        "stranger",
        "is not accepted: sign in with a ramp-ca certificate",
    );
    // Certificates from another CA, dressed up with a real-looking key id and alice's serial:
    // over a stranger's key, logged and not audited; over alice's registered key, audited.
    let rogue = keygen(rig.dir.path(), "rogue-ca");
    keygen(rig.dir.path(), "forged");
    std::fs::create_dir(rig.dir.join("forged-alice")).unwrap();
    std::fs::copy(rig.dir.join(ALICE), rig.dir.join("forged-alice/alice")).unwrap();
    std::fs::copy(
        rig.dir.join(format!("{ALICE}.pub")),
        rig.dir.join("forged-alice/alice.pub"),
    )
    .unwrap();
    for key in ["forged.pub", "forged-alice/alice.pub"] {
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(&rogue)
                .args([
                    "-I",
                    &format!("ramp:alice:prod-db:observe:{grant}"),
                    "-n",
                    "readonly",
                    "-z",
                    &serial.to_string(),
                ])
                .arg(rig.dir.join(key)),
        );
    }
    refused(
        "127.0.0.16",
        "readonly@db-1",
        "forged",
        "signed by an untrusted CA",
    );
    refused(
        "127.0.0.19",
        "readonly@db-1",
        "forged-alice/alice",
        "signed by an untrusted CA",
    );
    // Revoked, then expired.
    let web = json(&run_ok(
        &mut rig.ramp(ALICE, &["sign", "--contract", "prod-web", "--json"]),
    ))["serial"]
        .as_u64()
        .unwrap();
    run_ok(&mut rig.ramp(CAROL, &["revoke", "--serial", &web.to_string()]));
    refused(
        "127.0.0.17",
        "logs@web-1",
        ALICE,
        &format!("certificate serial {web} is revoked"),
    );
    // A grant of its own (of a step alice does not hold yet), so its certificate lasts 2 s.
    rig.fenced();
    let short = rig.fenced_step("brief")["serial"].as_u64().unwrap();
    let cert = russh::keys::ssh_key::Certificate::from_openssh(
        rig.dir.read(format!("{ALICE}-cert.pub")).trim(),
    )
    .unwrap();
    while (chrono::Utc::now().timestamp() as u64) < cert.valid_before() {
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(
        "127.0.0.18",
        "readonly@db-1",
        ALICE,
        &format!("certificate expired: the newest certificate for key {alice_fp} (serial {short})"),
    );

    let audit = json(&run_ok(&mut rig.ramp(CAROL, &["audit", "list", "--json"])));
    let audit = audit.as_array().unwrap();
    // One record each, naming alice, the login asked for and the reason.
    let audited = |from: &str, login: &str, why: &str| {
        let records = refusals_from(audit, from);
        assert_eq!(records.len(), 1, "{from}: {records:#?}");
        let r = &records[0];
        assert_eq!(
            (r["actor"].as_str(), r["subject"].as_str()),
            (Some("alice"), Some(login)),
            "{r:#}"
        );
        let reason = r["detail"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{from}: {reason:?} lacks {why:?}");
    };
    audited(
        "127.0.0.11",
        "dbadmin@db-1",
        "principal `dbadmin` is not in the certificate",
    );
    audited(
        "127.0.0.12",
        "readonly@web-1",
        "does not cover target `web-1`",
    );
    audited("127.0.0.13", "readonly@nowhere", "unknown target `nowhere`");
    audited("127.0.0.14", "readonly@db-1", "a plain key");
    audited(
        "127.0.0.17",
        "logs@web-1",
        &format!("certificate serial {web} is revoked"),
    );
    audited(
        "127.0.0.18",
        "readonly@db-1",
        &format!("(serial {short}) was valid until"),
    );
    audited("127.0.0.19", "readonly@db-1", "signed by an untrusted CA");
    for stranger in ["127.0.0.15", "127.0.0.16"] {
        assert_eq!(
            refusals_from(audit, stranger),
            Vec::<serde_json::Value>::new(),
            "a stranger's refusal reached the audit chain"
        );
    }
}

/// The SHA-256 fingerprint of a public key file, as OpenSSH prints it.
fn fingerprint(public: &std::path::Path) -> String {
    run_ok(Command::new("ssh-keygen").arg("-lf").arg(public))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn the_hop_checks_the_target_and_nobody_skips_the_bastion() {
    let rig = rig();
    let observe = rig.observe("INC-3", &[]);
    let (serial, key_id) = (
        observe["serial"].as_u64().unwrap(),
        format!(
            "ramp:alice:prod-db:observe:{}",
            observe["grant"]["id"].as_str().unwrap()
        ),
    );
    let out = run(&mut rig.ssh(ALICE, "readonly@db-2", &["true"]));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("host key of db-2 changed"),
        "{}",
        text(&out).1
    );
    let out = run(&mut rig.ssh(ALICE, "readonly@db-3", &["true"]));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("cannot reach db-3"),
        "{}",
        text(&out).1
    );

    // The user's own certificate straight to the target: it trusts node-ca only.
    let mut direct = Command::new("ssh");
    direct
        .args([
            "-F",
            "/dev/null",
            "-p",
            &rig.target.port().to_string(),
            "-i",
        ])
        .arg(rig.dir.join(ALICE))
        .args(client_opts())
        .arg("readonly@127.0.0.1")
        .arg("true");
    let out = run(&mut direct);
    assert!(!out.status.success(), "bypassed the bastion");
    let user_ca = fingerprint(&rig.dir.join("keys/user-ca.pub"));
    let log = rig.target.log();
    assert!(
        log.lines().any(
            |l| l.starts_with("Failed publickey for readonly from 127.0.0.1")
                && l.ends_with(&format!(
                    "ID {key_id} (serial {serial}) CA ED25519 {user_ca}"
                ))
        ),
        "the target did not refuse alice's own certificate:\n{log}"
    );
    assert!(!log.contains("Accepted"), "{log}");
}

#[test]
fn scp_and_sftp_move_files_byte_exact_both_ways_and_are_recorded() {
    let rig = rig();
    rig.observe("INC-4", &[]);
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    rig.dir.write("up.bin", &payload);
    let remote = format!("/tmp/ramp-test-{}.bin", std::process::id());
    let scp = |from: String, to: String| {
        let mut cmd = rig.client("scp", ALICE, &[]);
        cmd.arg("-q").arg(from).arg(to);
        let out = run(&mut cmd);
        assert!(out.status.success(), "scp: {}", text(&out).1);
    };
    scp(
        rig.dir.join("up.bin").display().to_string(),
        format!("readonly@db-1@127.0.0.1:{remote}"),
    );
    scp(
        format!("readonly@db-1@127.0.0.1:{remote}"),
        rig.dir.join("down.bin").display().to_string(),
    );
    assert!(
        std::fs::read(rig.dir.join("down.bin")).unwrap() == payload,
        "scp round trip differs"
    );

    let batch = format!(
        "put {} {remote}.2\nget {remote}.2 {}\nrm {remote}.2\n",
        rig.dir.join("up.bin").display(),
        rig.dir.join("sftp.bin").display()
    );
    rig.dir.write("batch", batch);
    let mut sftp = rig.client("sftp", ALICE, &[]);
    sftp.arg("-q")
        .arg("-b")
        .arg(rig.dir.join("batch"))
        .arg("readonly@db-1@127.0.0.1");
    let out = run(&mut sftp);
    assert!(out.status.success(), "sftp: {}", text(&out).1);
    assert!(
        std::fs::read(rig.dir.join("sftp.bin")).unwrap() == payload,
        "sftp round trip differs"
    );
    std::fs::remove_file(&remote).unwrap_or_else(|e| panic!("{remote}: {e}"));

    let list = rig.wait_sessions("three ended sessions", |l| {
        l.len() == 3 && l.iter().all(|s| s["state"] == "ended")
    });
    let files: Vec<String> = list
        .iter()
        .flat_map(|s| {
            s["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
        })
        .collect();
    for want in [
        format!("write {remote}"),
        format!("read {remote}"),
        format!("write {remote}.2"),
        format!("remove {remote}.2"),
    ] {
        assert!(files.contains(&want), "{want} not recorded in {files:?}");
    }
    assert!(list[0]["bytes_in"].as_u64().unwrap() >= payload.len() as u64);
}

#[test]
fn a_pty_shell_runs_scripted_input_and_the_recording_has_both_directions() {
    let rig = rig();
    rig.observe("INC-5", &[]);
    let mut cmd = rig.ssh(ALICE, "readonly@db-1", &["-tt"]);
    let mut child = cmd.spawn_piped();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"echo marker-$((6*7))\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"exit 5\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out).1);
    assert!(text(&out).0.contains("marker-42"), "{}", text(&out).0);
    let list = rig.wait_sessions("the shell session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    assert_eq!(list[0]["kind"], "shell");
    assert!(list[0]["term"].is_string(), "pty recorded: {}", list[0]);
    let id = list[0]["id"].as_str().unwrap();
    let exported = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "export", id, "--format", "json"]),
    ));
    let events = exported["events"].as_array().unwrap();
    let typed: String = events
        .iter()
        .filter(|e| e["kind"] == "input")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let shown: String = events
        .iter()
        .filter(|e| e["kind"] == "output")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(typed.contains("echo marker-$((6*7))"), "{typed:?}");
    assert!(shown.contains("marker-42"), "{shown:?}");
}

/// Starts a minute of `sleep` through the bastion as alice in the background (on a pty, as a
/// person would) and waits until its session is live.
fn sleeper(rig: &Rig) -> std::process::Child {
    sleeper_as(rig, "readonly@db-1")
}

/// [`sleeper`] logged in as `login`.
pub(crate) fn sleeper_as(rig: &Rig, login: &str) -> std::process::Child {
    let before = rig.sessions().len();
    let child = rig
        .ssh(ALICE, login, &["-tt", "echo", "started;", "sleep", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_sessions("a new live session", |l| {
        l.len() == before + 1 && l[before]["state"] == "live"
    });
    child
}

/// Starts a [`sleeper_as`] `login`, has carol revoke with `revoke` (like `--serial N`), and
/// checks that the session is cut off at once with `why` on the user's terminal and as its
/// recording's end reason; returns the session's record.
fn revoke_cuts(rig: &Rig, login: &str, revoke: &[&str], why: &str) -> serde_json::Value {
    let child = sleeper_as(rig, login);
    let live = rig.sessions().len() - 1;
    let mut args = vec!["revoke", "--reason", "test"];
    args.extend_from_slice(revoke);
    let revoked_at = Instant::now();
    run_ok(&mut rig.ramp(CAROL, &args));
    let out = child.wait_with_output().unwrap();
    let took = revoked_at.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(255), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&format!("ramp-ca: {why}\r\n")),
        "the terminal does not say {why:?}:\n{stdout}{stderr}"
    );
    // Generous bound against a noisy machine; the design aims at one second.
    assert!(took < Duration::from_secs(10), "revocation took {took:?}");
    let list = rig.wait_sessions("the session ended", |l| l[live]["state"] == "ended");
    assert_eq!(
        list[live]["end_reason"].as_str(),
        Some(why),
        "{}",
        list[live]
    );
    list[live].clone()
}

#[test]
fn a_session_is_warned_then_cut_off_when_its_certificate_expires() {
    let rig = rig();
    // Ten seconds leave a busy machine time to log in before the certificate ends.
    rig.observe("INC-6", &["--ttl", "10s"]);
    let child = sleeper(&rig);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    let both = format!("{stdout}{stderr}");
    assert!(
        both.contains("ends in") && both.contains("when the certificate ends"),
        "no warning: {both}"
    );
    let why = "access to db-1 ended: the certificate expired";
    assert!(both.contains(&format!("ramp-ca: {why}\r\n")), "{both}");
    let list = rig.wait_sessions("the session ended", |l| l[0]["state"] == "ended");
    assert_eq!(list[0]["end_reason"].as_str(), Some(why), "{}", list[0]);
}

#[test]
fn revoking_a_grant_a_serial_or_a_user_ends_their_live_sessions_saying_why() {
    let rig = rig();
    let grant = rig.observe("INC-7", &[])["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    revoke_cuts(
        &rig,
        "readonly@db-1",
        &["--grant", &grant],
        "access to db-1 ended: carol revoked the grant: test",
    );
    // A serial alone: the grant stays active, and the message names the serial.
    let observe = rig.observe("INC-7", &[]);
    let serial = observe["serial"].as_u64().unwrap().to_string();
    let cut = revoke_cuts(
        &rig,
        "readonly@db-1",
        &["--serial", &serial],
        &format!("access to db-1 ended: certificate serial {serial} was revoked"),
    );
    assert_eq!(cut["serial"].as_u64().unwrap().to_string(), serial);
    let grants = json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
    assert_eq!(grants[0]["id"], observe["grant"]["id"], "{grants}");
    assert_eq!(grants[0]["state"], "active", "{grants}");
    // Every grant of the user.
    rig.sign(
        ALICE,
        &["--grant", observe["grant"]["id"].as_str().unwrap()],
    );
    revoke_cuts(
        &rig,
        "readonly@db-1",
        &["--user", "alice"],
        "access to db-1 ended: carol revoked the grant: test",
    );
}

#[test]
fn revoking_the_step_a_grant_climbed_from_ends_the_live_session_of_that_grant() {
    let rig = rig();
    let observe = rig.observe("INC-14", &[])["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let operate = json(&run_ok(
        &mut rig.ramp(ALICE, &crate::ask("operate", "INC-14")),
    ))["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&mut rig.ramp(BOB, &["approve", &operate]));
    rig.sign(ALICE, &["--grant", &operate]);
    // dbadmin is a principal of operate only.
    let cut = revoke_cuts(
        &rig,
        "dbadmin@db-1",
        &["--grant", &observe],
        "access to db-1 ended: carol revoked the grant: test",
    );
    assert_eq!(cut["grant"], operate.as_str(), "{cut}");
    assert_eq!(cut["principal"], "dbadmin", "{cut}");
}

#[test]
fn after_kill_9_the_session_is_listed_interrupted_with_what_was_flushed() {
    let rig = rig();
    rig.observe("INC-8", &[]);
    let mut child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &["for i in $(seq 1 200); do echo line-$i; sleep 0.05; done"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_sessions("a live session", |l| l.iter().any(|s| s["state"] == "live"));
    // Wait until the ledger says at least line-20 is on disk (its bytes_out is flushed with it).
    rig.wait_sessions("twenty lines recorded", |l| {
        l[0]["bytes_out"].as_u64() >= Some(200)
    });
    let rig = rig.restart(|d, _| d.kill9(), &[]);
    let _ = child.kill();
    let _ = child.wait();
    // The restart's recovery runs beside the first requests (the bastion does it as it
    // starts): under load a listing can come first.
    let list = rig.wait_sessions("the session interrupted", |l| {
        l.first().is_some_and(|s| s["state"] != "live")
    });
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "interrupted", "{}", list[0]);
    let id = list[0]["id"].as_str().unwrap();
    // The restart sealed the file as it was: its length counts at least the 20 lines.
    let seal = &list[0]["recording"];
    assert!(seal["bytes"].as_u64() >= Some(200), "{}", list[0]);
    assert_eq!(
        seal["blake3"].as_str().map(str::len),
        Some(64),
        "{}",
        list[0]
    );
    let exported = run_ok(&mut rig.ramp(BOB, &["sessions", "export", id, "--format", "json"]));
    assert!(
        exported.contains("line-1\\n") && exported.contains("line-20\\n"),
        "recorded up to the last flush:\n{exported}"
    );
    let out = run_ok(&mut rig.ramp(BOB, &["audit", "verify"]));
    assert!(out.contains("intact"), "{out}");
    assert!(
        rig.audit().contains(" session-interrupted "),
        "{}",
        rig.audit()
    );
}

#[test]
fn a_changed_recording_is_found_and_a_full_recording_disk_refuses_sessions() {
    let rig = rig();
    rig.observe("INC-12", &[]);
    let out = run_ok(&mut rig.ssh(ALICE, "readonly@db-1", &["echo", "sealed-output"]));
    assert!(out.contains("sealed-output"), "{out}");
    rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    let id = rig.sessions()[0]["id"].as_str().unwrap().to_string();
    let shown = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &id]));
    assert!(shown.contains("sealed-output"), "{shown}");

    // Someone edits the recording file after the session ended.
    let file = rig.dir.join(format!("data/recordings/{id}.rec"));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let (_, err) = run_err(&mut rig.ramp(BOB, &["sessions", "show", &id]));
    assert!(
        err.contains(&id) && err.contains("changed or damaged"),
        "{err}"
    );

    // A disk with less free space than `--min-free-mib` takes no new sessions.
    let rig = rig.restart(
        |d, _| {
            d.stop();
        },
        &["--min-free-mib", "999999999"],
    );
    let (_, err) = run_err(&mut rig.ssh(ALICE, "readonly@db-1", &["echo", "unrecorded"]));
    assert!(
        err.contains("recording disk is full") && !err.contains("unrecorded"),
        "{err}"
    );
}

/// Issue 9 §8: a recording edited together with its seal in the ledger went unnoticed
/// (reads checked the file against the ledger's seal only); the seal is also in the audit
/// record that ended the session, and reads and `audit verify` compare the two.
#[test]
fn a_recording_edited_together_with_its_seal_is_named_by_its_audit_record() {
    let rig = rig();
    rig.observe("INC-14", &[]);
    let out = run_ok(&mut rig.ssh(ALICE, "readonly@db-1", &["echo", "sealed-output"]));
    assert!(out.contains("sealed-output"), "{out}");
    let list = rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    let id = list[0]["id"].as_str().unwrap().to_string();
    let sealed_in = list[0]["sealed_in"]
        .as_u64()
        .expect("the end record is named");
    let out = run_ok(&mut rig.ramp(BOB, &["audit", "verify"]));
    assert!(
        out.contains("audit chain intact")
            && out.contains("recordings intact: 1 finished sessions"),
        "{out}"
    );

    // With the daemon stopped, someone rewrites the output and the seal to match it.
    let rig = rig.restart(
        |d, dir| {
            d.stop();
            let data = dir.join("data");
            let store = crate::stores::TestLedger::open(dir);
            let file = data.join("recordings").join(format!("{id}.rec"));
            let mut raw = std::fs::read(&file).unwrap();
            let at = raw
                .windows(13)
                .position(|w| w == b"sealed-output")
                .expect("the output is in the file");
            raw[at..at + 13].copy_from_slice(b"benign-output");
            std::fs::write(&file, &raw).unwrap();
            let mut meta = store.session(&id).unwrap();
            let events = &raw[ramp_ca::recordings::files::HEADER.len()..];
            meta.recording = Some(ramp_ca::domain::session::RecordingSeal {
                bytes: events.len() as u64,
                blake3: blake3::hash(events).to_hex().to_string(),
            });
            let rewrite = ramp_ca::store::Change {
                sessions: vec![meta],
                ..Default::default()
            };
            store.commit(rewrite);
        },
        &[],
    );
    let named = format!("{id}.rec does not match its seal in audit record {sealed_in}");
    let (_, err) = run_err(&mut rig.ramp(BOB, &["sessions", "show", &id]));
    assert!(err.contains(&named), "{err}");
    let (_, err) = run_err(&mut rig.ramp(BOB, &["sessions", "export", &id]));
    assert!(err.contains(&named), "{err}");
    for flags in [&[][..], &["--skip-recordings"][..]] {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(flags);
        let (code, err) = run_err(&mut rig.ramp(BOB, &args));
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(err.contains(&named), "{flags:?}: {err}");
    }
}

#[test]
fn taking_someone_out_of_people_yaml_ends_their_sessions_on_reload() {
    let rig = rig();
    rig.observe("INC-11", &[]);
    let child = sleeper(&rig);
    let people = rig
        .dir
        .read("policies/people.yaml")
        .replace("roles: [sre]", "roles: []");
    rig.dir.write("policies/people.yaml", people);
    rig.daemon.signal("HUP");
    let out = child.wait_with_output().unwrap();
    let both = format!("{}{}", text(&out).0, text(&out).1);
    assert!(both.contains("no longer entitled"), "{both}");
    let refused = run(&mut rig.ssh(ALICE, "readonly@db-1", &["true"]));
    assert!(!refused.status.success(), "a removed user logged in");
}

/// `HOST:PORT` of the rig's target, as `ssh -W` asks for it.
fn dest_of(rig: &Rig) -> String {
    format!("127.0.0.1:{}", rig.target.port())
}

#[test]
fn port_forwarding_only_where_the_certificate_permits_it() {
    let rig = rig();
    rig.observe("INC-9", &[]);
    // Runs `ssh -W` to the target's own SSH port with nothing to send: the target's banner
    // comes back when forwarding works, then the target hangs up on the empty stream.
    // At LogLevel INFO ssh shows why the channel was refused.
    let info = ["-o".to_string(), "LogLevel=INFO".to_string()];
    let forward =
        |login: &str| run(&mut rig.ssh_with(ALICE, &info, login, &["-W", &dest_of(&rig)]));
    let out = forward("readonly@db-1");
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success() && stdout.is_empty(),
        "forwarded without permission: {stdout:?}"
    );
    assert!(
        stderr.contains("open failed: administratively prohibited: ramp-ca: the certificate does not permit port forwarding"),
        "{stderr}"
    );
    let audit = json(&run_ok(&mut rig.ramp(CAROL, &["audit", "list", "--json"])));
    let refused: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "forward-refused")
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#}");
    assert_eq!(
        (
            refused[0]["actor"].as_str(),
            refused[0]["subject"].as_str(),
            refused[0]["detail"]["reason"].as_str()
        ),
        (
            Some("alice"),
            Some(dest_of(&rig).as_str()),
            Some("the certificate does not permit port forwarding")
        )
    );

    // break-glass permits forwarding: observe -> operate -> break-glass, with approvals.
    let operate = rig.sign(
        ALICE,
        &[
            "--contract",
            "prod-db",
            "--step",
            "operate",
            "--reason",
            "INC-9",
        ],
    );
    run_ok(&mut rig.ramp(BOB, &["approve", operate["grant"]["id"].as_str().unwrap()]));
    let glass = rig.sign(
        ALICE,
        &[
            "--contract",
            "prod-db",
            "--step",
            "break-glass",
            "--reason",
            "INC-9",
        ],
    );
    let id = glass["grant"]["id"].as_str().unwrap();
    run_ok(&mut rig.ramp(BOB, &["approve", id]));
    run_ok(&mut rig.ramp(CAROL, &["approve", id]));
    rig.sign(ALICE, &["--grant", id]);
    let out = forward("root@db-1");
    assert!(
        text(&out).0.starts_with("SSH-2.0-OpenSSH"),
        "no banner through -W: {:?}",
        text(&out)
    );
}

#[test]
fn a_clean_stop_ends_live_sessions_with_a_message_and_keeps_their_recordings() {
    let rig = rig();
    rig.observe("INC-10", &[]);
    let child = sleeper(&rig);
    // Stop only once the first output has passed through (and was recorded).
    rig.wait_sessions("output through the session", |l| {
        l[0]["bytes_out"].as_u64() > Some(0)
    });
    let rig = rig.restart(
        |d, _| assert!(d.stop().success(), "clean exit on SIGTERM"),
        &[],
    );
    let out = child.wait_with_output().unwrap();
    let both = format!("{}{}", text(&out).0, text(&out).1);
    assert!(both.contains("shutting down"), "{both}");
    let list = rig.sessions();
    assert_eq!(list[0]["state"], "ended", "{}", list[0]);
    assert!(
        list[0]["end_reason"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{}",
        list[0]
    );
    assert!(
        text(&out).0.contains("started"),
        "output before the stop reached the client"
    );
}

#[test]
fn bulk_both_ways_at_once_through_cat_is_byte_exact() {
    let rig = rig();
    rig.observe("INC-12", &[]);
    // cat echoes while the upload is still going: both directions full at once, which
    // deadlocks a relay that moves one direction at a time.
    let payload: Vec<u8> = (0..24 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let mut child = rig
        .ssh(ALICE, "readonly@db-1", &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let upload = payload.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&upload).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), payload.len());
    assert!(out.stdout == payload, "echoed bytes differ");
    let list = rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    assert_eq!(list[0]["bytes_in"].as_u64(), Some(payload.len() as u64));
    assert_eq!(list[0]["bytes_out"].as_u64(), Some(payload.len() as u64));
}

/// A target sshd that trusts node-ca only (as `ramp-ca trust sshd` says), lets principal
/// `readonly` in as `readonly`, reads `revoked_keys` when given, and presents a host key
/// certified by `ssh-keygen -s CA -h ARGS...` (CA relative to the rig's directory).
fn target_with_host_cert(
    rig: &Rig,
    name: &str,
    ca: &str,
    args: &[&str],
    revoked_keys: Option<std::path::PathBuf>,
) -> Sshd {
    let key = keygen(rig.dir.path(), &format!("{name}_host_key"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(rig.dir.join(ca))
            .args(["-h", "-I", name])
            .args(args)
            .arg(key.with_extension("pub")),
    );
    Sshd::start(SshdOptions {
        trusted_user_ca_keys: rig.dir.join("keys/node-ca.pub"),
        revoked_keys,
        principals: vec![("readonly".into(), vec!["readonly".into()])],
        host_key: Some(key),
        ..SshdOptions::default()
    })
}

#[test]
fn the_hop_refuses_a_host_certificate_from_another_ca_expired_or_naming_another_host() {
    let rig = rig();
    rig.observe("INC-15", &[]);
    keygen(rig.dir.path(), "rogue-host-ca");
    let rogue_fp = fingerprint(&rig.dir.join("rogue-host-ca.pub"));
    let cases = [
        (
            "db-4",
            "rogue-host-ca",
            vec!["-n", "db-4,127.0.0.1", "-V", "-1m:+1d"],
            format!("db-4's host certificate is signed by an unknown CA ({rogue_fp})"),
        ),
        (
            "db-5",
            "keys/host-ca",
            vec!["-n", "db-5,127.0.0.1", "-V", "20200101:20200102"],
            "db-5's host certificate is outside its validity window".to_string(),
        ),
        (
            "db-6",
            "keys/host-ca",
            vec!["-n", "db-9", "-V", "-1m:+1d"],
            "db-6's host certificate is not valid for the name db-6".to_string(),
        ),
    ];
    let mut targets = Vec::new();
    for (name, ca, args, _) in &cases {
        let sshd = target_with_host_cert(&rig, name, ca, args, None);
        rig.add_host(name, &sshd);
        targets.push(sshd);
    }
    for ((name, _, _, why), target) in cases.iter().zip(&targets) {
        let out = run(&mut rig.ssh(ALICE, &format!("readonly@{name}"), &["echo", "ran"]));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(255), "{name}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{name}: {stdout}");
        assert_eq!(
            stderr.trim(),
            format!("ramp-ca: refusing to connect: {why}"),
            "{name}"
        );
        // The bastion hung up before offering the target anything.
        assert!(
            !target.log().contains("publickey"),
            "{name}: {}",
            target.log()
        );
    }
    // Each is refused for its certificate alone: the same target signed properly is fine.
    let fine = target_with_host_cert(&rig, "db-8", "keys/host-ca", &["-n", "db-8"], None);
    rig.add_host("db-8", &fine);
    let out = run(&mut rig.ssh(ALICE, "readonly@db-8", &["echo", "ran"]));
    assert_eq!(text(&out), ("ran\n".to_string(), String::new()));
}

#[test]
fn a_target_trusting_node_ca_only_refuses_the_hop_of_a_serial_in_the_node_ca_part_of_the_krl() {
    let rig = rig();
    let first = rig.observe("INC-16", &[]);
    let serial = first["serial"].as_u64().unwrap();
    let key_id = format!(
        "ramp:alice:prod-db:observe:{}",
        first["grant"]["id"].as_str().unwrap()
    );
    std::fs::copy(
        rig.dir.join(format!("{ALICE}-cert.pub")),
        rig.dir.join("first-cert.pub"),
    )
    .unwrap();
    // The target reads the KRL `ramp-ca krl` writes, as ramp-ca-krl.timer keeps it.
    let krl = rig.dir.join("target.krl");
    run_ok(&mut rig.ramp(CAROL, &["krl", "--out", krl.to_str().unwrap()]));
    let target = target_with_host_cert(
        &rig,
        "db-7",
        "keys/host-ca",
        &["-n", "db-7"],
        Some(krl.clone()),
    );
    rig.add_host("db-7", &target);
    let out = run(&mut rig.ssh(ALICE, "readonly@db-7", &["echo", "in"]));
    assert_eq!(text(&out), ("in\n".to_string(), String::new()));
    // The hop is a node-ca certificate carrying alice's serial and key id.
    let node_ca = fingerprint(&rig.dir.join("keys/node-ca.pub"));
    assert!(
        target
            .log()
            .lines()
            .any(|l| l.starts_with("Accepted publickey for readonly")
                && l.ends_with(&format!(
                    "ID {key_id} (serial {serial}) CA ED25519 {node_ca}"
                ))),
        "{}",
        target.log()
    );

    // Revoke the serial where this bastion cannot see it: in a copy of the installation, as a
    // bastion that missed the revocation (or skipped its check) would. The KRL from there is
    // all that stands between the hop and the target.
    let twin = TestDir::new();
    let (dir, krl_out) = (rig.dir.path().to_path_buf(), krl.clone());
    let rig = rig.restart(
        |d, original| {
            assert!(d.stop().success());
            run_ok(
                Command::new("cp")
                    .arg("-a")
                    .arg(dir.join("."))
                    .arg(twin.path()),
            );
            twin.copy_ledger_of(original);
            let other = Daemon::start(&twin);
            run_ok(&mut other.cmd(&twin, CAROL, &["revoke", "--serial", &serial.to_string()]));
            run_ok(&mut other.cmd(&twin, CAROL, &["krl", "--out", krl_out.to_str().unwrap()]));
            assert!(other.stop().success());
        },
        &[],
    );
    // ssh-keygen reads it: serial N is revoked under node-ca (and user-ca), no other serial is.
    let query = |cert: &std::path::Path| {
        Command::new("ssh-keygen")
            .arg("-Qf")
            .arg(&krl)
            .arg(cert)
            .output()
            .unwrap()
    };
    let node_cert = |n: u64| {
        let key = keygen(rig.dir.path(), &format!("hop-{n}"));
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(rig.dir.join("keys/node-ca"))
                .args(["-I", "hop", "-n", "readonly", "-z", &n.to_string()])
                .arg(key.with_extension("pub")),
        );
        rig.dir.join(format!("hop-{n}-cert.pub"))
    };
    for (cert, revoked) in [
        (node_cert(serial), true),
        (node_cert(serial + 1), false),
        (rig.dir.join("first-cert.pub"), true),
    ] {
        let out = query(&cert);
        assert_eq!(
            out.status.success(),
            !revoked,
            "{}: {:?}",
            cert.display(),
            text(&out)
        );
    }

    // This bastion still lets alice in, and the target itself refuses the hop.
    let out = run(&mut rig.ssh(ALICE, "readonly@db-7", &["echo", "in"]));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(255), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        "ramp-ca: db-7 refused the bastion's certificate for `readonly` (does it trust node-ca, and is `readonly` an account there?)"
    );
    // sshd may log it just after the bastion has given up.
    let revoked_line = format!("revoked by file {}", krl.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = format!("ID {key_id} (serial {serial}) CA ED25519 {node_ca}");
    while !target
        .log()
        .lines()
        .any(|l| l.starts_with("Authentication key ED25519-CERT") && l.ends_with(&revoked_line))
        || !target
            .log()
            .lines()
            .any(|l| l.starts_with("Failed publickey for readonly") && l.ends_with(&failed))
    {
        assert!(Instant::now() < deadline, "{}", target.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another serial of alice's goes through the same target.
    rig.observe("INC-16", &[]);
    let out = run(&mut rig.ssh(ALICE, "readonly@db-7", &["echo", "in"]));
    assert_eq!(text(&out), ("in\n".to_string(), String::new()));
}

#[test]
fn a_revoked_host_certificate_stops_the_hop() {
    let rig = rig();
    rig.observe("INC-13", &[]);
    // A second target whose host certificate comes from `ramp-ca sign-host`, so it has a
    // ledger serial that can be revoked.
    let key = keygen(rig.dir.path(), "second_host_key");
    run_ok(&mut rig.ramp(
        CAROL,
        &[
            "sign-host",
            "--name",
            "db-1",
            "--pubkey",
            "second_host_key.pub",
        ],
    ));
    let cert = russh::keys::ssh_key::Certificate::from_openssh(
        rig.dir.read("second_host_key-cert.pub").trim(),
    )
    .unwrap();
    let second = Sshd::start(SshdOptions {
        trusted_user_ca_keys: rig.dir.join("keys/node-ca.pub"),
        principals: vec![("readonly".into(), vec!["readonly".into()])],
        host_key: Some(key),
        ..SshdOptions::default()
    });
    let hosts = rig.dir.read("policies/hosts.yaml").replace(
        &format!(
            "127.0.0.1:{}\n    labels: {{role: db}}\n  db-2",
            rig.target.port()
        ),
        &format!(
            "127.0.0.1:{}\n    labels: {{role: db}}\n  db-2",
            second.port()
        ),
    );
    rig.dir.write("policies/hosts.yaml", hosts);
    rig.reload();
    assert!(
        run(&mut rig.ssh(ALICE, "readonly@db-1", &["true"]))
            .status
            .success(),
        "{}",
        rig.daemon.log()
    );
    run_ok(&mut rig.ramp(CAROL, &["revoke", "--serial", &cert.serial().to_string()]));
    let out = run(&mut rig.ssh(ALICE, "readonly@db-1", &["true"]));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains(&format!(
            "host certificate (serial {}) is revoked",
            cert.serial()
        )),
        "{}",
        text(&out).1
    );
}

/// The daemon's log lines about connections from `peer` (`IP:PORT`s are matched by IP).
fn log_about(rig: &Rig, ip: &str) -> Vec<String> {
    rig.daemon
        .log()
        .lines()
        .filter(|l| l.contains(&format!("peer={ip}:")))
        .map(String::from)
        .collect()
}

#[test]
fn a_step_without_pty_refuses_the_terminal_and_its_command_runs_without_one() {
    let rig = rig();
    rig.fenced();
    rig.fenced_step("no-pty");
    // `ssh -tt` insists on a terminal: OpenSSH ends the session when it is refused.
    let out = run(&mut rig.ssh(ALICE, "readonly@db-1", &["-tt", "tty"]));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(255), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        "PTY allocation request failed on channel 0",
        "{stdout}"
    );
    wait_log(&rig, "channel request refused peer=127.0.0.1:");
    assert!(
        log_about(&rig, "127.0.0.1")
            .iter()
            .any(|l| l.contains("channel request refused") && l.ends_with("request=Pty")),
        "{}",
        rig.daemon.log()
    );
    // A person at a terminal (here `script`'s) asks for one implicitly: the shell runs
    // without it, as with sshd.
    let ssh = rig.ssh(ALICE, "readonly@db-1", &[]);
    let words: Vec<String> = std::iter::once(ssh.get_program())
        .chain(ssh.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy()))
        .collect();
    let mut child = Command::new("script")
        .args(["-qec", &words.join(" "), "/dev/null"])
        .spawn_piped();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"tty; echo ran-$((6*7)); exit 3\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("PTY allocation request failed on channel 0\r\nnot a tty\r\nran-42"),
        "{stdout:?}"
    );
    let list = rig.wait_sessions("the shell ended", |l| {
        l.iter()
            .any(|s| s["kind"] == "shell" && s["state"] == "ended")
    });
    let shell = list.iter().find(|s| s["kind"] == "shell").unwrap();
    assert!(shell["term"].is_null(), "{shell}");
    assert_eq!(shell["exit_status"], 3, "{shell}");
    // No session got a terminal.
    assert!(list.iter().all(|s| s["term"].is_null()), "{list:#?}");
}

#[test]
fn a_forced_command_runs_and_is_recorded_whatever_the_client_asks() {
    let rig = rig();
    rig.fenced();
    rig.fenced_step("forced");
    let forced = "echo forced-as-$(whoami)";
    let out = run(&mut rig.ssh(ALICE, "readonly@db-1", &["echo asked-for"]));
    assert_eq!(text(&out).0, "forced-as-readonly\n", "{}", text(&out).1);
    // A shell too.
    let out = run(&mut rig.ssh(ALICE, "readonly@db-1", &[]));
    assert_eq!(text(&out).0, "forced-as-readonly\n", "{}", text(&out).1);
    let list = rig.wait_sessions("two ended sessions", |l| {
        l.len() == 2 && l.iter().all(|s| s["state"] == "ended")
    });
    for s in &list {
        assert_eq!(
            (s["kind"].as_str(), s["command"].as_str()),
            (Some("exec"), Some(forced)),
            "{s}"
        );
        let id = s["id"].as_str().unwrap();
        let exported = json(&run_ok(
            &mut rig.ramp(BOB, &["sessions", "export", id, "--format", "json"]),
        ));
        let shown: String = exported["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "output")
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert_eq!(shown, "forced-as-readonly\n", "{exported}");
    }
    let hits = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "grep", "asked-for", "--json"]),
    ));
    assert_eq!(hits["hits"], serde_json::json!([]), "the asked command ran");
}

#[test]
fn agent_x11_and_remote_forwarding_are_refused_even_where_the_certificate_permits_them() {
    let rig = rig();
    rig.fenced();
    let cert = rig.fenced_step("forwarding");
    let listing = run_ok(
        Command::new("ssh-keygen")
            .arg("-Lf")
            .arg(rig.dir.join(format!("{ALICE}-cert.pub"))),
    );
    for ext in [
        "permit-agent-forwarding",
        "permit-X11-forwarding",
        "permit-port-forwarding",
    ] {
        assert!(listing.contains(ext), "{ext} missing: {listing}");
    }
    let from = |ip: &str| vec!["-b".to_string(), ip.to_string()];

    // -R: OpenSSH gives up when told to.
    let mut opts = from("127.0.0.21");
    opts.extend(["-o".into(), "ExitOnForwardFailure=yes".into()]);
    let out = run(&mut rig.ssh_with(
        ALICE,
        &opts,
        "readonly@db-1",
        &["-R", "0:127.0.0.1:9", "true"],
    ));
    assert_eq!(out.status.code(), Some(255), "{:?}", text(&out));
    assert_eq!(
        text(&out).1.trim(),
        "Error: remote port forwarding failed for listen port 0"
    );
    wait_log(&rig, "remote forwarding refused peer=127.0.0.21:");

    // X11: refused, the command runs without a display.
    let out = run(rig
        .ssh_with(
            ALICE,
            &from("127.0.0.22"),
            "readonly@db-1",
            &["-Y", "echo display=[$DISPLAY]"],
        )
        .env("DISPLAY", ":0"));
    assert_eq!(
        text(&out),
        (
            "display=[]\n".to_string(),
            "X11 forwarding request failed on channel 0\r\n".to_string()
        )
    );
    assert!(
        log_about(&rig, "127.0.0.22")
            .iter()
            .any(|l| l.contains("channel request refused") && l.ends_with("request=X11")),
        "{:#?}",
        log_about(&rig, "127.0.0.22")
    );

    // The agent: OpenSSH asks without wanting an answer, so only the target can tell: it
    // never got one.
    let sock = rig.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // IdentityAgent comes first, so it wins over client_opts' `none` that would hide it.
    let mut opts = vec![
        "-o".to_string(),
        format!("IdentityAgent={}", sock.display()),
    ];
    opts.extend(from("127.0.0.23"));
    let out = run(&mut rig.ssh_with(
        ALICE,
        &opts,
        "readonly@db-1",
        &["-A", "echo agent=[$SSH_AUTH_SOCK]"],
    ));
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(text(&out), ("agent=[]\n".to_string(), String::new()));
    assert!(
        log_about(&rig, "127.0.0.23")
            .iter()
            .any(|l| l.contains("channel request refused") && l.ends_with("request=Agent")),
        "{:#?}",
        log_about(&rig, "127.0.0.23")
    );
    assert_eq!(cert["grant"]["step"], "forwarding");
}

#[test]
fn source_address_admits_only_clients_inside_it() {
    let rig = rig();
    rig.fenced();
    let signed = rig.fenced_step("from-two");
    let cert = russh::keys::ssh_key::Certificate::from_openssh(
        rig.dir.read(format!("{ALICE}-cert.pub")).trim(),
    )
    .unwrap();
    assert_eq!(
        cert.critical_options()
            .get("source-address")
            .map(String::as_str),
        Some("127.0.0.2/32,10.9.0.0/16")
    );
    let from = |ip: &str| vec!["-b".to_string(), ip.to_string()];

    let out = run(&mut rig.ssh_with(ALICE, &from("127.0.0.3"), "readonly@db-1", &["echo ok"]));
    assert_eq!(out.status.code(), Some(255), "{:?}", text(&out));
    assert!(text(&out).0.is_empty(), "{:?}", text(&out));
    let why = "source address 127.0.0.3 is not in the certificate's source-address 127.0.0.2/32,10.9.0.0/16";
    wait_log(&rig, why);
    let refused = rig.audited("login-refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(
        (
            refused[0]["actor"].as_str(),
            refused[0]["detail"]["reason"].as_str(),
            refused[0]["detail"]["serial"].as_u64()
        ),
        (Some("alice"), Some(why), signed["serial"].as_u64())
    );

    let out = run(&mut rig.ssh_with(ALICE, &from("127.0.0.2"), "readonly@db-1", &["echo ok"]));
    assert_eq!(text(&out), ("ok\n".to_string(), String::new()));
    let list = rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    assert_eq!(list[0]["client"], "127.0.0.2");
}

/// Runs `cmd` with `input` on stdin, failing the test if it has not ended within `limit`
/// (it is killed then): for the regressions where a client hung.
fn run_within(cmd: &mut Command, input: &str, limit: Duration) -> Output {
    let mut child = cmd.spawn_piped();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {limit:?} (it hangs):\n{}",
                text(&out).1
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Regression: through the bastion, sftp to a target whose sshd has no `Subsystem sftp` hung
/// forever (the bastion said yes before the target said no). Every request the target
/// refuses is now refused to the client at once, and the recording says why it ended.
#[test]
fn sftp_to_a_target_without_the_subsystem_fails_at_once_instead_of_hanging() {
    let rig = rig();
    rig.observe("INC-sftp", &[]);
    let bare = Sshd::start(SshdOptions {
        trusted_user_ca_keys: rig.dir.join("keys/node-ca.pub"),
        principals: vec![("readonly".into(), vec!["readonly".into()])],
        no_sftp: true,
        extra_config: vec!["PermitTTY no".into()],
        ..SshdOptions::default()
    });
    let mut hosts = rig.dir.read("policies/hosts.yaml");
    hosts.push_str(&format!(
        "  db-9:\n    address: 127.0.0.1:{}\n    labels: {{role: db}}\n    host_key: \"{}\"\n",
        bare.port(),
        bare.host_key_pub().trim()
    ));
    rig.dir.write("policies/hosts.yaml", hosts);
    rig.daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.daemon.log().contains("policies reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload:\n{}",
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let limit = Duration::from_secs(30);

    let mut sftp = rig.client("sftp", ALICE, &[]);
    sftp.args(["-b", "-", "readonly@db-9@127.0.0.1"]);
    let out = run_within(&mut sftp, "ls\n", limit);
    assert!(!out.status.success(), "sftp worked without a subsystem");
    assert!(
        text(&out).1.contains("subsystem request failed"),
        "{}",
        text(&out).1
    );
    let mut subsystem = rig.ssh(ALICE, "readonly@db-9", &["-s", "sftp"]);
    let out = run_within(&mut subsystem, "", limit);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("subsystem request failed"),
        "{}",
        text(&out).1
    );
    // A pty the target refuses is refused to the client too, which (asked with -tt, as
    // straight to the target) gives up at once.
    let mut tty = rig.ssh_with(ALICE, &["-tt".into()], "readonly@db-9", &["true"]);
    let out = run_within(&mut tty, "", limit);
    assert_eq!(out.status.code(), Some(255), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("PTY allocation request failed"),
        "{}",
        text(&out).1
    );

    let list = rig.wait_sessions("three ended sessions on db-9", |l| {
        l.iter()
            .filter(|s| s["target"] == "db-9" && s["state"] == "ended")
            .count()
            == 3
    });
    let refused: Vec<&serde_json::Value> =
        list.iter().filter(|s| s["kind"] == "subsystem").collect();
    assert_eq!(refused.len(), 2, "{list:#?}");
    for s in refused {
        assert_eq!(
            s["end_reason"], "db-9 refused the sftp subsystem request",
            "{s:#}"
        );
    }
    let exec = list.iter().find(|s| s["kind"] == "exec").unwrap();
    assert!(exec["term"].is_null(), "the pty was refused: {exec:#}");
}

/// Regression: one connection could open any number of channels, each holding up to 18 MiB
/// of output its client never read (60 of them took the daemon to 1.1 GiB), and one user any
/// number of connections. Now a connection has at most 10 channels, a user at most the
/// configured number of connections, and what their channels read ahead shares one budget.
#[test]
fn a_grant_holder_is_held_to_ten_channels_a_connection_and_a_few_connections() {
    let config = TestDir::new();
    config.write("config.yaml", "bastion:\n  max_connections_per_user: 2\n");
    let rig = rig_with(&["--config", config.join("config.yaml").to_str().unwrap()]);
    rig.observe("INC-flood", &[]);
    let sock = rig.dir.join("mux.sock");
    let mux = |extra: &[&str]| {
        let mut opts: Vec<String> = vec!["-S".into(), sock.display().to_string()];
        opts.extend(extra.iter().map(|s| s.to_string()));
        opts
    };
    let master = rig
        .ssh_with(
            ALICE,
            &mux(&["-M", "-N", "-o", "ControlPersist=no"]),
            "readonly@db-1",
            &[],
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ten channels of output nobody reads (their stdout is a pipe this test never drains).
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(
            // Output starts once all ten are open: a full hop stops new channels opening.
            rig.ssh_with(
                ALICE,
                &mux(&[]),
                "readonly@db-1",
                &["sleep", "3", ";", "head", "-c", "200M", "/dev/zero"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = rig
            .sessions()
            .iter()
            .filter(|s| s["state"] == "live")
            .count();
        if live == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{live} of 10 channels live");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run_within(
        &mut rig.ssh_with(ALICE, &mux(&[]), "readonly@db-1", &["echo", "eleventh"]),
        "",
        Duration::from_secs(30),
    );
    // The master's bastion refuses the channel (OpenSSH then falls back to a connection of
    // its own, which is let in as the user's second).
    assert!(
        text(&out)
            .1
            .contains("session request failed: Session open refused by peer"),
        "an eleventh channel opened: {:?}",
        text(&out)
    );
    // The user's second connection is let in, the third refused with the reason.
    let second = run(&mut rig.ssh(ALICE, "readonly@db-1", &["echo", "second"]));
    assert_eq!(text(&second).0, "second\n", "{}", text(&second).1);
    // A second connection that stays: started again until it is in (the connections before
    // it are counted until the bastion has seen them close).
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let mut holder = rig
            .ssh(ALICE, "readonly@db-1", &["sleep", "60"])
            .spawn()
            .unwrap();
        let seen = Instant::now() + Duration::from_secs(10);
        let live = loop {
            if rig
                .sessions()
                .iter()
                .any(|s| s["state"] == "live" && s["command"] == "sleep 60")
            {
                break true;
            }
            if holder.try_wait().unwrap().is_some() || Instant::now() > seen {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if live {
            break holder;
        }
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(
            Instant::now() < deadline,
            "the second connection never got in"
        );
    };
    let third = run(&mut rig.ssh(ALICE, "readonly@db-1", &["true"]));
    assert!(!third.status.success(), "a third connection got in");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig
        .daemon
        .log()
        .contains("`alice` already has 2 connections through the bastion; close one")
    {
        assert!(Instant::now() < deadline, "{}", rig.daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut c in stalled.into_iter().chain([holder, master]) {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Regression: a login name with control characters reached the service log raw, where a
/// newline forged a line and escape codes ran in the reader's terminal.
#[test]
fn a_login_name_with_control_characters_is_refused_and_logged_escaped() {
    let rig = rig();
    rig.observe("INC-ctl", &[]);
    // OpenSSH's client refuses such a name itself; a client of one's own does not.
    struct AnyHost;
    impl russh::client::Handler for AnyHost {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let key = ramp_ca::install::keys::read_private(&rig.dir.join(ALICE)).unwrap();
    let cert = ramp_ca::install::keys::read_certificate(&rig.dir.join(format!("{ALICE}-cert.pub")))
        .unwrap();
    let port = rig.daemon.ssh_port;
    let accepted = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let config = std::sync::Arc::new(russh::client::Config::default());
            let mut handle = russh::client::connect(config, ("127.0.0.1", port), AnyHost)
                .await
                .unwrap();
            handle
                .authenticate_openssh_cert(
                    "readonly\x1b[2J\nINFO login user=carol@db-1",
                    std::sync::Arc::new(key),
                    cert,
                )
                .await
                .unwrap()
                .success()
        });
    assert!(!accepted, "logged in with control characters in the name");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.daemon.log().contains("holds control characters") {
        assert!(Instant::now() < deadline, "{}", rig.daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = rig.daemon.log();
    assert!(!log.contains('\x1b'), "raw escape in the log: {log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("INFO login")),
        "a forged line: {log}"
    );
    assert!(log.contains("readonly\\x1b[2J\\nINFO login"), "{log}");
}

/// Issue 12: `sign` always wrote `KEY-cert.pub`, so a second grant's certificate replaced the
/// first. Each certificate now goes into ssh-agent for its grant's life (and a file of its
/// own), ssh offers them all and the bastion takes the one that covers the target, and
/// `ssh-config` makes plain `ssh TARGET` work.
#[test]
fn two_grants_on_two_contracts_work_one_after_the_other_through_ssh_agent() {
    let rig = rig();
    // prod-web's first step, as an account the test target has.
    rig.dir.write(
        "policies/prod-web.yaml",
        "contract: prod-web\ntargets: {labels: {role: web}}\nrequesters: [sre]\nreason: optional\nsteps:\n  - name: logs\n    principals: [readonly]\n    max_ttl: 1h\n",
    );
    // web-1 is the same sshd as db-1, whose host certificate names db-1: pin its key.
    let key = rig.dir.read("target_host_key.pub");
    let hosts = rig.dir.read("policies/hosts.yaml").replace(
        "labels: {role: web}\n",
        &format!("labels: {{role: web}}\n    host_key: \"{}\"\n", key.trim()),
    );
    rig.dir.write("policies/hosts.yaml", hosts);
    rig.reload();
    let sock = rig.dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sign = |args: &[&str]| {
        let mut cmd = rig.ramp(ALICE, args);
        cmd.env("SSH_AUTH_SOCK", &sock);
        run_ok(&mut cmd)
    };
    let first = sign(&[
        "sign",
        "--contract",
        "prod-db",
        "--step",
        "observe",
        "--reason",
        "INC-70",
    ]);
    assert!(first.contains("added to ssh-agent until"), "{first}");
    assert!(
        first.contains("connect: ssh -p 2222 readonly@db-1@127.0.0.1"),
        "{first}"
    );
    let second = sign(&["sign", "--contract", "prod-web"]);
    assert!(second.contains("added to ssh-agent until"), "{second}");
    for own in ["prod-db-observe", "prod-web-logs"] {
        let path = rig.dir.join(format!("{ALICE}-{own}-cert.pub"));
        assert!(path.exists(), "no {}", path.display());
    }
    let listed = run_ok(
        Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock),
    );
    assert_eq!(listed.matches("CERT").count(), 2, "{listed}");

    let via_agent = |extra: &[&str], login: &str| {
        let mut cmd = Command::new("ssh");
        cmd.args(extra)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-o")
            .arg(format!("IdentityAgent={}", sock.display()))
            .arg(login)
            .arg("whoami")
            .stdin(Stdio::null());
        cmd.output().unwrap()
    };
    let port = rig.daemon.ssh_port.to_string();
    for target in ["db-1", "web-1"] {
        let out = via_agent(
            &["-F", "/dev/null", "-p", &port],
            &format!("readonly@{target}@127.0.0.1"),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "readonly\n",
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Plain `ssh TARGET` with the block `ssh-config` writes.
    let config = rig.dir.join("ramp.ssh_config");
    let said = run_ok(&mut rig.ramp(
        ALICE,
        &[
            "ssh-config",
            "--bastion",
            &format!("127.0.0.1:{port}"),
            "--out",
            config.to_str().unwrap(),
        ],
    ));
    assert!(
        said.contains("2 targets") || said.contains("targets"),
        "{said}"
    );
    let block = rig.dir.read("ramp.ssh_config");
    assert!(
        block.contains("Host db-1") && block.contains("Host web-1"),
        "{block}"
    );
    for target in ["db-1", "web-1"] {
        let out = via_agent(&["-F", config.to_str().unwrap()], target);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "readonly\n",
            "ssh {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
}
