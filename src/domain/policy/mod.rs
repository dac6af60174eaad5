//! Ramp contracts: YAML -> validated model, and `decide(request, grants, now) -> Decision`.
//!
//! Pure: no sockets, no sled, no clock. The directory is read by `install::load_policies`.

mod decide;
mod extension;
mod load;
mod model;
mod review;
mod window;
pub mod yaml;

pub use decide::{approval_refusal, decide, Decision, Held, Request};
pub use extension::{decide_extension, ExtensionAsk};
pub use load::{load_texts, parse_cidr, Problem, Problems, DEFAULT_CONTRACT_MAX_TTL};
pub use model::*;
pub use review::{
    after_session, keep_words, FlagOn, FlagRule, ReviewRule, ReviewSetting,
    BREAK_GLASS_REVIEW_WITHIN,
};
pub use window::{parse_start, stamp, start_refusal, until, MAX_AHEAD};

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYcaOwKPLzc38ZJT+5UcI79zgqNi/JliP8Q/oexCZVA alice@test";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICIU93D5bexyLVDxCD/i/yEBSAlAzZyAa0S2f3GA3vwV bob@test";

    fn people() -> String {
        format!("users:\n  alice:\n    keys: [\"{ALICE}\"]\n    roles: [sre]\n  bob:\n    keys: [\"{BOB}\"]\n    roles: [sre-lead, ramp-auditor]\n")
    }

    const HOSTS: &str = "hosts:\n  db-1:\n    address: 10.0.3.7:22\n    labels: {env: prod, role: db}\n  web-1:\n    address: web-1.internal\n    labels: {env: prod}\n";

    pub(super) const CONTRACT: &str = "\
contract: prod-db
targets: {names: [\"db-*\"]}
requesters: [sre]
reason: required
steps:
  - name: observe
    principals: [readonly]
    max_ttl: 30m
  - name: operate
    after: observe
    principals: [readonly, dbadmin]
    max_ttl: 2h
    approvals: {from: [sre-lead], count: 1}
    options: {pty: true, source_address: [10.0.0.0/8]}
";

    pub(super) fn load(contract: &str) -> Result<Policies, Problems> {
        load_texts(&[
            (PathBuf::from("p/people.yaml"), people()),
            (PathBuf::from("p/hosts.yaml"), HOSTS.to_string()),
            (PathBuf::from("p/c.yaml"), contract.to_string()),
        ])
    }

    /// [`check`], where a closure named `check` is in scope.
    fn check_problems(contract: &str, expected: &[(usize, usize, &str)]) {
        check(contract, expected)
    }

    /// Loads `contract` and checks the problems reported, as `line:col: message-fragment`.
    pub(super) fn check(contract: &str, expected: &[(usize, usize, &str)]) {
        let got = match load(contract) {
            Ok(_) => Vec::new(),
            Err(Problems(ps)) => ps,
        };
        let rendered: Vec<String> = got.iter().map(|p| p.to_string()).collect();
        assert_eq!(got.len(), expected.len(), "problems: {rendered:#?}");
        for (p, (line, col, frag)) in got.iter().zip(expected) {
            assert_eq!((p.line, p.col), (*line, *col), "{p}");
            assert!(p.message.contains(frag), "{p} should mention {frag:?}");
            assert!(p.to_string().starts_with("p/c.yaml:"), "{p}");
        }
    }

    #[test]
    fn valid_contract_loads() {
        let p = load(CONTRACT).unwrap();
        let c = &p.contracts["prod-db"];
        assert_eq!(c.steps.len(), 2);
        assert!(c.reason.required);
        assert_eq!(c.steps[1].max_ttl, Duration::from_secs(7200));
        assert_eq!(
            c.steps[1].options.source_address[0].to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(p.hosts["web-1"].address, "web-1.internal:22");
        assert_eq!(
            p.targets_of(c).map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["db-1"]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        check(
            &CONTRACT
                .replace("reason: required", "reason: required\nowner: me")
                .replace("max_ttl: 30m", "max_ttl: 30 minutes")
                .replace("[sre-lead]", "[sre-leed]")
                .replace("after: observe", "after: obsrve")
                .replace(
                    "[readonly, dbadmin]",
                    "[\"read only\", \"db,admin\", \"*\"]",
                )
                .replace("10.0.0.0/8", "10.0.0.0/33"),
            &[
                (5, 1, "unknown key `owner`"),
                (9, 14, "bad duration `30 minutes`"),
                (12, 18, "contains whitespace"),
                (12, 31, "contains `,`"),
                (12, 43, "wildcard"),
                (14, 24, "unknown role `sre-leed`"),
                (15, 43, "invalid CIDR `10.0.0.0/33`"),
                (11, 12, "after `obsrve` names no step"),
            ],
        );
    }

    #[test]
    fn structural_problems() {
        check(
            &CONTRACT.replace("[readonly]", "[]"),
            &[(7, 17, "must not be empty")],
        );
        check(
            &CONTRACT.replace("db-*", "cache-*"),
            &[(2, 19, "unknown target `cache-*`")],
        );
        check(
            &CONTRACT.replace("max_ttl: 2h", "max_ttl: 2d"),
            &[(12, 14, "above the contract's limit 1d")],
        );
        check(
            &CONTRACT.replace("[sre]", "[sre, dba]"),
            &[(3, 19, "unknown role `dba`")],
        );
        check(
            &CONTRACT.replace("name: operate", "name: observe"),
            &[(9, 11, "duplicate step name"), (10, 12, "forms a cycle")],
        );
        check(
            &CONTRACT.replace(
                "steps:\n  - name: observe",
                "steps:\n  - name: observe\n    after: operate",
            ),
            &[(7, 12, "forms a cycle"), (11, 12, "forms a cycle")],
        );
        check("contract: x\n  bad: [\n", &[(2, 6, "invalid YAML")]);
    }

    #[test]
    fn options_are_described_for_approvers() {
        let check = |o: CertOptions, want: &[&str]| assert_eq!(o.describe(), want, "{o:?}");
        check(CertOptions::default(), &["pty"]);
        check(
            CertOptions {
                pty: false,
                ..CertOptions::default()
            },
            &[],
        );
        check(
            CertOptions {
                port_forwarding: true,
                x11_forwarding: true,
                source_address: vec!["10.0.0.0/8".parse().unwrap()],
                force_command: Some("journalctl -f".into()),
                ..CertOptions::default()
            },
            &[
                "pty",
                "port forwarding",
                "X11 forwarding",
                "source-address 10.0.0.0/8",
                "force-command `journalctl -f`",
            ],
        );
    }

    /// Issue 14: a step's approvals may name rules that approve a matching request at once.
    #[test]
    fn approval_by_rule() {
        let auto = "approvals: {from: [sre-lead], count: 1, auto: [{name: incident, role: sre, reason: '^INC-[0-9]+'}]}";
        let p = load(&CONTRACT.replace("approvals: {from: [sre-lead], count: 1}", auto)).unwrap();
        let held = [Held {
            contract: "prod-db",
            step: "observe",
            end: t(3600),
        }];
        let mut asked = req("alice", "operate", None);
        asked.reason = Some("INC-42 replica lag");
        match decide(&p, &asked, &held, t(0)) {
            Decision::Grant {
                by_rule, reasons, ..
            } => {
                assert_eq!(by_rule.as_deref(), Some("incident"));
                assert!(reasons.last().unwrap().contains("approved at once by rule `incident`: the requester holds role `sre` and the reason matches `^INC-[0-9]+`"), "{reasons:?}");
            }
            d => panic!("{d:?}"),
        }
        asked.reason = Some("routine");
        assert!(
            matches!(
                decide(&p, &asked, &held, t(0)),
                Decision::NeedsApproval { .. }
            ),
            "no rule matches: approvers decide"
        );
        let with = |rules: &str| {
            CONTRACT.replace(
                "approvals: {from: [sre-lead], count: 1}",
                &format!("approvals: {{from: [sre-lead], auto: [{rules}]}}"),
            )
        };
        check_problems(
            &with("{name: x, role: nobody}"),
            &[(13, 58, "unknown role `nobody`")],
        );
        check_problems(
            &with("{name: x, reason: '('}"),
            &[(13, 60, "is not a regular expression")],
        );
        check_problems(&with("{name: x}"), &[(13, 42, "has no condition")]);
        check_problems(
            &with("{name: x, role: sre}, {name: x, role: sre}"),
            &[(13, 71, "two approvals.auto rules are named `x`")],
        );
        check_problems(
            &with("{name: x, when: now}"),
            &[(13, 52, "unknown key `when`"), (13, 42, "has no condition")],
        );
    }

    /// Issue 14: a contract's reason may have a required form.
    #[test]
    fn reasons_with_a_form() {
        let form = "reason: {required: true, pattern: '^INC-[0-9]+', example: INC-1234}";
        let p = load(&CONTRACT.replace("reason: required", form)).unwrap();
        let rule = &p.contracts["prod-db"].reason;
        let check = |reason: Option<&str>, want: Option<&str>| {
            let got = rule.refusal("prod-db", reason);
            match (got.as_deref(), want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w), "{reason:?}: {g}"),
                (g, w) => panic!("{reason:?}: got {g:?}, want {w:?}"),
            }
        };
        check(Some("INC-42 replica lag"), None);
        check(
            Some("fixing stuff"),
            Some("the reason `fixing stuff` does not have contract `prod-db`'s form `^INC-[0-9]+`; for example: INC-1234"),
        );
        check(
            Some("  "),
            Some("requires a reason (--reason \"INC-1234\")"),
        );
        check(None, Some("requires a reason"));
        let mut asked = req("alice", "observe", None);
        asked.reason = Some("see slack");
        match decide(&p, &asked, &[], t(0)) {
            Decision::Deny { reason, .. } => {
                assert!(reason.contains("for example: INC-1234"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
        // Optional with a form: none is fine, a wrong one is not.
        let loose = "reason: {pattern: '^(INC|CHG)-[0-9]+'}";
        let p = load(&CONTRACT.replace("reason: required", loose)).unwrap();
        assert!(p.contracts["prod-db"]
            .reason
            .refusal("prod-db", None)
            .is_none());
        assert!(p.contracts["prod-db"]
            .reason
            .refusal("prod-db", Some("x"))
            .is_some());
        // Problems are named where they are.
        check_problems(
            &CONTRACT.replace("reason: required", "reason: {pattern: '^INC-[0-9'}"),
            &[(
                4,
                19,
                "reason.pattern `^INC-[0-9` is not a regular expression",
            )],
        );
        check_problems(
            &CONTRACT.replace(
                "reason: required",
                "reason: {pattern: '^INC-', example: CHG-1}",
            ),
            &[(
                4,
                37,
                "reason.example `CHG-1` does not have the form `^INC-`",
            )],
        );
        check_problems(
            &CONTRACT.replace("reason: required", "reason: {required: maybe, format: x}"),
            &[
                (4, 27, "unknown key `format`"),
                (4, 20, "reason.required must be true or false"),
            ],
        );
    }

    #[test]
    fn break_glass_steps() {
        let glass =
            "  - name: break-glass\n    after: operate\n    principals: [root]\n    max_ttl: 30m\n";
        let p = load(&format!("{CONTRACT}{glass}")).unwrap();
        let steps = &p.contracts["prod-db"].steps;
        let flags: Vec<bool> = steps.iter().map(|s| s.break_glass).collect();
        assert_eq!(
            flags,
            [false, false, true],
            "named break-glass: one by default"
        );
        let p = load(&format!("{CONTRACT}{glass}    break_glass: false\n")).unwrap();
        assert!(!p.contracts["prod-db"].steps[2].break_glass);
        let p =
            load(&CONTRACT.replace("max_ttl: 2h", "max_ttl: 2h\n    break_glass: true")).unwrap();
        assert!(p.contracts["prod-db"].steps[1].break_glass);
        check(
            &CONTRACT.replace("max_ttl: 2h", "max_ttl: 2h\n    break_glass: loud"),
            &[(13, 18, "break_glass must be true or false")],
        );
    }

    #[test]
    fn duplicate_contracts_across_files() {
        let err = load_texts(&[
            (PathBuf::from("p/people.yaml"), people()),
            (PathBuf::from("p/hosts.yaml"), HOSTS.to_string()),
            (PathBuf::from("p/a.yaml"), CONTRACT.to_string()),
            (PathBuf::from("p/b.yaml"), CONTRACT.to_string()),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(
            err.0[0]
                .to_string()
                .starts_with("p/b.yaml:1:11: duplicate contract name `prod-db`"),
            "{err}"
        );
    }

    #[test]
    fn people_problems() {
        let err = load_texts(&[
            (
                PathBuf::from("p/people.yaml"),
                "users:\n  al ice:\n    keys: [\"not a key\"]\n    role: [x]\n".into(),
            ),
            (PathBuf::from("p/hosts.yaml"), HOSTS.to_string()),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("p/people.yaml:2:3: user name `al ice`"),
            "{text}"
        );
        assert!(
            text.contains("p/people.yaml:3:12: user `al ice` key is not an OpenSSH public key"),
            "{text}"
        );
        assert!(
            text.contains("p/people.yaml:4:5: unknown key `role`"),
            "{text}"
        );
    }

    fn t(secs: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn req<'a>(user: &'a str, step: &'a str, ttl: Option<u64>) -> Request<'a> {
        Request {
            user,
            contract: "prod-db",
            step: Some(step),
            reason: Some("INC-42"),
            ttl: ttl.map(Duration::from_secs),
            start: None,
        }
    }

    #[test]
    fn decisions() {
        let p = load(CONTRACT).unwrap();
        let deny = |d: Decision, frag: &str| match d {
            Decision::Deny { reason, .. } => assert!(reason.contains(frag), "{reason}"),
            other => panic!("expected deny with {frag:?}, got {other:?}"),
        };
        match decide(&p, &req("alice", "observe", None), &[], t(0)) {
            Decision::Grant { ttl, .. } => assert_eq!(ttl.as_secs(), 1800),
            d => panic!("{d:?}"),
        }
        deny(
            decide(&p, &req("mallory", "observe", None), &[], t(0)),
            "unknown user",
        );
        deny(
            decide(&p, &req("bob", "observe", None), &[], t(0)),
            "holds none of the roles",
        );
        deny(
            decide(&p, &req("alice", "observe", Some(3600)), &[], t(0)),
            "exceeds step `observe` max_ttl 30m",
        );
        deny(
            decide(&p, &req("alice", "nope", None), &[], t(0)),
            "has no step `nope`",
        );
        deny(
            decide(&p, &req("alice", "operate", None), &[], t(0)),
            "request `observe` first",
        );
        let mut no_reason = req("alice", "observe", None);
        no_reason.reason = Some("  ");
        deny(decide(&p, &no_reason, &[], t(0)), "requires a reason");

        let held = [Held {
            contract: "prod-db",
            step: "observe",
            end: t(600),
        }];
        match decide(&p, &req("alice", "operate", None), &held, t(0)) {
            Decision::NeedsApproval {
                ttl, from, count, ..
            } => {
                assert_eq!(ttl.as_secs(), 600, "clamped to the observe grant");
                assert_eq!((from, count), (vec!["sre-lead".to_string()], 1));
            }
            d => panic!("{d:?}"),
        }
        // The prerequisite has expired by now.
        deny(
            decide(&p, &req("alice", "operate", None), &held, t(600)),
            "request `observe` first",
        );
    }

    #[test]
    fn approvals() {
        let p = load(CONTRACT).unwrap();
        let check = |approver: &str, already: &[&str], want: Option<&str>| {
            let already: Vec<String> = already.iter().map(|s| s.to_string()).collect();
            let got = approval_refusal(&p, "prod-db", "operate", "alice", approver, &already);
            match (got, want) {
                (None, None) => {}
                (Some(r), Some(frag)) => assert!(r.contains(frag), "{r}"),
                (got, want) => panic!("{approver}: got {got:?}, want {want:?}"),
            }
        };
        check("bob", &[], None);
        check("alice", &[], Some("your own request"));
        check("mallory", &[], Some("holds none"));
        check("bob", &["bob"], Some("count once"));
        assert!(approval_refusal(&p, "prod-db", "observe", "alice", "bob", &[]).is_some());
    }
}
