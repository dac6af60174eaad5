//! What the person at the keyboard learns from a refused login (issue 12): the reason and a
//! hint, shown by the real OpenSSH client, only when the attempt proved a key this CA knows;
//! and a certificate of ours standing in for its sibling that covers the login.

use std::process::Output;

use crate::rig::{rig, Rig};
use crate::support::{keygen, run_ok};
use crate::ALICE;

/// The OpenSSH client as a person runs it: interactive methods allowed, INFO messages shown.
fn as_a_person(rig: &Rig, identity: &str, login: &str) -> Output {
    let opts = ["-o", "BatchMode=no", "-o", "LogLevel=INFO"].map(String::from);
    rig.ssh_with(identity, &opts, login, &["whoami"])
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// prod-web's first step, on web-1 (the test target's sshd, its host key pinned).
fn with_prod_web(rig: &Rig) {
    rig.dir.write(
        "policies/prod-web.yaml",
        "contract: prod-web\ntargets: {labels: {role: web}}\nrequesters: [sre]\nreason: optional\nsteps:\n  - name: logs\n    principals: [readonly]\n    max_ttl: 1h\n",
    );
    let key = rig.dir.read("target_host_key.pub");
    let hosts = rig.dir.read("policies/hosts.yaml").replace(
        "labels: {role: web}\n",
        &format!("labels: {{role: web}}\n    host_key: \"{}\"\n", key.trim()),
    );
    rig.dir.write("policies/hosts.yaml", hosts);
    rig.reload();
}

#[test]
fn a_refused_login_tells_its_reason_and_next_step_to_holders_of_our_keys_only() {
    let rig = rig();
    with_prod_web(&rig);
    let grant = rig.observe("INC-3", &[]);
    let grant = grant["grant"]["id"].as_str().unwrap().to_string();

    let out = as_a_person(&rig, ALICE, "readonly@web-1");
    assert!(!out.status.success());
    let told = stderr(&out);
    assert!(
        told.contains(&format!(
            "ramp-ca refused this login: contract `prod-db` of grant {grant} does not cover target `web-1`"
        )),
        "{told}"
    );
    assert!(
        told.contains("hint: `web-1` is covered by: ramp-ca sign prod-web logs"),
        "{told}"
    );

    // A target nobody knows.
    let told = stderr(&as_a_person(&rig, ALICE, "readonly@nowhere"));
    assert!(
        told.contains("unknown target `nowhere`: not in hosts.yaml"),
        "{told}"
    );
    assert!(
        told.contains("hint: the bastion knows the targets in hosts.yaml"),
        "{told}"
    );

    // alice's registered key alone: she is told to sign.
    std::fs::create_dir(rig.dir.join("bare")).unwrap();
    std::fs::copy(rig.dir.join(ALICE), rig.dir.join("bare/alice")).unwrap();
    let told = stderr(&as_a_person(&rig, "bare/alice", "readonly@db-1"));
    assert!(
        told.contains("is not accepted: sign in with a ramp-ca certificate"),
        "{told}"
    );
    assert!(told.contains("ramp-ca sign prod-db observe"), "{told}");

    // A stranger learns nothing: the usual refusal, no reason, no host names.
    keygen(rig.dir.path(), "stranger");
    let out = as_a_person(&rig, "stranger", "readonly@db-1");
    assert!(!out.status.success());
    let told = stderr(&out);
    assert!(!told.contains("ramp-ca"), "{told}");
    assert!(
        !told.contains("db-1 is") && !told.contains("hint"),
        "{told}"
    );
    assert!(told.contains("Permission denied (publickey)"), "{told}");

    // After a revoke, the holder reads that it was revoked.
    run_ok(&mut rig.ramp(
        crate::CAROL,
        &["revoke", "--grant", &grant, "--reason", "done"],
    ));
    let told = stderr(&as_a_person(&rig, ALICE, "readonly@db-1"));
    assert!(told.contains("ramp-ca refused this login: "), "{told}");
    assert!(told.contains("revoked"), "{told}");
}

#[test]
fn a_certificate_of_ours_stands_in_for_its_sibling_that_covers_the_login() {
    let rig = rig();
    with_prod_web(&rig);
    let db = rig.observe("INC-4", &[]);
    let web = rig.sign(ALICE, &["--contract", "prod-web"]);
    let (db_serial, web_serial) = (
        db["serial"].as_u64().unwrap(),
        web["serial"].as_u64().unwrap(),
    );
    // Only the prod-web certificate beside the key: it proves alice's key, and her prod-db
    // certificate for that key covers db-1.
    std::fs::create_dir(rig.dir.join("web-only")).unwrap();
    std::fs::copy(rig.dir.join(ALICE), rig.dir.join("web-only/alice")).unwrap();
    let web_cert = rig.dir.join(format!("{ALICE}-prod-web-logs-cert.pub"));
    std::fs::copy(&web_cert, rig.dir.join("web-only/alice-cert.pub")).unwrap();
    let out = run_ok(&mut rig.ssh("web-only/alice", "readonly@db-1", &["whoami"]));
    assert_eq!(out, "readonly\n");
    let logins = rig.audited("login");
    let last = logins.last().unwrap();
    assert_eq!(last["detail"]["serial"], db_serial, "{last:#}");
    assert_ne!(db_serial, web_serial);

    // Once the prod-db grant is revoked, nothing stands in for it.
    let grant = db["grant"]["id"].as_str().unwrap();
    run_ok(&mut rig.ramp(
        crate::CAROL,
        &["revoke", "--grant", grant, "--reason", "done"],
    ));
    let out = rig
        .ssh("web-only/alice", "readonly@db-1", &["whoami"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    // A principal no grant of hers has stays refused.
    let out = rig
        .ssh("web-only/alice", "dbadmin@web-1", &["whoami"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
}
