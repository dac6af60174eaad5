//! `init`, key file rules, `policy check` and `policy explain`.

use std::os::unix::fs::PermissionsExt;

use crate::support::{ramp, run_err, run_ok, TestDir};

fn mode(dir: &TestDir, rel: &str) -> u32 {
    std::fs::metadata(dir.join(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_creates_private_keys_and_never_overwrites_one() {
    let dir = TestDir::new();
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    for key in [
        "user-ca",
        "node-ca",
        "host-ca",
        "bastion_host_ed25519",
        "audit-signer",
    ] {
        assert_eq!(mode(&dir, &format!("keys/{key}")), 0o600, "{key}");
        assert!(dir.join(format!("keys/{key}.pub")).exists(), "{key}.pub");
        assert!(out.contains(&format!("keys/{key}")), "{out}");
    }
    let cert = run_ok(
        std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(dir.join("keys/bastion_host_ed25519-cert.pub")),
    );
    assert!(cert.contains("host certificate"), "{cert}");
    for file in ["people.yaml", "hosts.yaml", "prod-db.yaml", "prod-web.yaml"] {
        assert!(dir.join("policies").join(file).exists(), "{file}");
    }
    let contract = dir.read("policies/prod-db.yaml");
    assert_eq!(contract.matches("- name:").count(), 3, "three steps");
    assert!(contract.contains("approvals"));

    let before: Vec<String> = ["user-ca", "node-ca", "host-ca"]
        .iter()
        .map(|k| dir.read(format!("keys/{k}")))
        .collect();
    std::fs::remove_file(dir.join("keys/node-ca")).unwrap();
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    assert!(
        out.contains("keys/node-ca"),
        "recreates only the missing key: {out}"
    );
    assert!(!out.contains("keys/user-ca"), "{out}");
    assert_eq!(dir.read("keys/user-ca"), before[0], "user-ca untouched");
    assert_eq!(dir.read("keys/host-ca"), before[2], "host-ca untouched");
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    assert!(out.contains("nothing changed"), "{out}");
}

/// Regression: `init` (and so every `serve`) wrote each example policy file that was
/// missing, so a contract an admin deleted to retire it granted access again after a restart.
#[test]
fn a_retired_contract_stays_retired_after_init_and_serve() {
    let dir = TestDir::new();
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    assert!(out.contains("wrote example policies into"), "{out}");
    assert_eq!(mode(&dir, "data"), 0o700, "the ledger is the owner's only");
    std::fs::remove_file(dir.join("policies/prod-db.yaml")).unwrap();
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    assert!(
        out.contains("holds a policy set: left as it is"),
        "init says why it wrote no example: {out}"
    );
    assert!(
        !dir.join("policies/prod-db.yaml").exists(),
        "init brought it back"
    );
    let daemon = crate::Daemon::start(&dir);
    assert!(
        !dir.join("policies/prod-db.yaml").exists(),
        "serve brought it back"
    );
    let (code, err) = run_err(&mut daemon.cmd(&dir, crate::ALICE, &crate::observe("INC-1", &[])));
    assert_eq!(code, 1);
    assert!(err.contains("no contract named `prod-db`"), "{err}");
    drop(daemon);
    // An empty policies directory is a new installation.
    for f in std::fs::read_dir(dir.join("policies")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let out = run_ok(ramp(&dir).args(["init", "--demo"]));
    assert!(dir.join("policies/prod-db.yaml").exists(), "{out}");
}

/// Issue 12: `serve` in an empty directory made demo users, one an admin whose private key
/// lay on disk. Demo identities now come only with `--demo`; a production start makes keys and
/// example policies, registers nobody, and says how to add people.
#[test]
fn a_plain_init_registers_nobody_and_says_how_to_add_people() {
    let dir = TestDir::new();
    let out = run_ok(ramp(&dir).arg("init"));
    assert!(
        !dir.join("demo").exists(),
        "demo identities without --demo: {out}"
    );
    assert!(
        out.contains("nobody is registered yet: add each person to"),
        "{out}"
    );
    let people = dir.read("policies/people.yaml");
    assert!(people.contains("users: {}"), "{people}");
    let check = run_ok(ramp(&dir).args(["policy", "check"]));
    assert!(check.contains("ok (0 users"), "{check}");
    // serve does the same on a fresh directory, and says so in its log.
    let fresh = TestDir::new();
    let daemon = crate::Daemon::start_with(&fresh, &[]);
    assert!(!fresh.join("demo").exists());
    assert!(
        daemon.log().contains("nobody is registered yet"),
        "{}",
        daemon.log()
    );
    drop(daemon);
    // --demo makes the three demo identities, keys owner-only.
    let demo = TestDir::new();
    let out = run_ok(ramp(&demo).args(["init", "--demo"]));
    for name in ["alice", "bob", "carol"] {
        assert!(out.contains(&format!("registered {name} (demo")), "{out}");
        assert_eq!(mode(&demo, &format!("demo/{name}/id_ed25519")), 0o600);
    }
}

#[test]
fn a_ca_key_readable_by_others_is_refused() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    std::fs::set_permissions(
        dir.join("keys/user-ca"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = run_err(ramp(&dir).args(["serve", "--api", "127.0.0.1:0"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("keys/user-ca: permissions 0644 are too open"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn policy_check_reports_every_problem_with_its_position() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let out = run_ok(ramp(&dir).args(["policy", "check"]));
    assert!(out.contains("ok (3 users, 3 hosts, 2 contracts)"), "{out}");

    dir.write(
        "policies/bad.yaml",
        "contract: prod-db\nrequesters: [sre, dba]\ntargets: {names: [\"cache-*\"]}\ncolour: blue\nsteps:\n  - name: a\n    principals: []\n    max_ttl: 5 minutes\n  - name: b\n    after: c\n    principals: [\"x y\", \"root,admin\"]\n    max_ttl: 3d\n    options: {source_address: [10.0.0.0/40]}\n",
    );
    let (code, err) = run_err(ramp(&dir).args(["policy", "check"]));
    assert_eq!(code, 1);
    let expected = [
        "bad.yaml:4:1: unknown key `colour`",
        "bad.yaml:2:19: contract `prod-db` requesters: unknown role `dba`",
        "bad.yaml:3:19: contract `prod-db`: unknown target `cache-*`",
        "bad.yaml:7:17: contract `prod-db` step `a` principals must not be empty",
        "bad.yaml:8:14: contract `prod-db` step `a` max_ttl: bad duration `5 minutes`",
        "bad.yaml:11:18: contract `prod-db` step `b` principal \"x y\" contains whitespace",
        "bad.yaml:11:25: contract `prod-db` step `b` principal \"root,admin\" contains `,`",
        "bad.yaml:12:14: contract `prod-db` step `b` max_ttl 3d is above the contract's limit 1d",
        "bad.yaml:13:32: contract `prod-db` step `b` options: invalid CIDR `10.0.0.0/40`",
        "bad.yaml:10:12: contract `prod-db` step `b`: after `c` names no step",
        "prod-db.yaml:2:11: duplicate contract name `prod-db`",
    ];
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    assert!(err.contains("11 problem(s) found"), "{err}");

    dir.write("policies/bad.yaml", "contract: x\nsteps: [\n");
    let (code, err) = run_err(ramp(&dir).args(["policy", "check"]));
    assert_eq!(code, 1);
    assert!(err.contains("policies/bad.yaml:3:1: invalid YAML"), "{err}");
}

#[test]
fn policy_explain_gives_the_decision_and_the_reasons() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let explain = |args: &[&str]| {
        let mut cmd = ramp(&dir);
        cmd.args(["policy", "explain", "--contract", "prod-db"])
            .args(args);
        cmd
    };
    let out = run_ok(&mut explain(&[
        "--user", "alice", "--step", "observe", "--reason", "INC-1",
    ]));
    assert!(out.starts_with("GRANT prod-db/observe for 30m"), "{out}");
    assert!(out.contains("holds role `sre`"), "{out}");

    let (code, err) = run_err(&mut explain(&["--user", "alice", "--step", "operate"]));
    assert_eq!(code, 1, "{err}");
    let out = run_ok(&mut explain(&[
        "--user",
        "alice",
        "--step",
        "operate",
        "--holding",
        "observe",
    ]));
    assert!(
        out.starts_with("NEEDS APPROVAL prod-db/operate for 2h: 1 from sre-lead"),
        "{out}"
    );
    let out = String::from_utf8(
        explain(&["--user", "bob", "--step", "observe"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        out.starts_with("DENY: `bob` holds none of the roles"),
        "{out}"
    );
}

/// Issue 14: a contract's `reason` may name a form (`{required, pattern, example}`); a reason
/// of another form is refused with the pattern and the example, by the daemon and by
/// `policy explain`, and a bad pattern is named where it is.
#[test]
fn a_reason_of_the_wrong_form_is_refused_with_the_pattern_and_an_example() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let contract = dir.read("policies/prod-db.yaml").replace(
        "reason: required",
        "reason: {required: true, pattern: '^INC-[0-9]+', example: INC-1234}",
    );
    dir.write("policies/prod-db.yaml", &contract);
    let explain = |reason: &str| {
        ramp(&dir)
            .args([
                "policy",
                "explain",
                "--user",
                "alice",
                "--contract",
                "prod-db",
            ])
            .args(["--step", "observe", "--reason", reason])
            .output()
            .unwrap()
    };
    let refused = explain("see slack");
    assert_eq!(refused.status.code(), Some(1));
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(
        text.contains("form `^INC-[0-9]+`; for example: INC-1234"),
        "{text}"
    );
    assert!(explain("INC-77 disk").status.success());

    let daemon = crate::Daemon::start(&dir);
    let (code, err) =
        run_err(&mut daemon.cmd(&dir, crate::ALICE, &crate::observe("see slack", &[])));
    assert_eq!(code, 1);
    assert!(err.contains("for example: INC-1234"), "{err}");
    run_ok(&mut daemon.cmd(&dir, crate::ALICE, &crate::observe("INC-77", &[])));
    drop(daemon);

    dir.write(
        "policies/prod-db.yaml",
        contract.replace("'^INC-[0-9]+'", "'^INC-[0-9'"),
    );
    let (code, err) = run_err(ramp(&dir).args(["policy", "check"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("prod-db.yaml:")
            && err.contains("reason.pattern `^INC-[0-9` is not a regular expression"),
        "{err}"
    );
}

/// Issue 14: a step's approvals may name rules (`auto:`) that approve a matching request at
/// once; the audit chain names the rule, `policy explain` says which would fire, and a
/// request no rule matches waits for people as before.
#[test]
fn a_request_matching_an_approval_rule_is_approved_at_once_and_the_chain_names_the_rule() {
    let dir = TestDir::new();
    run_ok(ramp(&dir).args(["init", "--demo"]));
    let contract = dir.read("policies/prod-db.yaml").replace(
        "approvals: {from: [sre-lead], count: 1}",
        "approvals: {from: [sre-lead], count: 1, auto: [{name: incident, role: sre, reason: '^INC-[0-9]+'}]}",
    );
    assert!(contract.contains("name: incident"), "{contract}");
    dir.write("policies/prod-db.yaml", &contract);
    let explained = run_ok(ramp(&dir).args([
        "policy",
        "explain",
        "--user",
        "alice",
        "--contract",
        "prod-db",
        "--step",
        "operate",
        "--holding",
        "observe",
        "--reason",
        "INC-5 lag",
    ]));
    assert!(
        explained.contains("GRANT prod-db/operate")
            && explained.contains("approved by rule `incident`"),
        "{explained}"
    );
    let daemon = crate::Daemon::start(&dir);
    run_ok(&mut daemon.cmd(&dir, crate::ALICE, &crate::observe("INC-5", &[])));
    let routine = crate::json(&run_ok(&mut daemon.cmd(
        &dir,
        crate::ALICE,
        &crate::ask("operate", "routine check"),
    )));
    assert_eq!(routine["grant"]["state"], "pending", "{routine}");
    let id = routine["grant"]["id"].as_str().unwrap().to_string();
    run_ok(&mut daemon.cmd(
        &dir,
        crate::ALICE,
        &["deny", &id, "--reason", "wrong reason"],
    ));
    let out = crate::json(&run_ok(&mut daemon.cmd(
        &dir,
        crate::ALICE,
        &crate::ask("operate", "INC-5 replica lag"),
    )));
    assert_eq!(out["grant"]["state"], "active", "{out}");
    let audit = crate::json(&run_ok(&mut daemon.cmd(
        &dir,
        crate::BOB,
        &["audit", "list", "--json"],
    )));
    let grant = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "grant" && r["subject"] == out["grant"]["id"])
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        grant["detail"]["by_rule"]
            .as_str()
            .unwrap_or("")
            .contains("rule `incident`"),
        "{grant}"
    );
}
