//! On-call ending a live session (issue 12): `sessions end ID --reason T`, the user's terminal
//! told who and why, the recording's end reason, the `session-stop` record; refused to
//! someone who neither administers, approves the step, nor owns the session.

use std::time::{Duration, Instant};

use crate::bastion::sleeper_as;
use crate::rig::rig;
use crate::support::{run_err, run_ok};
use crate::{json, BOB, CAROL};

#[test]
fn on_call_ends_a_live_session_and_its_user_reads_who_and_why() {
    let rig = rig();
    rig.observe("INC-5", &[]);
    let child = sleeper_as(&rig, "readonly@db-1");
    let id = rig.sessions().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // bob audits and leads, but observe needs nobody's approval: not his to end.
    let (_, refused) = run_err(&mut rig.ramp(BOB, &["sessions", "end", &id, "--reason", "x"]));
    assert!(refused.contains("ending it takes ramp-admin"), "{refused}");
    // A reason is required, by clap and by the service.
    let (_, usage) = run_err(&mut rig.ramp(CAROL, &["sessions", "end", &id]));
    assert!(usage.contains("--reason"), "{usage}");
    let (_, blank) = run_err(&mut rig.ramp(CAROL, &["sessions", "end", &id, "--reason", "  "]));
    assert!(blank.contains("takes a reason"), "{blank}");

    let asked = Instant::now();
    let said = run_ok(&mut rig.ramp(
        CAROL,
        &[
            "sessions",
            "end",
            &id,
            "--reason",
            "wrong host, use db-2\x1b[31m",
        ],
    ));
    assert!(said.contains(&format!("ended session {id}")), "{said}");
    let out = child.wait_with_output().unwrap();
    let took = asked.elapsed();
    let terminal = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        terminal.contains("ramp-ca: carol ended this session: wrong host, use db-2\\x1b[31m"),
        "{terminal}"
    );
    assert!(
        !terminal.contains('\x1b'),
        "a raw escape reached the terminal: {terminal:?}"
    );
    assert!(took < Duration::from_secs(10), "ending took {took:?}");

    let list = rig.wait_sessions("the session ended", |l| {
        l.iter()
            .any(|s| s["id"] == id.as_str() && s["state"] == "ended")
    });
    let ended = list.iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert!(
        ended["end_reason"]
            .as_str()
            .unwrap()
            .starts_with("carol ended this session"),
        "{ended:#}"
    );
    let stops = rig.audited("session-stop");
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["actor"], "carol");
    assert_eq!(stops[0]["subject"], id.as_str());
    assert_eq!(stops[0]["detail"]["user"], "alice");

    // Ending it again: it is not live any more.
    let (_, again) = run_err(&mut rig.ramp(CAROL, &["sessions", "end", &id, "--reason", "x"]));
    assert!(again.contains("is not live (it is ended)"), "{again}");
    let (_, unknown) = run_err(&mut rig.ramp(CAROL, &["sessions", "end", "nope", "--reason", "x"]));
    assert!(
        unknown.contains("no recorded session with id `nope`"),
        "{unknown}"
    );
    // The JSON answer names the session.
    let child = sleeper_as(&rig, "readonly@db-1");
    let id = rig.sessions().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = json(&run_ok(&mut rig.ramp(
        CAROL,
        &["sessions", "end", &id, "--reason", "done", "--json"],
    )));
    assert_eq!(out["target"]["session"], id.as_str(), "{out:#}");
    let _ = child.wait_with_output();
}

#[test]
fn a_revoke_says_what_it_reaches_before_and_after_and_the_terminal_says_who_revoked() {
    let rig = rig();
    let observe = rig.observe("INC-8", &[])["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let operate = json(&run_ok(
        &mut rig.ramp(crate::ALICE, &crate::ask("operate", "INC-8")),
    ))["grant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&mut rig.ramp(BOB, &["approve", &operate]));
    rig.sign(crate::ALICE, &["--grant", &operate]);
    let child = sleeper_as(&rig, "dbadmin@db-1");
    let session = rig.sessions().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let dry = run_ok(&mut rig.ramp(
        CAROL,
        &[
            "revoke",
            "--grant",
            &observe,
            "--reason",
            "INC-8 over",
            "--dry-run",
        ],
    ));
    assert!(
        dry.contains(&format!(
            "would end grant {operate} (alice's prod-db/operate)"
        )),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "would cut live session {session} (alice on dbadmin@db-1)"
        )),
        "{dry}"
    );
    assert!(dry.contains("nothing changed"), "{dry}");
    let grants = json(&run_ok(&mut rig.ramp(crate::ALICE, &["grants", "--json"])));
    // One grant shape: `state` only, `status` gone (issue 12).
    assert!(grants[0].get("status").is_none(), "{grants:#}");
    let active = grants
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "active");
    assert_eq!(active.count(), 2, "{grants:#}");
    assert!(rig.audited("revoke").is_empty());

    let done = run_ok(&mut rig.ramp(
        CAROL,
        &["revoke", "--grant", &observe, "--reason", "INC-8 over"],
    ));
    assert!(done.contains(&format!("end grant {operate}")), "{done}");
    assert!(
        done.contains(&format!("cut live session {session}")),
        "{done}"
    );
    let out = child.wait_with_output().unwrap();
    let terminal =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        terminal.contains("ramp-ca: access to db-1 ended: carol revoked the grant: INC-8 over"),
        "{terminal}"
    );
}

#[test]
fn a_search_finds_commands_ignoring_case_or_by_regex_and_survives_a_damaged_recording() {
    let rig = rig();
    rig.observe("INC-9", &[]);
    for cmd in ["echo Needle-One", "echo needle-two", "printf 'quiet\\n'"] {
        run_ok(&mut rig.ssh(crate::ALICE, "readonly@db-1", &[cmd]));
    }
    let list = rig.wait_sessions("three ended sessions", |l| {
        l.len() == 3 && l.iter().all(|s| s["state"] == "ended")
    });
    let ids: Vec<String> = list
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let grep = |args: &[&str]| {
        let mut all = vec!["sessions", "grep"];
        all.extend_from_slice(args);
        run_ok(&mut rig.ramp(BOB, &all))
    };

    // Case as typed, ignoring case, and a regular expression; exec command lines count.
    let exact = grep(&["Needle", "--json"]);
    let exact = json(&exact);
    let streams: Vec<&str> = exact["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["command", "output"], "{exact:#}");
    let folded = grep(&["-i", "NEEDLE"]);
    assert_eq!(folded.matches(" command: echo ").count(), 2, "{folded}");
    assert_eq!(folded.matches(" output: needle-two").count(), 1, "{folded}");
    let by_regex = grep(&["--regex", "^needle-t[wx]o$"]);
    assert!(by_regex.contains(&format!("{} +", ids[1])), "{by_regex}");
    assert_eq!(by_regex.lines().count(), 1, "{by_regex}");
    let (code, bad) = run_err(&mut rig.ramp(BOB, &["sessions", "grep", "--regex", "(open"]));
    assert_eq!(code, 1);
    assert!(bad.contains("invalid regular expression"), "{bad}");

    // One recording edited after the fact: the others are still searched, and it is named.
    let file = rig.dir.join(format!("data/recordings/{}.rec", ids[0]));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let out = rig
        .ramp(BOB, &["sessions", "grep", "-i", "needle"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("needle-two"), "{stdout}");
    assert!(
        stderr.contains(&format!("session {} was not searched", ids[0])),
        "{stderr}"
    );
    let searched = rig.audited("sessions-grep");
    assert!(
        searched
            .iter()
            .any(|r| r["detail"]["damaged"][0] == ids[0].as_str()),
        "{searched:#?}"
    );
}

#[test]
fn short_id_prefixes_work_where_they_name_one_thing_the_caller_may_see() {
    let rig = rig();
    rig.observe("INC-10", &[]);
    let pending = json(&run_ok(
        &mut rig.ramp(crate::ALICE, &crate::ask("operate", "INC-10")),
    ));
    let id = pending["grant"]["id"].as_str().unwrap().to_string();
    let short = &id[..5];
    let approved = json(&run_ok(&mut rig.ramp(BOB, &["approve", short, "--json"])));
    assert_eq!(approved["grant"]["id"], id.as_str(), "{approved:#}");
    assert_eq!(approved["grant"]["state"], "active");
    run_ok(&mut rig.ramp(crate::ALICE, &["sign", "--grant", short]));

    run_ok(&mut rig.ssh(crate::ALICE, "readonly@db-1", &["true"]));
    let session = rig.wait_sessions("an ended session", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    })[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = run_ok(&mut rig.ramp(BOB, &["sessions", "show", &session[..6]]));
    assert!(shown.contains(&session), "{shown}");

    // Her own session, by its prefix; someone who may not see a grant learns nothing from
    // its prefix: an unknown id.
    let own = run_ok(&mut rig.ramp(crate::ALICE, &["sessions", "show", &session[..6]]));
    assert!(own.contains(&session), "{own}");
    let (_, err) = run_err(&mut rig.ramp(crate::ALICE, &["revoke", "--grant", "ffff"]));
    assert!(err.contains("no grant with id `ffff`"), "{err}");
}
