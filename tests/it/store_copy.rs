//! `ramp-ca store copy`: an embedded installation with real activity (requests, an
//! approval, certificates, a session through the bastion with its recording, a revocation,
//! a checkpoint) moved into a fresh PostgreSQL database, whatever `RAMP_TEST_STORE` says;
//! then `serve --store` on the copy answers as the original did.

use std::process::Stdio;

use ramp_ca::store::SledLedger;

use crate::postgres::Sql;
use crate::rig::rig_with;
use crate::stores::TestDb;
use crate::support::{ramp, run_err, run_ok, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

/// What the same command prints on the original and on the copy, as JSON.
fn listed(d: &Daemon, dir: &TestDir, key: &str, args: &[&str]) -> serde_json::Value {
    json(&run_ok(&mut d.cmd(dir, key, args)))
}

/// The highest serial issued so far (the subjects of `issue` records).
fn max_serial(d: &Daemon, dir: &TestDir) -> u64 {
    listed(d, dir, CAROL, &["audit", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "issue")
        .filter_map(|r| r["subject"].as_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn store_copy_moves_a_sled_installation_into_postgresql() {
    let rig = rig_with(&["--store", "sled"]);
    rig.observe("INC-77", &[]);
    let asked = json(&run_ok(
        &mut rig.ramp(ALICE, &crate::ask("operate", "INC-77")),
    ));
    let grant = asked["grant"]["id"].as_str().unwrap().to_string();
    run_ok(&mut rig.ramp(BOB, &["approve", &grant]));
    run_ok(&mut rig.ramp(ALICE, &["sign", "--grant", &grant]));
    let out = rig
        .ssh(ALICE, "readonly@db-1", &["echo", "copied-session-output"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("copied-session-output"),
        "{out:?}"
    );
    rig.wait_sessions("the session's end", |l| {
        l.len() == 1 && l[0]["state"] == "ended"
    });
    run_ok(&mut rig.ramp(CAROL, &["revoke", "--grant", &grant, "--reason", "done"]));
    run_ok(&mut rig.ramp(BOB, &["audit", "checkpoint"]));
    let (d, dir) = (&rig.daemon, &rig.dir);
    let grants = listed(d, dir, CAROL, &["grants", "--all", "--json"]);
    let sessions = listed(d, dir, BOB, &["sessions", "list", "--json"]);
    let session = sessions[0]["id"].as_str().unwrap().to_string();
    let highest = max_serial(d, dir);
    assert!(highest >= 2, "{highest}");
    let crate::rig::Rig {
        dir,
        daemon,
        target: _target,
    } = rig;
    daemon.stop();

    let db = TestDb::create();
    let copied = run_ok(ramp(&dir).args(["store", "copy", "--to", &db.url]));
    for line in [
        "grants        2",
        "certificates  ",
        "sessions      1",
        "checkpoints   ",
        "revocations   1",
        "audit chain   intact in PostgreSQL (",
    ] {
        assert!(copied.contains(line), "{line}: {copied}");
    }

    // The chain is byte for byte sled's, and the head is sled's head.
    {
        let sled = SledLedger::open(&dir.join("data"), Default::default()).unwrap();
        let sql = Sql::connect(&db.url);
        let copied = sql.column("SELECT record::text FROM audit ORDER BY seq");
        let original: Vec<String> = sled
            .raw_audit_tree()
            .iter()
            .values()
            .map(|v| String::from_utf8(v.unwrap().to_vec()).unwrap())
            .collect();
        assert!(original.len() > 10, "{}", original.len());
        assert_eq!(copied, original);
        let head = sql.column("SELECT seq::text || ' ' || hash FROM audit_head");
        let last: serde_json::Value = serde_json::from_str(original.last().unwrap()).unwrap();
        assert_eq!(
            head,
            [format!(
                "{} {}",
                last["seq"],
                last["hash"].as_str().unwrap()
            )]
        );
    }

    // serve on the copy: the same grants and sessions, the chain and the recording verify,
    // the recording plays, and the next serial is above every copied one.
    let on_pg = Daemon::start_with(&dir, &["--store", &db.url]);
    let verified = run_ok(&mut on_pg.cmd(&dir, BOB, &["audit", "verify"]));
    assert!(verified.starts_with("audit chain intact: "), "{verified}");
    assert!(
        verified.contains("recordings intact: 1 finished session"),
        "{verified}"
    );
    assert_eq!(
        listed(&on_pg, &dir, CAROL, &["grants", "--all", "--json"]),
        grants
    );
    assert_eq!(
        listed(&on_pg, &dir, BOB, &["sessions", "list", "--json"]),
        sessions
    );
    let shown = run_ok(&mut on_pg.cmd(&dir, BOB, &["sessions", "export", &session]));
    assert!(shown.contains("copied-session-output"), "{shown}");
    let next = json(&run_ok(&mut on_pg.cmd(
        &dir,
        ALICE,
        &[&crate::observe("INC-78", &["--json"])[..]].concat(),
    )));
    assert!(
        next["serial"].as_u64().unwrap() > highest,
        "{next} after {highest}"
    );
    on_pg.stop();

    // Into a ledger that holds anything: refused, naming what it holds, nothing changed.
    let audit_len = Sql::connect(&db.url).column("SELECT count(*)::text FROM audit");
    let (code, err) = run_err(ramp(&dir).args(["store", "copy", "--to", &db.url]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not empty (it holds 2 grants, "), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        Sql::connect(&db.url).column("SELECT count(*)::text FROM audit"),
        audit_len
    );

    // A record the source cannot read, past the grants and certificates already written:
    // named, and the target is left as it was (one transaction).
    {
        let sled = SledLedger::open(&dir.join("data"), Default::default()).unwrap();
        sled.raw_audit_tree()
            .insert(u64::MAX.to_be_bytes(), &b"{not json"[..])
            .unwrap();
        sled.raw_audit_tree().flush().unwrap();
    }
    let fresh = TestDb::create();
    let (code, err) = run_err(ramp(&dir).args(["store", "copy", "--to", &fresh.url]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("corrupt record in `audit`"), "{err}");
    let sql = Sql::connect(&fresh.url);
    for table in ["grants", "certs", "revoked", "audit", "nonces"] {
        let n = sql.column(&format!("SELECT count(*)::text FROM {table}"));
        assert_eq!(n, ["0"], "{table}");
    }
    assert_eq!(sql.column("SELECT seq::text FROM audit_head"), ["0"]);
}

#[test]
fn store_copy_says_what_is_wrong_with_its_urls() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init"]));
    let check = |args: &[&str], code: i32, says: &str| {
        let mut all = vec!["store", "copy"];
        all.extend_from_slice(args);
        let (got, err) = run_err(ramp(&dir).args(&all));
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    check(
        &["--to", "garbage"],
        2,
        "store copy writes into PostgreSQL (postgres://USER@HOST:PORT/DB)",
    );
    check(&["--to", "postgres://ramp:secret@/db"], 1, "names no host");
    check(
        &[
            "--from",
            "mysql://u:p@h/db",
            "--to",
            "postgres://ramp@127.0.0.1/x",
        ],
        2,
        "copying from mysql is not supported",
    );
    check(
        &[
            "--from",
            "sled:///no/such/dir",
            "--to",
            "postgres://ramp@127.0.0.1/x",
        ],
        2,
        "no sled ledger there",
    );
    // A server that is not there: named, without the password.
    check(
        &[
            "--to",
            "postgres://ramp:secret@127.0.0.1:1/x?connect_timeout=2",
        ],
        1,
        "cannot connect to PostgreSQL at 127.0.0.1:1/x",
    );
    let (_, err) = run_err(ramp(&dir).args([
        "store",
        "copy",
        "--to",
        "postgres://ramp:secret@127.0.0.1:1/x",
    ]));
    assert!(!err.contains("secret"), "{err}");
}
