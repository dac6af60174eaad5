//! The bastion end to end: the real ssh/scp/sftp clients through `ramp-ca serve` to a real
//! sshd target that trusts node-ca only.

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::{client_opts, free_port, keygen, run_err, run_ok, Sshd, SshdOptions, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

/// useradd takes a lock of its own; tests creating accounts at once must take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// A target account that certificates may log in to (unlocked, no password).
fn ensure_account(name: &str) {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if !Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success()
    {
        run_ok(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
    }
    run_ok(Command::new("usermod").args(["-p", "*", name]));
}

/// An installation, its daemon, and a target sshd that is db-1 (host-ca certificate) and
/// web-1; db-2 pins a wrong key; db-3 is down.
pub(crate) struct Rig {
    pub(crate) dir: TestDir,
    pub(crate) daemon: Daemon,
    target: Sshd,
}

pub(crate) fn rig() -> Rig {
    rig_with(&[])
}

/// [`rig`] with more `serve` flags (like `--config F`).
pub(crate) fn rig_with(flags: &[&str]) -> Rig {
    for account in ["readonly", "dbadmin"] {
        ensure_account(account);
    }
    let dir = TestDir::new();
    run_ok(crate::ramp(&dir).arg("init"));
    let host_key = keygen(dir.path(), "target_host_key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(dir.join("keys/host-ca"))
            .args(["-h", "-I", "db-1", "-n", "db-1", "-V", "-1m:+1d"])
            .arg(dir.join("target_host_key.pub")),
    );
    let target = Sshd::start(SshdOptions {
        trusted_user_ca_keys: dir.join("keys/node-ca.pub"),
        principals: ["readonly", "dbadmin", "root"]
            .iter()
            .map(|p| (p.to_string(), vec![p.to_string()]))
            .collect(),
        host_key: Some(host_key),
        ..SshdOptions::default()
    });
    let wrong =
        std::fs::read_to_string(keygen(dir.path(), "wrong_key").with_extension("pub")).unwrap();
    let (port, down) = (target.port(), free_port());
    dir.write(
        "policies/hosts.yaml",
        format!(
            "hosts:\n  db-1:\n    address: 127.0.0.1:{port}\n    labels: {{role: db}}\n  db-2:\n    address: 127.0.0.1:{port}\n    labels: {{role: db}}\n    host_key: \"{}\"\n  db-3:\n    address: 127.0.0.1:{down}\n    labels: {{role: db}}\n  web-1:\n    address: 127.0.0.1:{port}\n    labels: {{role: web}}\n",
            wrong.trim()
        ),
    );
    let daemon = Daemon::start_with(&dir, flags);
    Rig {
        dir,
        daemon,
        target,
    }
}

impl Rig {
    /// Stops the daemon with `stop` and starts it again on the same directory with `flags`;
    /// the target keeps running.
    fn restart(self, stop: impl FnOnce(Daemon), flags: &[&str]) -> Rig {
        let Rig {
            dir,
            daemon,
            target,
        } = self;
        stop(daemon);
        let daemon = Daemon::start_with(&dir, flags);
        Rig {
            dir,
            daemon,
            target,
        }
    }

    /// `ramp-ca ARGS --key KEY` against the daemon.
    fn ramp(&self, key: &str, args: &[&str]) -> Command {
        self.daemon.cmd(&self.dir, key, args)
    }

    /// alice's first step of prod-db, with `reason` and `extra` flags.
    pub(crate) fn observe(&self, reason: &str, extra: &[&str]) -> serde_json::Value {
        // `sign` below adds the subcommand itself.
        self.sign(ALICE, &crate::observe(reason, extra)[1..])
    }

    fn sign(&self, key: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["sign", "--json"];
        all.extend_from_slice(args);
        json(&run_ok(&mut self.ramp(key, &all)))
    }

    /// The real ssh client through the bastion as `login`, with `identity` (relative path).
    pub(crate) fn ssh(&self, identity: &str, login: &str, args: &[&str]) -> Command {
        self.ssh_with(identity, &[], login, args)
    }

    /// `ssh`, `scp` or `sftp` pointed at the bastion with `identity`, before any destination.
    /// `opts` come first: OpenSSH keeps the first value it sees for an option.
    fn client(&self, program: &str, identity: &str, opts: &[String]) -> Command {
        let port_flag = if program == "ssh" { "-p" } else { "-P" };
        let mut cmd = Command::new(program);
        cmd.args(opts)
            .args([
                "-F",
                "/dev/null",
                port_flag,
                &self.daemon.ssh_port.to_string(),
                "-i",
            ])
            .arg(self.dir.join(identity))
            .args(client_opts());
        cmd
    }

    /// [`Rig::ssh`] with more client options, which must come before the destination.
    pub(crate) fn ssh_with(
        &self,
        identity: &str,
        opts: &[String],
        login: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.client("ssh", identity, opts);
        cmd.arg(format!("{login}@127.0.0.1"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn sessions(&self) -> Vec<serde_json::Value> {
        json(&run_ok(
            &mut self.ramp(BOB, &["sessions", "list", "--json"]),
        ))
        .as_array()
        .unwrap()
        .clone()
    }

    /// Waits (bounded) until `done` holds for the session list.
    fn wait_sessions(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.sessions();
            if done(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {list:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn audit(&self) -> String {
        run_ok(&mut self.ramp(CAROL, &["audit", "list"]))
    }
}

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
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits[0]["session"], id);

    let (code, err) = run_err(&mut rig.ramp(ALICE, &["sessions", "list"]));
    assert_eq!(code, 1);
    assert!(err.contains("takes ramp-admin or ramp-auditor"), "{err}");
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

#[test]
fn logins_are_refused_for_every_reason_and_each_refusal_is_audited() {
    let rig = rig();
    rig.observe("INC-2", &[]);
    let refused = |login: &str, identity: &str, why: &str| {
        let out = run(&mut rig.ssh(identity, login, &["true"]));
        assert!(!out.status.success(), "{login} got in");
        // Some refusals are logged as the connection winds down, just after ssh exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rig.daemon.log().contains(why) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            rig.daemon.log().contains(why),
            "log lacks {why:?}:\n{}",
            rig.daemon.log()
        );
    };
    refused(
        "dbadmin@db-1",
        ALICE,
        "principal `dbadmin` is not in the certificate",
    );
    refused("readonly@web-1", ALICE, "contract `prod-db` of grant");
    refused("readonly@nowhere", ALICE, "unknown target `nowhere`");
    // A key without a certificate.
    keygen(rig.dir.path(), "plain");
    refused(
        "readonly@db-1",
        "plain",
        "is not accepted: sign in with a ramp-ca certificate",
    );
    // A certificate from another CA, dressed up with a real-looking key id.
    let rogue = keygen(rig.dir.path(), "rogue-ca");
    keygen(rig.dir.path(), "forged");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&rogue)
            .args([
                "-I",
                "ramp:alice:prod-db:observe:x",
                "-n",
                "readonly",
                "-z",
                "1",
            ])
            .arg(rig.dir.join("forged.pub")),
    );
    refused("readonly@db-1", "forged", "signed by an untrusted CA");
    // Revoked, then expired.
    let serial = json(&run_ok(
        &mut rig.ramp(ALICE, &["sign", "--contract", "prod-web", "--json"]),
    ))["serial"]
        .as_u64()
        .unwrap();
    run_ok(&mut rig.ramp(CAROL, &["revoke", "--serial", &serial.to_string()]));
    refused(
        "logs@web-1",
        ALICE,
        &format!("certificate serial {serial} is revoked"),
    );
    rig.observe("x", &["--ttl", "2s"]);
    std::thread::sleep(Duration::from_millis(2500));
    refused("readonly@db-1", ALICE, "certificate expired");

    let audit = rig.audit();
    assert!(audit.matches(" login-refused ").count() >= 7, "{audit}");
    assert!(audit.contains("certificate expired"), "{audit}");
}

#[test]
fn the_hop_checks_the_target_and_nobody_skips_the_bastion() {
    let rig = rig();
    rig.observe("INC-3", &[]);
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
    assert!(
        rig.target.log().contains("not trusted") || rig.target.log().contains("CA"),
        "{}",
        rig.target.log()
    );
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
    let _ = std::fs::remove_file(&remote);

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
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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

/// Starts `sleep` through the bastion in the background (on a pty, as a person would) and
/// waits until its session is live.
fn sleeper(rig: &Rig, seconds: u32) -> std::process::Child {
    let child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &["-tt", "echo", "started;", "sleep", &seconds.to_string()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_sessions("a live session", |l| l.iter().any(|s| s["state"] == "live"));
    child
}

#[test]
fn a_session_is_warned_then_cut_off_when_its_certificate_expires() {
    let rig = rig();
    rig.observe("INC-6", &["--ttl", "6s"]);
    let child = sleeper(&rig, 60);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    let both = format!("{stdout}{stderr}");
    assert!(
        both.contains("ends in") && both.contains("when the certificate expires"),
        "no warning: {both}"
    );
    assert!(both.contains("the certificate expired"), "{both}");
    let list = rig.wait_sessions("the session ended", |l| l[0]["state"] == "ended");
    assert!(
        list[0]["end_reason"].as_str().unwrap().contains("expired"),
        "{}",
        list[0]
    );
}

#[test]
fn revoking_the_grant_ends_the_live_session() {
    let rig = rig();
    let grant = rig.observe("INC-7", &[])["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let child = sleeper(&rig, 60);
    let revoked_at = Instant::now();
    run_ok(&mut rig.ramp(
        CAROL,
        &["revoke", "--grant", &grant, "--reason", "incident over"],
    ));
    let out = child.wait_with_output().unwrap();
    let took = revoked_at.elapsed();
    assert!(!out.status.success());
    let both = format!("{}{}", text(&out).0, text(&out).1);
    assert!(both.contains("the grant was revoked"), "{both}");
    // Generous bound against a noisy machine; the design aims at one second.
    assert!(took < Duration::from_secs(10), "revocation took {took:?}");
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
    let rig = rig.restart(Daemon::kill9, &[]);
    let _ = child.kill();
    let _ = child.wait();
    let list = rig.sessions();
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
        |d| {
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
    let data = rig.dir.join("data");
    let rig = rig.restart(
        |d| {
            d.stop();
            let store = ramp_ca::store::Store::open(&data).unwrap();
            let file = store.recordings.path(&id).unwrap();
            let mut raw = std::fs::read(&file).unwrap();
            let at = raw
                .windows(13)
                .position(|w| w == b"sealed-output")
                .expect("the output is in the file");
            raw[at..at + 13].copy_from_slice(b"benign-output");
            std::fs::write(&file, &raw).unwrap();
            let mut meta = store.session(&id).unwrap().unwrap();
            let events = &raw[ramp_ca::store::recordings::HEADER.len()..];
            meta.recording = Some(ramp_ca::recording::RecordingSeal {
                bytes: events.len() as u64,
                blake3: blake3::hash(events).to_hex().to_string(),
            });
            store.put_session(&meta).unwrap();
            store.flush().unwrap();
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
    let child = sleeper(&rig, 60);
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

#[test]
fn port_forwarding_only_where_the_certificate_permits_it() {
    let rig = rig();
    rig.observe("INC-9", &[]);
    // Runs `ssh -W` to the target's own SSH port; returns what came back (the target's banner
    // when forwarding works), waiting up to `patience` for it.
    let forward = |login: &str, patience: Duration| {
        use std::io::Read;
        let dest = format!("127.0.0.1:{}", rig.target.port());
        let mut cmd = rig.ssh(ALICE, login, &["-W", &dest]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let n = stdout.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        });
        let got = rx.recv_timeout(patience).unwrap_or_default();
        drop(child.stdin.take());
        let _ = child.kill();
        let _ = child.wait();
        got
    };
    let out = forward("readonly@db-1", Duration::from_secs(3));
    assert!(!out.contains("SSH-2.0"), "forwarded without permission");
    assert!(rig.audit().contains(" forward-refused "), "{}", rig.audit());

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
    let out = forward("root@db-1", Duration::from_secs(20));
    assert!(
        out.starts_with("SSH-2.0-OpenSSH"),
        "no banner through -W: {out:?}"
    );
}

#[test]
fn a_clean_stop_ends_live_sessions_with_a_message_and_keeps_their_recordings() {
    let rig = rig();
    rig.observe("INC-10", &[]);
    let child = sleeper(&rig, 60);
    // Stop only once the first output has passed through (and was recorded).
    rig.wait_sessions("output through the session", |l| {
        l[0]["bytes_out"].as_u64() > Some(0)
    });
    let rig = rig.restart(
        |d| assert!(d.stop().success(), "clean exit on SIGTERM"),
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
    rig.daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig.daemon.log().contains("policies reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload:\n{}",
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
