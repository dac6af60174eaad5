//! The audit chain: intact after real use, and any edit or removal is found and named.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use ramp_ca::store::Store;

use crate::support::{ramp, run_err, run_ok, TestDir};
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
    crate::support::on_disk(&store);
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

/// What someone who can write the ledger (but not `keys/`) does: changes record `seq`,
/// re-hashes it and every record after it, and moves the chain's head along, so the chain's
/// own hashes say nothing is wrong.
fn rewrite_and_rehash(store: &Store, seq: u64) {
    let audit = store.raw_audit_tree();
    let mut prev = store.audit_record(seq - 1).unwrap().unwrap().hash;
    for mut r in store
        .audit_upto(u64::MAX)
        .unwrap()
        .into_iter()
        .skip(seq as usize - 1)
    {
        if r.seq == seq {
            r.actor = "mallory".into();
        }
        r.prev = prev;
        r.hash = ramp_ca::domain::audit::chain_hash(&r);
        prev = r.hash.clone();
        audit
            .insert(key(r.seq), serde_json::to_vec(&r).unwrap())
            .unwrap();
    }
    let head = serde_json::json!({"seq": store.audit_len().unwrap(), "hash": prev});
    store
        .raw_meta_tree()
        .insert("audit_head", serde_json::to_vec(&head).unwrap())
        .unwrap();
}

/// `ssh-keygen -Y verify` on a checkpoint file: the five signed lines on stdin, the
/// armored signature beside them, the audit-signer in allowed_signers.
fn ssh_keygen_verifies(dir: &TestDir, checkpoint: &str) -> bool {
    let (message, signature) = checkpoint
        .split_once("-----BEGIN SSH SIGNATURE-----")
        .unwrap();
    let sig = dir.write(
        "cp.sig",
        format!("-----BEGIN SSH SIGNATURE-----{signature}"),
    );
    let key = dir.read("keys/audit-signer.pub");
    let allowed = dir.write(
        "allowed_signers",
        format!("ramp-ca-audit namespaces=\"ramp-ca-audit\" {key}"),
    );
    let mut child = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-I",
            "ramp-ca-audit",
            "-n",
            "ramp-ca-audit",
            "-f",
        ])
        .arg(&allowed)
        .arg("-s")
        .arg(&sig)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

/// Issue 9 §8: the chain's hashes are public and unkeyed, so a ledger rewritten and
/// re-hashed passed `audit verify`. It still does (the hashes cannot tell), but not against
/// a checkpoint signed before the rewrite.
#[test]
fn a_rewritten_and_rehashed_chain_passes_plain_verify_but_not_a_checkpoint_kept_before() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    // An installation from before checkpoints: serve makes the key.
    for f in ["keys/audit-signer", "keys/audit-signer.pub"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let daemon = Daemon::start(&dir);
    let mode = std::fs::metadata(dir.join("keys/audit-signer"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe("INC-9", &[])));
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::ask("operate", "INC-9")));
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["audit", "checkpoint"]));
    assert!(err.contains("takes ramp-admin or ramp-auditor"), "{err}");

    let kept = dir.join("kept.checkpoint");
    let out = run_ok(&mut daemon.cmd(
        &dir,
        BOB,
        &["audit", "checkpoint", "--out", kept.to_str().unwrap()],
    ));
    let text = dir.read("kept.checkpoint");
    let seq: u64 = text.lines().nth(1).unwrap()["seq: ".len()..]
        .parse()
        .unwrap();
    assert!(seq >= 4, "{text}");
    assert!(
        out.contains(&format!("record {seq} signed by SHA256:")),
        "{out}"
    );
    assert!(
        ssh_keygen_verifies(&dir, &text),
        "stock ssh-keygen accepts it:\n{text}"
    );
    assert_eq!(
        dir.read(format!("data/checkpoints/{seq:012}.checkpoint")),
        text,
        "the daemon keeps what it signs"
    );
    let out = run_ok(&mut daemon.cmd(
        &dir,
        BOB,
        &["audit", "verify", "--checkpoint", kept.to_str().unwrap()],
    ));
    assert!(out.contains("audit chain intact"), "{out}");
    assert!(
        out.contains(&format!("record {seq} matches")) && out.contains("pin it with --signer"),
        "{out}"
    );
    // A checkpoint signed by another key is refused, naming both keys.
    let head = ramp_ca::checkpoint::Signed::parse_all(&text).unwrap()[0]
        .checkpoint
        .head();
    let other = russh::keys::ssh_key::PrivateKey::random(
        &mut rand::rng(),
        russh::keys::ssh_key::Algorithm::Ed25519,
    )
    .unwrap();
    let forged = ramp_ca::checkpoint::Signed::sign(&other, &head, chrono::Utc::now()).unwrap();
    let forged_path = dir.write("forged.checkpoint", forged.text());
    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        BOB,
        &[
            "audit",
            "verify",
            "--checkpoint",
            forged_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "checkpoint {} (record {seq}) is refused",
            forged_path.display()
        )) && err.contains("not by the audit-signer key"),
        "{err}"
    );
    run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "request",
            "--contract",
            "prod-db",
            "--step",
            "operate",
            "--reason",
            "INC-10",
        ],
    ));
    assert!(daemon.stop().success());

    let store = Store::open(&dir.join("data")).unwrap();
    rewrite_and_rehash(&store, 2);
    crate::support::on_disk(&store);
    drop(store);

    let daemon = Daemon::start(&dir);
    let log = daemon.log();
    assert!(!log.contains("AUDIT CHAIN BROKEN"), "{log}");
    // The checkpoint it kept at stop tells the daemon itself.
    assert!(log.contains("AUDIT CHAIN REWRITTEN"), "{log}");
    // Honestly: the hashes alone cannot tell.
    let out = run_ok(&mut daemon.cmd(&dir, BOB, &["audit", "verify"]));
    assert!(out.contains("audit chain intact"), "{out}");
    let signer = dir.join("keys/audit-signer.pub");
    let (code, err) = run_err(&mut daemon.cmd(
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
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("does not match its checkpoints at record {seq}"))
            && err.contains(&format!("the chain up to record {seq} was rewritten")),
        "{err}"
    );
    // The kept checkpoints bound the rewrite: the stop's checkpoint fails too, naming its record.
    let (_, err) = run_err(&mut daemon.cmd(
        &dir,
        BOB,
        &[
            "audit",
            "verify",
            "--checkpoint",
            dir.join("data/checkpoints").to_str().unwrap(),
        ],
    ));
    assert!(err.contains(&format!("at record {seq}")), "{err}");
    // Nor does the service sign over the rewrite.
    let (code, err) = run_err(&mut daemon.cmd(&dir, BOB, &["audit", "checkpoint"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("does not run on from its last checkpoint"),
        "{err}"
    );
}
