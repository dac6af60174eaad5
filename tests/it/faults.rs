//! Faults with several nodes on PostgreSQL: a node killed with -9 mid-session (another
//! node ends its session once its lease lapses, the others keep serving), a node name
//! already running refused, and PostgreSQL stopped and started under a live session.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::bad_input::{alice, send, signed};
use crate::bastion::sleeper_as;
use crate::postgres::PgCluster;
use crate::rig::{rig_on_postgres_with, rig_with, Rig};
use crate::support::{client_opts, ramp, run_err, run_ok, TestDir};
use crate::{json, Daemon, ALICE, BOB};

/// `ssh` through the bastion listening on `port`, with `dir`'s alice key and certificate.
fn ssh_via(dir: &TestDir, port: u16, login: &str, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(dir.join(ALICE))
        .args(client_opts())
        .arg(format!("{login}@127.0.0.1"))
        .arg(command)
        .stdin(Stdio::null());
    cmd
}

/// `serve` on `dir` with `flags`, expected to refuse to start: its exit code and stderr
/// (bounded: a serve that comes up is killed and fails the test).
fn serve_refused(dir: &TestDir, flags: &[&str]) -> (i32, String) {
    let mut child = ramp(dir)
        .args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ramp-ca serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {flags:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sessions node `d` lists.
fn sessions(dir: &TestDir, d: &Daemon) -> Vec<serde_json::Value> {
    let out = run_ok(&mut d.cmd(dir, BOB, &["sessions", "list", "--json"]));
    json(&out).as_array().unwrap().clone()
}

#[test]
fn a_node_killed_mid_session_is_ended_by_another_once_its_lease_lapses() {
    // Three nodes on one database, each with a 3 s lease: B (the rig's, with the target),
    // A and C.
    let conf = TestDir::new();
    let config = conf.write("serve.yaml", "node_lease: 3s\n");
    let config = config.to_str().unwrap();
    let node = |name: &'static str| ["--config", config, "--node", name];
    let rig = rig_on_postgres_with(&node("node-b"));
    let a_dir = rig.dir.another_node();
    let a = Daemon::start_with(&a_dir, &node("node-a"));
    let c_dir = rig.dir.another_node();
    let c = Daemon::start_with(&c_dir, &node("node-c"));

    // A fourth start as node-a, while node-a runs, is refused and says why.
    let d_dir = rig.dir.another_node();
    let url = d_dir.store_db().unwrap().url.clone();
    let mut flags = vec!["--store", url.as_str()];
    flags.extend(node("node-a"));
    let (code, err) = serve_refused(&d_dir, &flags);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node `node-a` is already running (host ")
            && err.contains("give this one another name with --node NAME"),
        "{err}"
    );

    // alice's session through B, listed with its node by A.
    rig.observe("INC-5", &[]);
    let mut child = sleeper_as(&rig, "readonly@db-1");
    let table = run_ok(&mut a.cmd(&a_dir, BOB, &["sessions", "list"]));
    assert!(
        table.lines().next().unwrap().contains(" NODE ") && table.contains(" node-b "),
        "{table}"
    );
    let id = sessions(&a_dir, &a)[0]["id"].as_str().unwrap().to_string();

    let Rig {
        dir: b_dir,
        daemon: b,
        target: _target,
    } = rig;
    let killed_at = Instant::now();
    b.kill9();
    let _ = child.kill();
    let _ = child.wait();
    let deadline = killed_at + Duration::from_secs(20);
    let ended = loop {
        let s = sessions(&a_dir, &a).remove(0);
        if s["state"] == "interrupted" {
            break s;
        }
        assert!(Instant::now() < deadline, "not marked interrupted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = killed_at.elapsed();
    eprintln!("node-b killed: its session marked interrupted after {took:?} (lease 3 s)");
    // The lease runs from its last renewal (every 3 s / 5) before the kill.
    assert!(
        took >= Duration::from_millis(2400),
        "before the lease lapsed: {took:?}"
    );
    assert_eq!(ended["node"], "node-b", "{ended}");
    let why = ended["end_reason"].as_str().unwrap();
    assert!(
        why.contains("node `node-b` stopped renewing its lease"),
        "{ended}"
    );
    // One record ends it, written by A or C, saying which and why.
    let audit = json(&run_ok(&mut c.cmd(
        &c_dir,
        BOB,
        &["audit", "list", "--json"],
    )));
    let ends: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["subject"] == id.as_str() && r["action"] == "session-interrupted")
        .collect();
    assert_eq!(ends.len(), 1, "{audit}");
    let by = ends[0]["detail"]["node"].as_str().unwrap();
    assert!(by == "node-a" || by == "node-c", "{}", ends[0]);
    assert!(ends[0]["detail"]["why"]
        .as_str()
        .unwrap()
        .contains("node-b"));
    let starts = audit.as_array().unwrap().iter();
    let start = starts
        .clone()
        .find(|r| r["subject"] == id.as_str() && r["action"] == "session-start")
        .unwrap();
    assert_eq!(start["detail"]["node"], "node-b", "{start}");
    let shown = run_ok(&mut c.cmd(&c_dir, BOB, &["sessions", "show", &id]));
    assert!(
        shown.contains("node      node-b\n")
            && shown.contains("state     interrupted (node `node-b` stopped renewing"),
        "{shown}"
    );

    // A and C keep serving: alice signs on C and logs in through A's bastion.
    run_ok(&mut c.cmd(&c_dir, ALICE, &crate::observe("INC-5", &[])));
    for ext in ["-cert.pub", ""] {
        let name = format!("{ALICE}{ext}");
        std::fs::copy(c_dir.join(&name), a_dir.join(&name)).unwrap();
    }
    let out = ssh_via(&a_dir, a.ssh_port, "readonly@db-1", "echo through-a")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("through-a"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One chain, and the interrupted session's record checks out (its recording is on B's
    // disk: the seal is what its last flush recorded).
    let verdict = run_ok(&mut a.cmd(&a_dir, BOB, &["audit", "verify"]));
    assert!(verdict.starts_with("audit chain intact: "), "{verdict}");
    drop(b_dir);
}

/// Reads `child`'s stdout lines on a thread, each sent with when it came.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<(Instant, String)> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn postgresql_stopped_and_started_under_a_live_session() {
    let pg = PgCluster::start();
    let url = pg.url();
    let rig = rig_with(&["--store", &url, "--node", "solo"]);
    rig.observe("INC-6", &[]);
    // A session that prints a line every 100 ms for 15 s.
    let mut session = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &["for i in $(seq 1 150); do echo tick $i; sleep 0.1; done"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ticks = lines_of(&mut session);
    let (_, first) = ticks.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, "tick 1");

    pg.stop_server();
    let stopped_at = Instant::now();
    let target = format!("PostgreSQL at 127.0.0.1:{}/ramp", pg.port());
    // Signing: 503 with a message that says what and what to do.
    let (code, err) = run_err(&mut rig.ramp(ALICE, &crate::observe("INC-6", &[])));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("the ledger ({target}) is unreachable: "))
            && err.contains("try again shortly"),
        "{err}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(async {
        let body = br#"{"contract":"prod-db","step":"observe","reason":"INC-6"}"#.to_vec();
        let h = signed(&alice(&rig.dir), "POST", "/v1/requests", &body, Utc::now()).await;
        send(&rig.daemon.url, "POST", "/v1/requests", &h, body).await
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is unreachable"), "{body}");
    let metrics =
        run_ok(Command::new("curl").args(["-sf", &format!("{}/metrics", rig.daemon.url)]));
    assert!(metrics.contains("\nramp_ledger_up 0\n"), "{metrics}");
    assert!(
        metrics.contains("ramp_node_info{node=\"solo\"} 1"),
        "{metrics}"
    );
    // A new login is refused, and the log says why.
    let refused = rig
        .ssh(ALICE, "readonly@db-1", &["echo", "let-in"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success() && !String::from_utf8_lossy(&refused.stdout).contains("let-in"),
        "{refused:?}"
    );
    let log = rig.daemon.log();
    assert!(
        log.contains("login refused")
            && log.contains(&format!("the ledger ({target}) is unreachable")),
        "{log}"
    );
    // The live session goes on meanwhile.
    let mut during = 0;
    while stopped_at.elapsed() < Duration::from_secs(4) {
        if let Ok((at, line)) = ticks.recv_timeout(Duration::from_millis(500)) {
            assert!(line.starts_with("tick "), "{line}");
            during += u32::from(at > stopped_at);
        }
    }
    assert!(during >= 10, "only {during} lines during the outage");

    pg.start_again();
    let back_at = Instant::now();
    loop {
        let out = rig
            .ramp(ALICE, &crate::observe("INC-6", &[]))
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(20),
            "still failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "signing works again {:?} after PostgreSQL started",
        back_at.elapsed()
    );
    let out = session.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = ticks.iter().last().map(|(_, l)| l);
    assert_eq!(last.as_deref(), Some("tick 150"));
    // Its end is in the ledger (once the recorder's next flush reaches it), sealed.
    let list = rig.wait_sessions("the session's end", |l| {
        l.first().is_some_and(|s| s["state"] == "ended")
    });
    assert!(
        list[0]["bytes_out"].as_u64().unwrap() > 1000,
        "{:?}",
        list[0]
    );
    let verdict = run_ok(&mut rig.ramp(BOB, &["audit", "verify"]));
    assert!(
        verdict.starts_with("audit chain intact: ")
            && verdict.contains("recordings intact: 1 finished"),
        "{verdict}"
    );
    let metrics =
        run_ok(Command::new("curl").args(["-sf", &format!("{}/metrics", rig.daemon.url)]));
    assert!(metrics.contains("\nramp_ledger_up 1\n"), "{metrics}");
}
