//! On-call review (issue 13) through the real ssh, sftp and sshd: flag rules refusing an exec
//! command and an sftp write, flagging a command typed at a pty with line editing, the
//! `risky-command` webhook; the review queue and sign-off (never one's own session, never a
//! live one); an overdue review announced once (`review-overdue`, with `reviews.check_every`
//! shortened); bad flag and review rules named with their place.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::notify::{config, Answer, Receiver};
use crate::rig::{rig_with, Rig};
use crate::support::SpawnPiped;
use crate::support::{ramp, run_err, run_ok, TestDir};
use crate::{json, ALICE, BOB, CAROL};

/// The test contract `guarded` (sre on db-1): one step reviewed by sre-lead within a day,
/// with rules refusing DROP TABLE and sftp/scp writes under /tmp/ramp-guarded, flagging
/// `rm -rf`.
pub(crate) fn guarded(rig: &Rig) {
    rig.dir.write(
        "policies/guarded.yaml",
        "contract: guarded\n\
         targets: {names: [db-1]}\n\
         requesters: [sre]\n\
         reason: optional\n\
         steps:\n\
         \x20 - name: work\n\
         \x20   principals: [readonly]\n\
         \x20   max_ttl: 30m\n\
         \x20   options: {pty: true}\n\
         \x20   review: {by: [sre-lead], within: 1d}\n\
         flag:\n\
         \x20 - {name: drop-table, pattern: '(?i)DROP TABLE', on: command, block: true}\n\
         \x20 - {name: guarded-write, pattern: '^(write|upload) /tmp/ramp-guarded', on: file, block: true}\n\
         \x20 - {name: rm-rf, pattern: 'rm -rf', on: command}\n",
    );
    rig.reload();
    rig.sign(ALICE, &["--contract", "guarded", "--step", "work"]);
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_blocked_exec_and_a_blocked_sftp_write_never_reach_the_target_and_are_announced() {
    let hooks = TestDir::new();
    let receiver = Receiver::start(Answer::Ok);
    let config = config(
        &hooks,
        &[(&receiver.url, "json", Some("risky-command, review-concern"))],
    );
    let rig = rig_with(&["--config", &config]);
    guarded(&rig);

    let out = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &["echo ran >/tmp/ramp-guarded-ran; psql -c 'drop table users'"],
        )
        .output()
        .unwrap();
    let refused_at = Instant::now();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("ramp-ca: blocked by rule drop-table: echo ran"),
        "{}",
        text(&out)
    );
    assert!(
        !std::path::Path::new("/tmp/ramp-guarded-ran").exists(),
        "the refused command ran"
    );
    let posts = receiver.wait("risky-command", |p| !p.is_empty());
    let posts: Vec<_> = posts
        .into_iter()
        .filter(|p| p["event"] == "risky-command")
        .collect();
    let took = refused_at.elapsed();
    assert!(took < Duration::from_secs(3), "announced after {took:?}");
    assert_eq!(posts[0]["event"], "risky-command");
    assert_eq!(posts[0]["detail"]["rule"], "drop-table");
    assert_eq!(posts[0]["detail"]["blocked"], true);
    assert!(posts[0]["text"].as_str().unwrap().contains("refused"));

    // sftp: the open for writing under /tmp/ramp-guarded is refused alone (permission
    // denied, the reason on stderr); the same session then downloads a file.
    let remote = format!("/tmp/ramp-guarded-{}", std::process::id());
    rig.dir.write("upload.txt", "payload\n");
    let got = rig.dir.join("got-hostname");
    rig.dir.write(
        "batch",
        format!(
            "-put {} {remote}\nget /etc/hostname {}\n",
            rig.dir.join("upload.txt").display(),
            got.display()
        ),
    );
    let mut sftp = rig.client("sftp", ALICE, &[]);
    sftp.arg("-b")
        .arg(rig.dir.join("batch"))
        .arg("readonly@db-1@127.0.0.1");
    let out = sftp.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "ramp-ca: blocked by rule guarded-write: write {remote}"
        )),
        "{}",
        text(&out)
    );
    assert!(
        !std::path::Path::new(&remote).exists(),
        "the refused write reached the target"
    );
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        std::fs::read_to_string("/etc/hostname").unwrap(),
        "the get after the refusal worked in the same session"
    );

    let list = rig.wait_sessions("both sessions ended", |l| {
        l.len() == 2 && l.iter().all(|s| s["state"] == "ended")
    });
    for s in &list {
        let flags = s["flags"].as_array().unwrap();
        assert_eq!(flags.len(), 1, "{s:#}");
        assert_eq!(flags[0]["blocked"], true, "{s:#}");
        let ended_by_rule = s["end_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("blocked by rule"));
        let exec = s["kind"] == "exec";
        assert_eq!(ended_by_rule, exec, "only the exec session ends: {s:#}");
        if !exec {
            let files: Vec<&str> = s["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert!(files.contains(&"read /etc/hostname"), "{files:?}");
        }
    }
    let records = rig.audited("session-flag");
    let mut rules: Vec<&str> = records
        .iter()
        .map(|r| r["detail"]["rule"].as_str().unwrap())
        .collect();
    rules.sort_unstable();
    assert_eq!(rules, ["drop-table", "guarded-write"], "{records:#?}");
    let write = records
        .iter()
        .find(|r| r["detail"]["rule"] == "guarded-write")
        .unwrap();
    assert_eq!(write["detail"]["line"], format!("write {remote}"));
    let flagged = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "list", "--flagged", "--json"]),
    ));
    assert_eq!(flagged.as_array().unwrap().len(), 2);

    // A concern is announced.
    let id = list[0]["id"].as_str().unwrap();
    run_ok(&mut rig.ramp(
        BOB,
        &[
            "sessions",
            "review",
            id,
            "--concern",
            "--note",
            "who asked for this?",
        ],
    ));
    let posts = receiver.wait("review-concern", |p| {
        p.iter().any(|p| p["event"] == "review-concern")
    });
    let concern = posts
        .iter()
        .find(|p| p["event"] == "review-concern")
        .unwrap();
    assert_eq!(concern["subject"], id);
    assert_eq!(concern["detail"]["note"], "who asked for this?");
}

#[test]
fn a_command_typed_with_line_editing_is_flagged_and_a_reviewer_signs_the_session_off() {
    let rig = rig_with(&[]);
    guarded(&rig);
    let mut child = rig.ssh(ALICE, "readonly@db-1", &["-tt"]).spawn_piped();
    {
        let stdin = child.stdin.as_mut().unwrap();
        // Typed, erased, retyped: `rm -rx` becomes `rm -rf` before Enter.
        stdin
            .write_all(b"rm -rx\x7ff /tmp/ramp-nothing-here-$$\r")
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"exit\r").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let list = rig.wait_sessions("the shell ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    let id = list[0]["id"].as_str().unwrap().to_string();
    let flags = list[0]["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 1, "{:#}", list[0]);
    assert_eq!(flags[0]["rule"], "rm-rf");
    assert_eq!(flags[0]["line"], "rm -rf /tmp/ramp-nothing-here-$$");
    assert!(
        flags[0].get("blocked").is_none(),
        "typed lines are not blocked"
    );
    let show = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &id]));
    assert!(show.contains("flag      +"), "{show}");
    assert!(
        show.contains("review    waiting for sre-lead, due"),
        "{show}"
    );

    // A second session, kept live: nobody reviews it yet.
    let mut sleeper = crate::bastion::sleeper_as(&rig, "readonly@db-1");
    let live = rig
        .sessions()
        .into_iter()
        .find(|s| s["state"] == "live")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // bob (sre-lead) has the ended one in his queue; alice nothing.
    let queue = run_ok(&mut rig.ramp(BOB, &["sessions", "review"]));
    assert!(
        queue.contains(&id) && queue.contains("1 (rm-rf)"),
        "{queue}"
    );
    assert!(!queue.contains(&live), "{queue}");
    let mine = run_ok(&mut rig.ramp(ALICE, &["sessions", "review"]));
    assert!(mine.contains("nothing to review"), "{mine}");
    let unreviewed = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "list", "--unreviewed", "--json"]),
    ));
    assert_eq!(unreviewed.as_array().unwrap().len(), 1);

    let verdict = |key: &str, id: &str, flag: &str| {
        rig.ramp(
            key,
            &["sessions", "review", id, flag, "--note", "looked at the rm"],
        )
    };
    let (code, own) = run_err(&mut verdict(ALICE, &id, "--ok"));
    assert_eq!(code, 1);
    assert!(own.contains("is your own"), "{own}");
    let (_, still) = run_err(&mut verdict(BOB, &live, "--ok"));
    assert!(still.contains("still live"), "{still}");
    let (_, unknown) = run_err(&mut verdict(BOB, "0123456789abcdef", "--ok"));
    assert!(unknown.contains("no recorded session with id"), "{unknown}");
    let (code, usage) = run_err(&mut rig.ramp(BOB, &["sessions", "review", &id, "--ok"]));
    assert_eq!(code, 2, "{usage}");
    assert!(usage.contains("--note"), "{usage}");

    let said = run_ok(&mut verdict(BOB, &id, "--ok"));
    assert!(said.contains(&format!("reviewed session {id}")), "{said}");
    let records = rig.audited("session-review");
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0]["actor"].as_str(), records[0]["subject"].as_str()),
        (Some("bob"), Some(id.as_str()))
    );
    assert_eq!(records[0]["detail"]["verdict"], "ok");
    let (_, twice) = run_err(&mut verdict(CAROL, &id, "--concern"));
    assert!(twice.contains("reviewed already by bob"), "{twice}");
    let queue = run_ok(&mut rig.ramp(BOB, &["sessions", "review"]));
    assert!(!queue.contains(&id), "{queue}");
    let show = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &id]));
    assert!(show.contains("review    ok by bob"), "{show}");

    // The report's figures match: one grant, two sessions (one reviewed, one still live).
    let report = json(&run_ok(
        &mut rig.ramp(CAROL, &["report", "--since", "1d", "--format", "json"]),
    ));
    let row = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["contract"] == "guarded")
        .unwrap_or_else(|| panic!("{report:#}"));
    for (field, want) in [
        ("grants", 1),
        ("sessions", 2),
        ("flags", 1),
        ("reviews_needed", 2),
        ("reviewed", 1),
        ("late", 0),
        ("missing", 0),
        ("pending", 1),
    ] {
        assert_eq!(row[field], want, "{field}: {row:#}");
    }
    let csv = run_ok(&mut rig.ramp(CAROL, &["report", "--format", "csv"]));
    assert!(csv.starts_with("contract,step,grants,approvers,"), "{csv}");
    let (_, refused) = run_err(&mut rig.ramp(ALICE, &["report"]));
    assert!(
        refused.contains("the access report takes ramp-admin or ramp-auditor"),
        "{refused}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn bad_flag_and_review_rules_are_named_with_their_place() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init"]));
    let mut text = dir.read("policies/prod-db.yaml");
    text = text.replace(
        "    max_ttl: 30m\n",
        "    max_ttl: 30m\n    review: {by: [sre-leed], within: 1d}\n",
    );
    text.push_str(
        "flag:\n  - {name: a, pattern: 'DROP (TABLE', on: command}\n  - {name: b, pattern: x, on: output, block: true}\n",
    );
    dir.write("policies/prod-db.yaml", text);
    let (code, err) = run_err(ramp(&dir).args(["policy", "check"]));
    assert_eq!(code, 1, "{err}");
    for want in [
        "prod-db.yaml:12:19: contract `prod-db` step `observe` review: unknown role `sre-leed`",
        "is not a regular expression",
        "cannot block output",
    ] {
        assert!(err.contains(want), "{want} not in:\n{err}");
    }
}

/// With `reviews.check_every` shortened, a review that goes past due is announced as
/// `review-overdue` once, however many checks see it overdue.
#[test]
fn an_overdue_review_is_announced_once_by_webhook() {
    let hooks = TestDir::new();
    let receiver = Receiver::start(Answer::Ok);
    let config = config(&hooks, &[(&receiver.url, "json", Some("review-overdue"))]);
    let mut yaml = hooks.read("config.yaml");
    yaml.push_str("reviews: {check_every: 1s}\n");
    hooks.write("config.yaml", yaml);
    let rig = rig_with(&["--config", &config]);
    rig.dir.write(
        "policies/hasty.yaml",
        "contract: hasty\n\
         targets: {names: [db-1]}\n\
         requesters: [sre]\n\
         reason: optional\n\
         steps:\n\
         \x20 - name: work\n\
         \x20   principals: [readonly]\n\
         \x20   max_ttl: 30m\n\
         \x20   review: {by: [sre-lead], within: 1s}\n",
    );
    rig.reload();
    rig.sign(ALICE, &["--contract", "hasty", "--step", "work"]);
    run_ok(&mut rig.ssh(ALICE, "readonly@db-1", &["true"]));
    let list = rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    let id = list[0]["id"].as_str().unwrap();
    let posts = receiver.wait("review-overdue", |p| !p.is_empty());
    assert_eq!(posts[0]["event"], "review-overdue");
    assert_eq!(posts[0]["subject"], id);
    assert_eq!(posts[0]["detail"]["by"], serde_json::json!(["sre-lead"]));
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("`ramp-ca sessions review {id}`")),
        "{:#}",
        posts[0]
    );
    // Several more checks see it overdue: nothing more is sent, one record in the chain.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(receiver.posts().len(), 1, "{:#?}", receiver.posts());
    assert_eq!(rig.audited("review-overdue").len(), 1);
    let overdue = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "list", "--overdue", "--json"]),
    ));
    assert_eq!(overdue.as_array().unwrap().len(), 1);
}

/// The timeline reads typed lines off the terminal: with bash on a real pty, a line recalled
/// with the up arrow and extended, and a path completed with Tab, are the lines bash ran.
#[test]
fn typed_lines_are_read_off_the_terminal_with_history_recall_and_tab_completion() {
    let rig = rig_with(&[]);
    guarded(&rig);
    let mut child = rig
        .ssh_with(
            ALICE,
            &["-tt".to_string()],
            "readonly@db-1",
            &["bash --norc --noprofile -i"],
        )
        .spawn_piped();
    {
        let stdin = child.stdin.as_mut().unwrap();
        for keys in [
            &b"echo ramp-one\r"[..],
            b"\x1b[A",
            b" two\r",
            b"ls /etc/hostn\t",
            b"\r",
            b"exit\r",
        ] {
            std::thread::sleep(Duration::from_millis(700));
            stdin.write_all(keys).unwrap();
            stdin.flush().unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let list = rig.wait_sessions("the shell ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    let id = list[0]["id"].as_str().unwrap();
    let timeline = json(&run_ok(
        &mut rig.ramp(BOB, &["sessions", "show", id, "--commands", "--json"]),
    ));
    let typed: Vec<&str> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "typed")
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(
        typed,
        [
            "echo ramp-one",
            "echo ramp-one two",
            "ls /etc/hostname",
            "exit"
        ],
        "{timeline:#}\n{}",
        text(&out)
    );
}
