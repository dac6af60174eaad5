//! Webhooks, `/metrics` and shell completions, through the real binary: receivers are tiny
//! HTTP servers this test runs on loopback (one answers 200, one 500, one never answers).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ramp, run_err, run_ok, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

/// How a test receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    /// 500 every time.
    Fail,
    /// Reads the post and never answers.
    Hang,
}

/// A webhook receiver on 127.0.0.1 that keeps every body it is posted; stops on drop.
struct Receiver {
    /// With a path that stands for the secret a real webhook URL carries.
    url: String,
    posts: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "http://{}/hooks/secret-token-{answer:?}",
            listener.local_addr().unwrap()
        );
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (posts.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        let (p, s) = (p.clone(), s.clone());
                        thread::spawn(move || serve(socket, answer, &p, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver { url, posts, stop }
    }

    fn posts(&self) -> Vec<Value> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits (bounded) until the posts satisfy `done`; returns them.
    fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let posts = self.posts();
            if done(&posts) {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 40s; got {posts:#?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One connection: HTTP/1.1 posts (kept alive) until the client closes it.
fn serve(socket: TcpStream, answer: Answer, posts: &Mutex<Vec<Value>>, stop: &AtomicBool) {
    let _ = socket.set_nonblocking(false);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(socket);
    loop {
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body:?}"));
        posts.lock().unwrap().push(value);
        let status = match answer {
            Answer::Ok => "200 OK",
            Answer::Fail => "500 Internal Server Error",
            Answer::Hang => {
                for _ in 0..300 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                return;
            }
        };
        let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if reader.get_mut().write_all(head.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET /metrics` (no signature needed); asserts the Prometheus text content type.
fn scrape(daemon: &Daemon) -> String {
    let addr = daemon.url.strip_prefix("http://").unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of one series (`name{labels}`) in scraped text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` satisfies `done` (bounded); returns its value.
fn wait_metric(daemon: &Daemon, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let text = scrape(daemon);
        if let Some(v) = sample(&text, series).filter(|v| done(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} not as expected within 40s:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A service config with these receivers: `(url, format, events)`.
fn config(dir: &TestDir, hooks: &[(&str, &str, Option<&str>)]) -> String {
    let mut yaml = String::from("webhooks:\n");
    for (url, format, events) in hooks {
        yaml.push_str(&format!("  - url: {url}\n    format: {format}\n"));
        if let Some(events) = events {
            yaml.push_str(&format!("    events: [{events}]\n"));
        }
    }
    dir.write("config.yaml", yaml).display().to_string()
}

/// Far above a command's usual fraction of a second on a busy machine, and far below what
/// waiting on the hanging receiver would cost (4 attempts of 5 s, 10.5 s of backoff).
const QUICK: Duration = Duration::from_secs(15);

/// Runs a client command, asserting it is not held up by receivers that fail or hang.
fn quick(cmd: &mut Command) -> String {
    let started = Instant::now();
    let out = run_ok(cmd);
    let took = started.elapsed();
    assert!(took < QUICK, "{cmd:?} took {took:?}");
    out
}

fn by_event<'a>(posts: &'a [Value], event: &str) -> Vec<&'a Value> {
    posts.iter().filter(|p| p["event"] == event).collect()
}

#[test]
fn webhooks_carry_requests_approvals_denials_break_glass_and_revocations_while_bad_receivers_block_nothing(
) {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let (good, slack, failing, hanging) = (
        Receiver::start(Answer::Ok),
        Receiver::start(Answer::Ok),
        Receiver::start(Answer::Fail),
        Receiver::start(Answer::Hang),
    );
    let config = config(
        &dir,
        &[
            (&hanging.url, "json", None),
            (&failing.url, "json", Some("request")),
            (&good.url, "json", None),
            (&slack.url, "slack", Some("request, break-glass, revoke")),
        ],
    );
    let daemon = Daemon::start_with(&dir, &["--config", &config]);
    let run = |key: &str, args: &[&str]| quick(&mut daemon.cmd(&dir, key, args));
    let id_of = |out: String| json(&out)["grant"]["id"].as_str().unwrap().to_string();

    run(ALICE, &crate::observe("INC-42", &["--json"]));
    let operate = id_of(run(ALICE, &crate::ask("operate", "INC-42")));
    run(BOB, &["approve", &operate]);
    let glass = id_of(run(
        ALICE,
        &crate::ask("break-glass", "INC-42 <db down> & more"),
    ));
    run(BOB, &["approve", &glass]);
    run(CAROL, &["approve", &glass]);
    run(
        CAROL,
        &["revoke", "--grant", &glass, "--reason", "incident over"],
    );
    let again = id_of(run(ALICE, &crate::ask("break-glass", "INC-43")));
    run(BOB, &["deny", &again, "--reason", "not now"]);
    // No reason: the policy refuses it.
    let started = Instant::now();
    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        ALICE,
        &["sign", "--contract", "prod-db", "--step", "observe"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < QUICK);

    // The receiver that answers gets every event once, in audit order.
    let posts = good.wait("every event at the good receiver", |p| {
        p.iter().filter(|p| p["event"] == "deny").count() == 2
    });
    let kinds: Vec<&str> = posts.iter().map(|p| p["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "grant",
            "request",
            "approve",
            "grant",
            "request",
            "approve",
            "approve",
            "break-glass",
            "revoke",
            "request",
            "deny",
            "deny"
        ],
        "{posts:#?}"
    );
    let seqs: Vec<u64> = posts
        .iter()
        .map(|p| p["audit_seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for p in &posts {
        for key in ["at", "actor", "subject", "detail", "text"] {
            assert!(!p[key].is_null(), "{key} missing in {p}");
        }
    }
    let request = by_event(&posts, "request")[0];
    assert_eq!(request["actor"], "alice");
    assert_eq!(request["subject"], operate.as_str());
    assert_eq!(request["detail"]["grant"]["step"], "operate");
    let text = request["text"].as_str().unwrap();
    assert!(
        text.contains("alice requested prod-db/operate for")
            && text.contains(": INC-42 (needs 1 approval from sre-lead"),
        "{text}"
    );
    let approve = by_event(&posts, "approve")[0];
    assert_eq!(approve["actor"], "bob");
    assert_eq!(approve["subject"], operate.as_str());
    let glass_post = by_event(&posts, "break-glass")[0];
    assert_eq!(glass_post["subject"], glass.as_str());
    assert_eq!(
        glass_post["detail"]["principals"],
        serde_json::json!(["root"])
    );
    let text = glass_post["text"].as_str().unwrap();
    assert!(
        text.contains("BREAK-GLASS: alice holds prod-db/break-glass as root")
            && text.contains("approved by bob, carol"),
        "{text}"
    );
    assert!(
        by_event(&posts, "grant")
            .iter()
            .all(|p| p["subject"] != glass.as_str()),
        "a break-glass grant is not also a plain grant"
    );
    let revoke = by_event(&posts, "revoke")[0];
    assert_eq!(revoke["actor"], "carol");
    assert_eq!(revoke["detail"]["grants"], serde_json::json!([glass]));
    assert!(revoke["text"].as_str().unwrap().contains("incident over"));
    let denials = by_event(&posts, "deny");
    assert_eq!(denials[0]["subject"], again.as_str());
    assert!(
        denials[0]["text"]
            .as_str()
            .unwrap()
            .contains("bob denied alice's request for prod-db/break-glass: not now"),
        "{}",
        denials[0]
    );
    assert!(
        denials[1]["text"]
            .as_str()
            .unwrap()
            .contains("the policy refused alice's request for prod-db/observe"),
        "{}",
        denials[1]
    );

    // The Slack receiver gets `{"text"}` only, for the events it asked for, escaped.
    let texts = slack.wait("five Slack messages", |p| p.len() == 5);
    for t in &texts {
        assert_eq!(t.as_object().unwrap().len(), 1, "{t}");
    }
    let lines: Vec<&str> = texts.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert!(
        lines[0].starts_with(":unlock: alice requested prod-db/operate"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains(": INC-42 &lt;db down&gt; &amp; more"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(":rotating_light: BREAK-GLASS"),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with(":lock: carol revoked alice's grant"),
        "{lines:?}"
    );

    // The failing receiver's first event is tried four times (0.5 s, 2 s, 8 s apart),
    // then given up and counted; the hanging one got its first post and holds on to it.
    let first = by_event(&good.posts(), "request")[0]["audit_seq"].clone();
    failing.wait("four attempts at the first request", |p| {
        p.iter().filter(|p| p["audit_seq"] == first).count() == 4
    });
    wait_metric(
        &daemon,
        "ramp_webhook_deliveries_total{outcome=\"failed\"}",
        |v| v >= 1.0,
    );
    assert!(!hanging.posts().is_empty());
    let log = daemon.log();
    assert!(log.contains("webhook not delivered"), "{log}");
    assert!(
        !log.contains("secret-token"),
        "a webhook URL's path is logged:\n{log}"
    );

    // Metrics counted what happened: 12 posts to the good receiver, 5 to Slack.
    wait_metric(
        &daemon,
        "ramp_webhook_deliveries_total{outcome=\"ok\"}",
        |v| v >= 17.0,
    );
    let text = scrape(&daemon);
    let check =
        |series: &str, want: f64| assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    check("ramp_certificates_issued_total{kind=\"user\"}", 1.0);
    check("ramp_requests_total{outcome=\"granted\"}", 1.0);
    check("ramp_requests_total{outcome=\"pending\"}", 3.0);
    check("ramp_requests_total{outcome=\"denied\"}", 1.0);
    check("ramp_approvals_total", 3.0);
    check("ramp_revocations_total", 1.0);
    check("ramp_active_grants", 2.0);
    check("ramp_pending_requests", 0.0);
    assert!(
        sample(&text, "ramp_audit_records").unwrap() >= 12.0,
        "{text}"
    );
}

#[test]
fn a_session_the_bastion_cuts_off_is_announced_and_metrics_follow_sessions_bytes_and_refusals() {
    let hooks = TestDir::new();
    let receiver = Receiver::start(Answer::Ok);
    let config = config(&hooks, &[(&receiver.url, "json", Some("session-cut-off"))]);
    let rig = crate::rig::rig_with(&["--config", &config]);
    let grant = rig.observe("INC-50", &[])["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &["-tt", "echo", "started;", "sleep", "60"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_metric(&rig.daemon, "ramp_live_sessions", |v| v == 1.0);
    wait_metric(
        &rig.daemon,
        "ramp_bytes_proxied_total{direction=\"out\"}",
        |v| v >= "started".len() as f64,
    );
    run_ok(&mut rig.daemon.cmd(
        &rig.dir,
        CAROL,
        &["revoke", "--grant", &grant, "--reason", "incident over"],
    ));
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());

    let posts = receiver.wait("the cut-off", |p| !p.is_empty());
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let cut = &posts[0];
    assert_eq!(cut["event"], "session-cut-off");
    assert_eq!(cut["actor"], "alice");
    assert_eq!(cut["detail"]["session"]["target"], "db-1");
    assert_eq!(cut["detail"]["session"]["principal"], "readonly");
    assert!(
        cut["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("carol revoked the grant: incident over"),
        "{cut}"
    );
    let text = cut["text"].as_str().unwrap();
    assert!(
        text.contains("the bastion cut off alice's session on readonly@db-1"),
        "{text}"
    );
    wait_metric(&rig.daemon, "ramp_live_sessions", |v| v == 0.0);

    // The revoked certificate is refused at login, and counted under its reason.
    let refused = rig.ssh(ALICE, "readonly@db-1", &["true"]).output().unwrap();
    assert!(!refused.status.success());
    wait_metric(
        &rig.daemon,
        "ramp_logins_refused_total{reason=\"revoked\"}",
        |v| v >= 1.0,
    );
    let text = scrape(&rig.daemon);
    assert_eq!(
        sample(&text, "ramp_logins_refused_total{reason=\"expired\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "ramp_recording_lag_seconds").unwrap() < 5.0,
        "{text}"
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let dir = TestDir::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(ramp(&dir).args(["completions", shell]));
        assert!(out.contains("ramp-ca"), "{shell}: {out}");
        assert!(
            out.contains("sessions"),
            "{shell}: subcommands are completed"
        );
    }
    let (code, err) = run_err(ramp(&dir).args(["completions", "cmd.exe"]));
    assert_eq!(code, 2, "{err}");
}

/// Issue 9 §8: a checkpoint kept only beside the ledger is in reach of whoever rewrites the
/// ledger; the webhooks carry each one whole to receivers elsewhere, on schedule when the
/// chain grew, and at stop.
#[test]
fn checkpoints_are_posted_whole_when_the_chain_grew_and_at_stop() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let (receiver, slack) = (Receiver::start(Answer::Ok), Receiver::start(Answer::Ok));
    let hooks = [
        (receiver.url.as_str(), "json", Some("checkpoint")),
        (slack.url.as_str(), "slack", Some("checkpoint")),
    ];
    let with_interval = |every: &str| {
        let path = config(&dir, &hooks);
        let mut yaml = std::fs::read_to_string(&path).unwrap();
        yaml.push_str(&format!("audit:\n  checkpoint_every: {every}\n"));
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let daemon = Daemon::start_with(&dir, &["--config", &with_interval("1s")]);
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe("INC-60", &[])));
    let head = json(&run_ok(&mut daemon.cmd(
        &dir,
        BOB,
        &["audit", "list", "--json"],
    )))
    .as_array()
    .unwrap()
    .len() as u64;
    let posts = receiver.wait("a checkpoint of the head", |p| {
        p.iter().any(|p| p["detail"]["seq"] == head)
    });
    let cp = posts.iter().find(|p| p["detail"]["seq"] == head).unwrap();
    assert_eq!(cp["event"], "checkpoint");
    assert_eq!(cp["actor"], "ramp-ca");
    assert_eq!(cp["audit_seq"], head);
    let text = cp["detail"]["checkpoint"].as_str().unwrap();
    assert!(
        daemon.kept_checkpoints(&dir).iter().any(|k| k == text),
        "the receiver holds the very checkpoint the daemon kept"
    );
    assert!(cp["text"]
        .as_str()
        .unwrap()
        .contains(&format!("record {head}")));
    let lines = slack.wait("the Slack copy", |p| {
        p.iter().any(|p| {
            p["text"]
                .as_str()
                .unwrap()
                .contains(&format!("record {head} "))
        })
    });
    assert!(
        lines
            .iter()
            .any(|l| l["text"].as_str().unwrap().contains(text)),
        "Slack gets the checkpoint whole: {lines:#?}"
    );
    // What a receiver kept checks the chain, pinned to the key `trust audit-signer` prints.
    let kept = dir.write("received.checkpoint", text);
    let signer = dir.write(
        "signer.pub",
        run_ok(ramp(&dir).args(["trust", "audit-signer"])),
    );
    let out = run_ok(&mut daemon.cmd(
        &dir,
        BOB,
        &[
            "audit",
            "verify",
            "--checkpoint",
            kept.to_str().unwrap(),
            "--signer",
            signer.to_str().unwrap(),
        ],
    ));
    assert!(
        out.contains(&format!("record {head} matches")) && out.contains("pinned with --signer"),
        "{out}"
    );
    // No growth, no new checkpoint.
    thread::sleep(Duration::from_millis(2500));
    let before = receiver.posts();
    assert!(
        before
            .iter()
            .all(|p| p["detail"]["seq"].as_u64() <= Some(head)),
        "{before:#?}"
    );
    assert!(daemon.stop().success());

    // At stop, the records since the last checkpoint are signed too.
    let daemon = Daemon::start_with(&dir, &["--config", &with_interval("1h")]);
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::ask("operate", "INC-60")));
    assert!(daemon.stop().success());
    receiver.wait("the stop's checkpoint", |p| {
        p.iter().any(|p| p["detail"]["seq"].as_u64() > Some(head))
    });
}
