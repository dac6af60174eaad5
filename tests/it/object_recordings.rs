//! `serve --recordings s3://BUCKET/PREFIX` against a real S3-compatible server: moto
//! (`moto_server`, from PyPI, installed by `scripts/install-deps`), started on a loopback
//! port. Two nodes on one PostgreSQL database: a session recorded through node B is
//! followed live on node A's dashboard (from its uploaded segments), then shown, exported,
//! grepped and verified from A (from the sealed object); B's spool empties once uploaded. With
//! the object store down, a recording stays in the spool, counted as pending, and goes out
//! once it is back. A bucket that is not there stops `serve` with a clear message.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rig::rig_in;
use crate::shared_recordings::{follow_to_end, followed_in_order, live_ids, web_login};
use crate::support::{free_port, ramp, run_ok, TestDir};
use crate::{Daemon, ALICE, BOB};

/// A moto S3 server on a loopback port, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start_on(port: u16) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (PyPI moto[server]); run scripts/install-deps");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `curl -X METHOD URL/PATH` (unsigned: creating buckets, listing): its body.
    fn curl(&self, method: &str, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, &format!("{}/{path}", self.url())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object store's credentials and address for every `ramp-ca` run in `dir`.
fn point_at(dir: &TestDir, moto: &Moto) {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", &moto.url()),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        dir.set_env(k, v);
    }
}

/// Waits (bounded) until `done` holds.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One sample of node `d`'s `/metrics`.
fn metric(d: &Daemon, name: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", &format!("{}/metrics", d.url)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(String::from))
        .unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

#[test]
fn recordings_in_s3_are_followed_read_and_verified_from_another_node() {
    let moto = Moto::start_on(free_port());
    moto.curl("PUT", "recs");
    let node = |name: &'static str| ["--recordings", "s3://recs/ramp", "--node", name];
    let b_dir = TestDir::new();
    b_dir.use_postgres();
    point_at(&b_dir, &moto);
    let rig = rig_in(b_dir, &node("node-b"));
    let a_dir = rig.dir.another_node();
    point_at(&a_dir, &moto);
    let a = Daemon::start_with(&a_dir, &node("node-a"));
    rig.observe("INC-12", &[]);
    let child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &[
                "-tt",
                "echo",
                "started;",
                "sleep",
                "6;",
                "echo",
                "watched-from-s3",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live = rig.wait_sessions("B's live session", |l| {
        l.len() == 1 && l[0]["state"] == "live"
    });
    let id = live[0]["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let followed = rt.block_on(async {
        let cookie = web_login(&a_dir, &a, BOB).await;
        live_ids(&a, &cookie, |ids| ids.len() == 1).await;
        follow_to_end(&a, &cookie, &id).await
    });
    followed_in_order(&followed, "started", "watched-from-s3");
    assert!(child.wait_with_output().unwrap().status.success());

    // Sealed: one object (byte for byte the file: A reads it below and `audit verify`
    // checks it against its seal); no segments left; B's spool is empty.
    let spooled = rig.dir.join(format!("data/recordings/{id}.rec"));
    wait_for("the sealed upload", || !spooled.exists());
    let listing = moto.curl("GET", "recs?list-type=2&prefix=ramp/");
    assert!(
        listing.contains(&format!("<Key>ramp/{id}.rec</Key>")),
        "{listing}"
    );
    assert!(!listing.contains("<Key>ramp/live/"), "{listing}");
    assert_eq!(metric(&rig.daemon, "ramp_recordings_upload_pending"), "0");

    let on_a = |args: &[&str]| run_ok(&mut a.cmd(&a_dir, BOB, args));
    assert!(on_a(&["sessions", "export", &id]).contains("watched-from-s3"));
    assert!(on_a(&["sessions", "grep", "watched-from"]).contains(&id));
    let verified = on_a(&["audit", "verify"]);
    assert!(
        verified.contains("recordings intact: 1 finished session"),
        "{verified}"
    );

    // The object store down: the next recording stays in B's spool, counted, and goes out
    // once the store is back.
    let port = moto.port;
    moto.stop();
    let out = rig
        .ssh(ALICE, "readonly@db-1", &["echo", "kept-while-down"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = rig.wait_sessions("the second session's end", |l| {
        l.len() == 2 && l[1]["state"] == "ended"
    })[1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("an upload counted as pending", || {
        metric(&rig.daemon, "ramp_recordings_upload_pending") != "0"
    });
    let spooled = rig.dir.join(format!("data/recordings/{second}.rec"));
    assert!(spooled.exists(), "kept in the spool");
    assert_ne!(
        metric(&rig.daemon, "ramp_recordings_upload_failures_total"),
        "0"
    );
    let moto = Moto::start_on(port);
    moto.curl("PUT", "recs");
    wait_for("the upload after the store came back", || !spooled.exists());
    let listing = moto.curl("GET", "recs?list-type=2&prefix=ramp/");
    assert!(
        listing.contains(&format!("<Key>ramp/{second}.rec</Key>")),
        "{listing}"
    );
    assert!(on_a(&["sessions", "export", &second]).contains("kept-while-down"));
}

#[test]
fn a_bucket_serve_cannot_write_to_is_named_at_start() {
    let moto = Moto::start_on(free_port());
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init"]));
    point_at(&dir, &moto);
    let serve = |at: &str| {
        ramp(&dir)
            .args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
            .args(["--recordings", at])
            .output()
            .unwrap()
    };
    let out = serve("s3://no-such-bucket/ramp");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recordings at s3://no-such-bucket/ramp: cannot write there"),
        "{err}"
    );
    // Nothing listening there at all.
    moto.stop();
    let out = serve("s3://recs/ramp");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("recordings at s3://recs/ramp: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
