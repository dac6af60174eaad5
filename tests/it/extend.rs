//! `ramp-ca extend` end to end (issue 14): a pty session outlives its grant's first end
//! without reconnecting, told the new end, recorded as one session; a fresh certificate
//! comes with the extension.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::rig::rig;
use crate::support::run_ok;
use crate::ALICE;

#[test]
fn a_pty_session_runs_past_its_first_end_once_the_grant_is_extended() {
    let rig = rig();
    let signed = rig.observe("INC-20 migration", &["--ttl", "12s"]);
    let grant = signed["grant"]["id"].as_str().unwrap().to_string();
    let first_serial = signed["serial"].as_u64().unwrap();
    let started = Instant::now();
    let child = rig
        .ssh(
            ALICE,
            "readonly@db-1",
            &[
                "-tt",
                "for i in $(seq 1 40); do echo tick-$i; sleep 0.5; done; echo migration-done",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_sessions("the live session", |l| {
        l.iter().any(|s| s["state"] == "live")
    });

    let said = run_ok(&mut rig.ramp(
        ALICE,
        &[
            "extend",
            &grant[..6],
            "--ttl",
            "1m",
            "--reason",
            "INC-20 runs long",
            "--no-agent",
        ],
    ));
    assert!(said.contains("certificate serial"), "{said}");
    let grants = crate::json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
    assert!(grants[0]["end"].as_str().is_some(), "{grants:#}");

    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let terminal =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        took > Duration::from_secs(15),
        "it ran past its first end: {took:?}"
    );
    assert!(terminal.contains("migration-done"), "{terminal}");
    assert!(
        terminal.contains("access to db-1 extended: it now ends at"),
        "{terminal}"
    );
    assert_eq!(out.status.code(), Some(0), "{terminal}");
    let list = rig.wait_sessions("the session ended", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    assert!(list[0]["end_reason"].is_null(), "{:#}", list[0]);
    assert_eq!(
        list[0]["serial"], first_serial,
        "one session, on the first certificate"
    );
    let extended = rig.audited("extend");
    assert_eq!(extended.len(), 1, "{extended:#?}");
    assert_eq!(extended[0]["detail"]["reason"], "INC-20 runs long");
}

/// On-call from a file the scheduler writes: a hand-off takes effect without a restart or a
/// signal, and an `approvals.auto` rule on the role approves at once, naming the rule.
#[test]
fn the_oncall_file_hands_a_role_over_without_a_restart() {
    let rig = rig();
    let policy = rig.dir.read("policies/prod-db.yaml").replace(
        "approvals: {from: [sre-lead], count: 1}",
        "approvals: {from: [sre-lead], count: 1, auto: [{name: paged, role: on-call}]}",
    );
    rig.dir.write("policies/prod-db.yaml", policy);
    rig.dir
        .write("policies/oncall.yaml", "roles:\n  on-call: [alice]\n");
    rig.reload();
    rig.observe("INC-30", &[]);
    let asked = crate::json(&run_ok(
        &mut rig.ramp(ALICE, &crate::ask("operate", "INC-30 paged")),
    ));
    assert_eq!(asked["grant"]["state"], "active", "{asked:#}");
    let granted = rig.audited("grant");
    assert!(
        granted.iter().any(|r| r["detail"]["by_rule"]
            .as_str()
            .is_some_and(|b| b.contains("paged"))),
        "{granted:#?}"
    );

    // The scheduler hands over: alice is off call within a few seconds, no SIGHUP.
    let reloads = || {
        rig.daemon
            .log()
            .matches("policies reloaded: oncall.yaml changed")
            .count()
    };
    // The watcher saw the first file too (within its 2 s poll): wait for that, then count.
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloads() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first oncall.yaml was not read:\n{}",
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = reloads();
    rig.dir.write(
        "policies/oncall.yaml",
        "roles:\n  on-call:\n    - {user: alice, until: 2000-01-01T00:00:00Z}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloads() == before {
        assert!(Instant::now() < deadline, "the hand-off was not read");
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = asked["grant"]["id"].as_str().unwrap();
    run_ok(&mut rig.ramp(
        crate::CAROL,
        &["revoke", "--grant", id, "--reason", "handed over"],
    ));
    let again = crate::json(&run_ok(
        &mut rig.ramp(ALICE, &crate::ask("operate", "INC-30 paged")),
    ));
    assert_eq!(again["grant"]["state"], "pending", "off call: {again:#}");
    // A broken file leaves the last good policies in force, and says why.
    rig.dir
        .write("policies/oncall.yaml", "roles:\n  on-call: [mallory]\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !rig.daemon.log().contains("unknown user `mallory`") {
        assert!(Instant::now() < deadline, "the broken file went unreported");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `extend --wait` on a step that takes approvals: it waits for another person's approval,
/// then writes the fresh certificate; its holder approving it is refused.
#[test]
fn extend_waits_for_its_approval_then_writes_the_certificate() {
    let rig = rig();
    rig.observe("INC-31", &[]);
    // Shorter than the observe grant it climbs from, so there is room to extend it.
    let mut ask = crate::ask("operate", "INC-31");
    ask.extend(["--ttl", "5m"]);
    let asked = crate::json(&run_ok(&mut rig.ramp(ALICE, &ask)));
    let id = asked["grant"]["id"].as_str().unwrap().to_string();
    run_ok(&mut rig.ramp(crate::BOB, &["approve", &id]));
    run_ok(&mut rig.ramp(ALICE, &["sign", "--grant", &id, "--no-agent"]));

    let waiting = rig
        .ramp(
            ALICE,
            &[
                "extend",
                &id,
                "--ttl",
                "2m",
                "--reason",
                "INC-31 more",
                "--wait",
                "--no-agent",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let grants = crate::json(&run_ok(&mut rig.ramp(crate::BOB, &["grants", "--json"])));
        let filed = grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["extension"].is_object());
        if filed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the extension was never filed: {grants:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, own) = crate::support::run_err(&mut rig.ramp(ALICE, &["approve", &id]));
    assert!(own.contains("your own extension"), "{own}");
    run_ok(&mut rig.ramp(crate::BOB, &["approve", &id]));
    let out = waiting.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("waits for 1 approval") && said.contains("certificate serial"),
        "{said}"
    );
    let records = rig.audited("extend");
    assert_eq!(records.len(), 2, "asked, then given: {records:#?}");
}
