//! The audit chain: intact after real use, and any edit or removal is found and named.

use ramp_ca::store::Store;

use crate::support::{run_err, run_ok};
use crate::{setup, Daemon, ALICE, BOB};

/// Runs a few audited actions, stops the daemon, lets `tamper` edit the stored chain
/// through the library, restarts, and returns `audit verify`'s complaint.
fn verify_after(tamper: impl FnOnce(&sled::Tree)) -> String {
    let (dir, daemon) = setup();
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe("INC-9", &[])));
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::ask("operate", "INC-9")));
    let out = run_ok(&mut daemon.cmd(&dir, BOB, &["audit", "verify"]));
    assert!(out.contains("audit chain intact"), "{out}");
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["audit", "verify"]));
    assert!(err.contains("takes ramp-admin or ramp-auditor"), "{err}");
    let listed = run_ok(&mut daemon.cmd(&dir, BOB, &["audit", "list", "--since", "1h"]));
    for action in ["request", "grant", "issue"] {
        assert!(
            listed.contains(&format!(" {action} ")),
            "{action} missing:\n{listed}"
        );
    }
    assert!(daemon.stop().success());

    let store = Store::open(&dir.join("data")).unwrap();
    tamper(store.raw_audit_tree());
    store.flush().unwrap();
    drop(store);

    let daemon = Daemon::start(&dir);
    assert!(
        daemon.log().contains("AUDIT CHAIN BROKEN"),
        "{}",
        daemon.log()
    );
    let (code, err) = run_err(&mut daemon.cmd(&dir, BOB, &["audit", "verify"]));
    assert_eq!(code, 1);
    err
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[test]
fn an_edited_record_is_named() {
    let err = verify_after(|audit| {
        let raw = audit.get(key(3)).unwrap().unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        record["actor"] = "mallory".into();
        audit
            .insert(key(3), serde_json::to_vec(&record).unwrap())
            .unwrap();
    });
    assert!(
        err.contains("audit chain broken at record 3: record 3 was altered"),
        "{err}"
    );
}

#[test]
fn a_removed_record_is_named() {
    let err = verify_after(|audit| {
        audit.remove(key(2)).unwrap();
    });
    assert!(
        err.contains("audit chain broken at record 2: record 2 is missing"),
        "{err}"
    );
}

#[test]
fn removing_the_newest_records_is_noticed() {
    let err = verify_after(|audit| {
        let (last, _) = audit.last().unwrap().unwrap();
        audit.remove(last).unwrap();
    });
    assert!(err.contains("the newest were removed"), "{err}");
}
