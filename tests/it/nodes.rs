//! Several `ramp-ca serve` nodes on one PostgreSQL database, whatever `RAMP_TEST_STORE`
//! says: the same keys, policies and demo identities, a `data/` directory each (see
//! [`TestDir::another_node`]). What must hold across them: serials never repeat, a request
//! replayed to another node is refused, approvals count once whichever node they reach, one
//! audit chain, and a revocation on one node ends live sessions on the others.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::bad_input::{alice, send, signed, signer};
use crate::bastion::sleeper_as;
use crate::rig::rig_on_postgres;
use crate::stores::TestLedger;
use crate::support::{ramp, run_ok, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

/// An initialised installation with `n` nodes serving it from one database.
fn nodes(n: usize) -> (Vec<TestDir>, Vec<Daemon>) {
    let first = TestDir::new();
    run_ok(ramp(&first).args(["init", "--demo"]));
    first.use_postgres();
    let mut dirs = vec![first];
    for _ in 1..n {
        let node = dirs[0].another_node();
        dirs.push(node);
    }
    let daemons = dirs.iter().enumerate().map(|(i, d)| named(d, i)).collect();
    (dirs, daemons)
}

/// Node `i` of an installation on `dir`, named `node-i`: nodes sharing a database need a
/// name each (a second start under a name another process holds is refused).
fn named(dir: &TestDir, i: usize) -> Daemon {
    Daemon::start_with(dir, &["--node", &format!("node-{i}")])
}

/// Starts `cmd` with its output captured.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ramp-ca")
}

/// Waits for `child`: whether it succeeded, its stdout and its stderr.
fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().expect("wait for ramp-ca");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `audit verify` on every node: each says the chain is intact, with the same length.
fn one_chain(dirs: &[TestDir], daemons: &[Daemon], flags: &[&str]) -> String {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(flags);
    let verdicts: Vec<String> = dirs
        .iter()
        .zip(daemons)
        .map(|(dir, d)| {
            let out = run_ok(&mut d.cmd(dir, BOB, &args));
            out.lines().next().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        verdicts[0].starts_with("audit chain intact: "),
        "{verdicts:?}"
    );
    assert!(
        verdicts.iter().all(|v| *v == verdicts[0]),
        "every node sees one chain: {verdicts:?}"
    );
    verdicts[0].clone()
}

#[test]
fn serials_never_repeat_across_nodes_signing_at_once() {
    let (dirs, daemons) = nodes(2);
    const SIGNERS: usize = 12;
    // alice's key, copied once a signer, so each certificate lands in a file of its own.
    let signers: Vec<Child> = (0..SIGNERS)
        .map(|i| {
            let node = i % 2;
            let key = format!("k{i}/id_ed25519");
            for ext in ["", ".pub"] {
                dirs[node].write(
                    format!("{key}{ext}"),
                    std::fs::read(dirs[node].join(format!("{ALICE}{ext}"))).unwrap(),
                );
            }
            let private = dirs[node].join(&key);
            std::fs::set_permissions(
                &private,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            spawn(daemons[node].cmd(&dirs[node], &key, &crate::observe("INC-1", &[])))
        })
        .collect();
    let mut serials: Vec<u64> = Vec::new();
    for (i, child) in signers.into_iter().enumerate() {
        let (ok, _, err) = finish(child);
        assert!(ok, "signer {i}: {err}");
        let cert = dirs[i % 2].read(format!("k{i}/id_ed25519-cert.pub"));
        let cert = russh::keys::ssh_key::Certificate::from_openssh(cert.trim()).unwrap();
        serials.push(cert.serial());
        // In the shared ledger as it was handed out.
        let ledger = TestLedger::open(&dirs[0]);
        assert_eq!(
            ledger.cert(cert.serial()).map(|r| r.key_id),
            Some(cert.key_id().to_string()),
            "serial {} is not in the ledger as it was handed out",
            cert.serial()
        );
    }
    let mut distinct = serials.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        SIGNERS,
        "a serial handed out twice: {serials:?}"
    );
    one_chain(&dirs, &daemons, &[]);
}

#[test]
fn a_signed_request_replayed_to_another_node_is_refused() {
    let (dirs, daemons) = nodes(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let body = br#"{"contract":"prod-db","step":"observe","reason":"INC-2"}"#.to_vec();
        let h = signed(&alice(&dirs[0]), "POST", "/v1/requests", &body, Utc::now()).await;
        let (status, answer) =
            send(&daemons[0].url, "POST", "/v1/requests", &h, body.clone()).await;
        assert_eq!(status, 201, "{answer}");
        let (status, answer) = send(&daemons[1].url, "POST", "/v1/requests", &h, body).await;
        assert_eq!(
            (status, answer.contains("replayed")),
            (401, true),
            "{answer}"
        );
    });
    // Filed once.
    let audit = run_ok(&mut daemons[1].cmd(&dirs[1], BOB, &["audit", "list", "--json"]));
    let requests = json(&audit)
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "request")
        .count();
    assert_eq!(requests, 1, "{audit}");
}

/// The audit records of `action` about grant `id`, as node `d` lists them.
fn audited(dir: &TestDir, d: &Daemon, action: &str, id: &str) -> Vec<serde_json::Value> {
    let all = json(&run_ok(&mut d.cmd(dir, BOB, &["audit", "list", "--json"])));
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action && r["subject"] == id)
        .cloned()
        .collect()
}

/// The grant `id` as node `d` shows it.
fn shown(dir: &TestDir, d: &Daemon, id: &str) -> serde_json::Value {
    let all = json(&run_ok(&mut d.cmd(
        dir,
        CAROL,
        &["grants", "--all", "--json"],
    )));
    all.as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no grant {id}: {all}"))
}

/// bob approves `id` on node 0 while carol approves it on node 1: both requests signed
/// first, then sent at the same moment. Each one's (status, body).
fn race(dirs: &[TestDir], daemons: &[Daemon], id: &str) -> [(u16, String); 2] {
    let path = format!("/v1/grants/{id}/approve");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let body = b"{}".to_vec();
        let by_bob = signed(&signer(&dirs[0], BOB), "POST", &path, &body, Utc::now()).await;
        let by_carol = signed(&signer(&dirs[1], CAROL), "POST", &path, &body, Utc::now()).await;
        let (bob, carol) = tokio::join!(
            send(&daemons[0].url, "POST", &path, &by_bob, body.clone()),
            send(&daemons[1].url, "POST", &path, &by_carol, body.clone()),
        );
        [bob, carol]
    })
}

/// alice asks for `step` of prod-db on node `node`; the request's id.
fn request(dirs: &[TestDir], daemons: &[Daemon], node: usize, step: &str) -> String {
    let out = run_ok(&mut daemons[node].cmd(&dirs[node], ALICE, &crate::ask(step, "INC-3")));
    json(&out)["grant"]["id"].as_str().unwrap().to_string()
}

/// Who approved grant `g` (as `grants --json` shows it), sorted.
fn approvers(g: &serde_json::Value) -> Vec<String> {
    let mut by: Vec<String> = g["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap().to_string())
        .collect();
    by.sort_unstable();
    by
}

#[test]
fn approvals_racing_on_two_nodes_count_once() {
    let (dirs, daemons) = nodes(2);
    run_ok(&mut daemons[0].cmd(&dirs[0], ALICE, &crate::observe("INC-3", &[])));
    // A few rounds, to give a lost update its chance.
    for round in 0..4 {
        // operate takes one approval: of two leads approving at once on two nodes, one does;
        // the other finds it decided.
        let operate = request(&dirs, &daemons, round % 2, "operate");
        let outcomes = race(&dirs, &daemons, &operate);
        let mut statuses: Vec<u16> = outcomes.iter().map(|o| o.0).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: {outcomes:?}");
        let lost = outcomes.iter().find(|o| o.0 == 409).unwrap();
        assert!(
            lost.1
                .contains(&format!("request `{operate}` is active, not pending")),
            "round {round}: {outcomes:?}"
        );
        let g = shown(&dirs[0], &daemons[0], &operate);
        assert_eq!(g["state"], "active", "round {round}: {g}");
        assert_eq!(approvers(&g).len(), 1, "round {round}: {g}");
        assert_eq!(audited(&dirs[1], &daemons[1], "approve", &operate).len(), 1);

        // break-glass takes two: both count, once each, and it activates once.
        let glass = request(&dirs, &daemons, (round + 1) % 2, "break-glass");
        let outcomes = race(&dirs, &daemons, &glass);
        assert!(
            outcomes.iter().all(|o| o.0 == 200),
            "round {round}: {outcomes:?}"
        );
        let g = shown(&dirs[1], &daemons[1], &glass);
        assert_eq!(g["state"], "active", "round {round}: {g}");
        assert_eq!(approvers(&g), ["bob", "carol"], "round {round}: {g}");
        let mut counted: Vec<u64> = audited(&dirs[0], &daemons[0], "approve", &glass)
            .iter()
            .map(|r| r["detail"]["approvals"].as_u64().unwrap())
            .collect();
        counted.sort_unstable();
        assert_eq!(counted, [1, 2], "round {round}");
        assert_eq!(
            audited(&dirs[0], &daemons[0], "grant", &glass).len(),
            1,
            "round {round}: activated once"
        );
        // Revoking operate takes the break-glass grant that climbed from it along.
        run_ok(&mut daemons[round % 2].cmd(
            &dirs[round % 2],
            CAROL,
            &["revoke", "--grant", &operate, "--reason", "next round"],
        ));
        let g = shown(&dirs[1], &daemons[1], &glass);
        assert_eq!(g["state"], "revoked", "round {round}: {g}");
    }
    one_chain(&dirs, &daemons, &[]);
}

/// Waits for the live session `child` to end; how long it took since `since`.
fn ended_within(child: Child, since: Instant, why: &str) -> Duration {
    let out = child.wait_with_output().unwrap();
    let took = since.elapsed();
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(255), "{both}");
    assert!(both.contains(&format!("ramp-ca: {why}\r\n")), "{both}");
    took
}

#[test]
fn a_revocation_on_one_node_ends_a_live_session_on_another_within_a_second() {
    // Three nodes: alice signs on A, bob approves on C, alice logs in through B (the rig's
    // daemon, with the target), carol revokes on A.
    let rig = rig_on_postgres();
    let a_dir = rig.dir.another_node();
    let a = named(&a_dir, 1);
    let c_dir = rig.dir.another_node();
    let c = named(&c_dir, 2);
    run_ok(&mut a.cmd(&a_dir, ALICE, &crate::observe("INC-4", &[])));
    let asked = json(&run_ok(&mut a.cmd(
        &a_dir,
        ALICE,
        &crate::ask("operate", "INC-4"),
    )));
    let grant = asked["grant"]["id"].as_str().unwrap().to_string();
    // sign --wait on A is woken by the approval on C.
    let waiting = spawn(a.cmd(&a_dir, ALICE, &["sign", "--grant", &grant, "--wait"]));
    std::thread::sleep(Duration::from_millis(500));
    let approved_at = Instant::now();
    run_ok(&mut c.cmd(&c_dir, BOB, &["approve", &grant]));
    let (ok, _, err) = finish(waiting);
    assert!(ok, "{err}");
    let woken = approved_at.elapsed();
    assert!(woken < Duration::from_secs(5), "sign --wait took {woken:?}");
    std::fs::copy(
        a_dir.join(format!("{ALICE}-cert.pub")),
        rig.dir.join(format!("{ALICE}-cert.pub")),
    )
    .unwrap();
    let child = sleeper_as(&rig, "dbadmin@db-1");
    let since = Instant::now();
    run_ok(&mut a.cmd(
        &a_dir,
        CAROL,
        &["revoke", "--grant", &grant, "--reason", "t"],
    ));
    let took = ended_within(
        child,
        since,
        "access to db-1 ended: carol revoked the grant: t",
    );
    // Counted from the start of `ramp-ca revoke` (the command itself takes part of it). The
    // watchdog's periodic re-check (every 5 s) is the backstop; this is the notification.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    eprintln!("grant revoked on node A: the session on node B ended within {took:?}");

    // A serial alone, revoked on A, ends the session of that certificate on B.
    let observe = rig.observe("INC-4", &[]);
    let serial = observe["serial"].as_u64().unwrap().to_string();
    let child = sleeper_as(&rig, "readonly@db-1");
    let since = Instant::now();
    run_ok(&mut a.cmd(
        &a_dir,
        CAROL,
        &["revoke", "--serial", &serial, "--reason", "t"],
    ));
    let took = ended_within(
        child,
        since,
        &format!("access to db-1 ended: certificate serial {serial} was revoked"),
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    eprintln!("serial revoked on node A: the session on node B ended within {took:?}");

    // Both sessions' ends are in the shared ledger (B's recorder writes them at its next
    // flush): A lists them, and the chain verifies from either node (A checks the seals
    // only: the recordings are B's files).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = json(&run_ok(&mut a.cmd(
            &a_dir,
            BOB,
            &["sessions", "list", "--json"],
        )));
        let states: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        if states == ["ended", "ended"] {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_b = run_ok(&mut rig.ramp(BOB, &["audit", "verify"]));
    assert!(
        on_b.contains("recordings intact: 2 finished sessions"),
        "{on_b}"
    );
    for (dir, d) in [(&a_dir, &a), (&c_dir, &c)] {
        let out = run_ok(&mut d.cmd(dir, BOB, &["audit", "verify", "--skip-recordings"]));
        assert_eq!(out.lines().next(), on_b.lines().next(), "{out}\n{on_b}");
    }
    // The KRL is byte for byte the same from every node.
    let krl = |dir: &TestDir, d: &Daemon| {
        let out = dir.join("revoked.krl");
        run_ok(&mut d.cmd(dir, CAROL, &["krl", "--out", out.to_str().unwrap()]));
        std::fs::read(out).unwrap()
    };
    let from_b = krl(&rig.dir, &rig.daemon);
    assert_eq!(krl(&a_dir, &a), from_b);
    assert_eq!(krl(&c_dir, &c), from_b);
}
