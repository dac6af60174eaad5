//! Retention (issue 13) through the real ssh and sshd: a contract keeping recordings 2 s,
//! two sessions, one signed off: only that one's recording is deleted, by the daemon's own
//! sweep, audited (`recording-removed`); `show` says so, `play`/`export`/`grep` say why
//! they have nothing, `audit verify` passes; a recording deleted by hand still fails it.

use std::time::{Duration, Instant};

use crate::rig::{rig_with, Rig};
use crate::support::{ramp, run_err, run_ok, TestDir};
use crate::{json, ALICE, BOB, CAROL};

/// The contract `kept` (sre on db-1): reviewed by sre-lead, recordings kept 2 s.
fn kept(rig: &Rig) {
    rig.dir.write(
        "policies/kept.yaml",
        "contract: kept\n\
         targets: {names: [db-1]}\n\
         requesters: [sre]\n\
         reason: optional\n\
         keep: 2s\n\
         steps:\n\
         \x20 - name: work\n\
         \x20   principals: [readonly]\n\
         \x20   max_ttl: 30m\n\
         \x20   review: {by: [sre-lead], within: 1d}\n",
    );
    rig.reload();
    rig.sign(ALICE, &["--contract", "kept", "--step", "work"]);
}

/// Waits (bounded) until the chain has `n` `recording-removed` records.
fn wait_removed(rig: &Rig, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let removed = rig.audited("recording-removed");
        if removed.len() >= n {
            return removed;
        }
        assert!(
            Instant::now() < deadline,
            "no recording removed:\n{}",
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn retention_deletes_only_the_reviewed_recording_audited_and_verify_still_passes() {
    let conf = TestDir::new();
    let config = conf.write(
        "config.yaml",
        "retention: {sweep_every: 1s, per_pass: 10}\n",
    );
    let rig = rig_with(&["--config", &config.display().to_string()]);
    kept(&rig);
    for word in ["first-session", "second-session"] {
        let out = run_ok(&mut rig.ssh(ALICE, "readonly@db-1", &[&format!("echo {word}")]));
        assert!(out.contains(word), "{out}");
    }
    let list = rig.wait_sessions("both ended", |l| {
        l.len() == 2 && l.iter().all(|s| s["state"] == "ended")
    });
    let id = |word: &str| {
        list.iter()
            .find(|s| s["command"].as_str().unwrap().contains(word))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (reviewed, waiting) = (id("first-session"), id("second-session"));
    let file = |id: &str| rig.dir.join(format!("data/recordings/{id}.rec"));
    run_ok(&mut rig.ramp(
        BOB,
        &[
            "sessions",
            "review",
            &reviewed,
            "--ok",
            "--note",
            "echo only",
        ],
    ));

    let removed = wait_removed(&rig, 1);
    assert_eq!(removed[0]["subject"], reviewed.as_str());
    assert_eq!(removed[0]["actor"], "ramp-ca");
    assert_eq!(removed[0]["detail"]["contract"], "kept");
    assert_eq!(removed[0]["detail"]["keep"], "2s");
    assert_eq!(removed[0]["detail"]["reviewed"], "ok by bob");
    assert!(
        !file(&reviewed).exists(),
        "the reviewed recording is deleted"
    );
    // Several passes later the unreviewed one is still there, past its keep.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rig.audited("recording-removed").len(), 1, "removed once");
    assert!(file(&waiting).exists(), "kept while its review waits");

    let show = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &reviewed]));
    assert!(
        show.contains("recording removed by retention at")
            && show.contains("contract `kept` keeps recordings 2s after a session ends"),
        "{show}"
    );
    assert!(show.contains("review    ok by bob"), "{show}");
    let shown = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "show", &reviewed, "--json"]),
    ));
    assert_eq!(shown["removed"]["contract"], "kept");
    assert!(shown["recording"].is_object(), "the seal stays: {shown:#}");
    let commands = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &reviewed, "--commands"]));
    assert!(commands.contains("echo first-session"), "{commands}");
    for (who, verb) in [(BOB, "play"), (BOB, "export"), (ALICE, "play")] {
        let (code, err) = run_err(&mut rig.ramp(who, &["sessions", verb, &reviewed]));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("was removed by retention at") && err.contains("nothing to"),
            "{verb}: {err}"
        );
    }
    let out = rig
        .ramp(BOB, &["sessions", "grep", "session"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removed by retention"), "{stderr}");
    assert!(
        stdout.contains(&waiting) && !stdout.contains(&reviewed),
        "{stdout}"
    );

    let verified = run_ok(&mut rig.ramp(CAROL, &["audit", "verify"]));
    assert!(verified.contains("audit chain intact"), "{verified}");
    assert!(
        verified.contains("removed by retention: 1 of them"),
        "{verified}"
    );
    let explained = run_ok(ramp(&rig.dir).args([
        "policy",
        "explain",
        "--user",
        "alice",
        "--contract",
        "kept",
        "--step",
        "work",
    ]));
    assert!(
        explained.contains("kept 2s after each session ends"),
        "{explained}"
    );

    // A recording deleted by hand, without the chain saying so, is still named.
    std::fs::remove_file(file(&waiting)).unwrap();
    let (code, err) = run_err(&mut rig.ramp(CAROL, &["audit", "verify"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&waiting), "{err}");
}
