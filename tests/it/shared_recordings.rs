//! `serve --recordings file:///PATH`: three nodes on one PostgreSQL database and one shared
//! recordings directory. A session recorded through node B is listed live by node A's
//! dashboard and followed there as it runs; once it ends, A shows, plays, exports and greps
//! it, and C verifies every recording; a node restarting meanwhile leaves B's live session
//! alone, and B killed with -9 seals its own at its restart. And what `--recordings`
//! refuses, said clearly.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::bastion::sleeper_as;
use crate::rig::rig_on_postgres_with;
use crate::support::{ramp, run_ok, TestDir};
use crate::{json, Daemon, ALICE, BOB};

/// A dashboard login for `key` on node `d`: the session cookie from a one-time link.
pub(crate) async fn web_login(dir: &TestDir, d: &Daemon, key: &str) -> String {
    let link = json(&run_ok(&mut d.cmd(dir, key, &["dashboard", "--json"])));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let cookie = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("ramp_session="))
        .unwrap_or_else(|| panic!("no session cookie: {answer:?}"));
    cookie.split(';').next().unwrap().to_string()
}

/// What the node's dashboard lists as live, by session id, polled (bounded) until `done`.
pub(crate) async fn live_ids(
    d: &Daemon,
    cookie: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/ui/api/state", d.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<String> = state["live"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["session"]["id"].as_str().unwrap().to_string())
            .collect();
        if done(&ids) {
            return ids;
        }
        assert!(Instant::now() < deadline, "{state:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows session `id` on node `d`'s dashboard (Watch) until its `end` event: what came.
pub(crate) async fn follow_to_end(d: &Daemon, cookie: &str, id: &str) -> String {
    let mut follow = reqwest::Client::new()
        .get(format!("{}/ui/api/recordings/{id}/follow", d.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let (mut seen, since) = (String::new(), Instant::now());
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(20), follow.chunk())
        .await
        .unwrap()
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("event: end") {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{seen}");
    }
    seen
}

/// What a followed session's frames must show: `first`, then `later`, then the end.
pub(crate) fn followed_in_order(followed: &str, first: &str, later: &str) {
    let a = followed.find(first).expect("the first output, followed");
    let b = followed
        .find(later)
        .expect("output written later, followed");
    assert!(a < b && followed.contains("event: end"), "{followed}");
}

#[test]
fn three_nodes_share_recordings_and_any_node_follows_shows_and_verifies_them() {
    let shared = TestDir::new();
    let at = format!("file://{}", shared.join("recordings").display());
    let node = |name: &'static str| ["--recordings", at.as_str(), "--node", name];
    let (a_flags, b_flags, c_flags) = (node("node-a"), node("node-b"), node("node-c"));
    // Node B is the rig's daemon (the target's bastion); A and C are other nodes.
    let rig = rig_on_postgres_with(&b_flags);
    let a_dir = rig.dir.another_node();
    let mut a = Daemon::start_with(&a_dir, &a_flags);
    let c_dir = rig.dir.another_node();
    let c = Daemon::start_with(&c_dir, &c_flags);
    rig.observe("INC-11", &[]);
    let child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &[
                "-tt",
                "echo",
                "started;",
                "sleep",
                "5;",
                "echo",
                "watched-from-a",
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

    // A restarts while B's session runs: A did not record it, so A leaves it live.
    a.stop();
    a = Daemon::start_with(&a_dir, &a_flags);
    assert!(
        !a.log().contains("interrupted"),
        "node A touched B's session:\n{}",
        a.log()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let followed = rt.block_on(async {
        let cookie = web_login(&a_dir, &a, BOB).await;
        let ids = live_ids(&a, &cookie, |ids| !ids.is_empty()).await;
        assert_eq!(
            ids,
            std::slice::from_ref(&id),
            "A's dashboard lists B's live session"
        );
        // Watch on A: frames from B's recording as it is written, then the end.
        let seen = follow_to_end(&a, &cookie, &id).await;
        live_ids(&a, &cookie, |ids| ids.is_empty()).await;
        seen
    });
    followed_in_order(&followed, "started", "watched-from-a");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    rig.wait_sessions("the end", |l| l[0]["state"] == "ended");

    // The recording is in the shared directory, once; no node keeps a copy of its own, and
    // B no longer answers for it.
    assert!(shared.join(format!("recordings/{id}.rec")).exists());
    for dir in [&rig.dir, &a_dir, &c_dir] {
        assert!(!dir.join(format!("data/recordings/{id}.rec")).exists());
        assert!(!dir.join(format!("data/recordings-mine/{id}")).exists());
    }

    // A shows, plays, exports and greps B's session; C verifies every recording.
    let on_a = |args: &[&str]| run_ok(&mut a.cmd(&a_dir, BOB, args));
    assert!(on_a(&["sessions", "show", &id]).contains("readonly@db-1"));
    assert!(on_a(&["sessions", "play", &id, "--speed", "100"]).contains("watched-from-a"));
    assert!(on_a(&["sessions", "export", &id]).contains("watched-from-a"));
    let hits = on_a(&["sessions", "grep", "watched-from"]);
    assert!(hits.contains(&id), "{hits}");
    let verified = run_ok(&mut c.cmd(&c_dir, BOB, &["audit", "verify"]));
    assert!(
        verified.contains("recordings intact: 1 finished session"),
        "{verified}"
    );

    // B killed with -9 mid-session: A restarting meanwhile leaves B's session live and its
    // file as it is; B, restarting, seals what it recorded and marks it interrupted.
    let child = sleeper_as(&rig, "readonly@db-1");
    let second = rig.sessions()[1]["id"].as_str().unwrap().to_string();
    let file = shared.join(format!("recordings/{second}.rec"));
    wait_for_growth(&file);
    let mut a_slot = Some(a);
    let rig = rig.restart(
        |b, _| {
            b.kill9();
            a_slot.take().unwrap().stop();
            let a = Daemon::start_with(&a_dir, &a_flags);
            let listed = json(&run_ok(&mut a.cmd(
                &a_dir,
                BOB,
                &["sessions", "list", "--json"],
            )));
            assert_eq!(listed[1]["state"], "live", "{listed}");
            a_slot = Some(a);
        },
        &b_flags,
    );
    let a = a_slot.unwrap();
    let on_a = |args: &[&str]| run_ok(&mut a.cmd(&a_dir, BOB, args));
    let _ = child.wait_with_output();
    // B seals it as its bastion starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = json(&on_a(&["sessions", "list", "--json"]));
        if listed[1]["state"] == "interrupted" {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(on_a(&["sessions", "export", &second]).contains("started"));
    let verified = run_ok(&mut rig.ramp(BOB, &["audit", "verify"]));
    assert!(
        verified.contains("recordings intact: 2 finished sessions"),
        "{verified}"
    );
}

/// Waits (bounded) until a recording holds more than its header (its first flush).
fn wait_for_growth(file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(file).map_or(0, |m| m.len()) <= 21 {
        assert!(Instant::now() < deadline, "{} never grew", file.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn recordings_urls_serve_refuses_are_named() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init"]));
    let refused = |at: &str, says: &str| {
        let out = ramp(&dir)
            .args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
            .args(["--recordings", at])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{at}: {err}");
        assert!(err.contains(says), "{at}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    refused("ftp://host/x", "unknown scheme");
    refused("recordings", "not a URL");
    refused("file://relative/x", "names an absolute path");
    // A path this node cannot make a directory of: named before anything serves.
    let file = dir.write("not-a-dir", "x");
    refused(
        &format!("file://{}/recordings", file.display()),
        &file.display().to_string(),
    );
}
