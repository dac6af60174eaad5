//! `oncall.yaml`: who holds a role for now, as a team's scheduler writes it, e.g.
//!
//! ```yaml
//! roles:
//!   on-call:
//!     - alice                                  # until the file changes
//!     - {user: bob, until: 2026-12-01T08:00:00Z}
//! ```
//!
//! Each person must be in people.yaml; a role held here counts wherever roles count
//! (requesters, approvers, `approvals.auto` rules) until its `until`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::super::model::{OnCall, User};
use super::super::yaml::{Kind, Node};
use super::Loader;

impl Loader {
    /// The on-call entries, and the roles they name.
    pub(super) fn oncall(
        &mut self,
        root: &Node,
        users: &BTreeMap<String, User>,
    ) -> (Vec<OnCall>, Vec<String>) {
        let top = self.fields(root, "oncall.yaml", &["roles"]);
        let (mut out, mut roles) = (Vec::new(), Vec::new());
        let Some(node) = top.get("roles") else {
            return (out, roles);
        };
        for (role, pos, body) in self.entries(node, "oncall.yaml roles") {
            if !self.name(role, pos, "role") {
                continue;
            }
            roles.push(role.to_string());
            let items = match &body.kind {
                Kind::Seq(items) => items.as_slice(),
                _ if body.is_null() => &[],
                _ => {
                    let msg = format!("role `{role}` must list its people, like [alice, {{user: bob, until: 2026-12-01T08:00:00Z}}]");
                    self.problem(body.pos, msg);
                    continue;
                }
            };
            for item in items {
                if let Some(entry) = self.oncall_entry(role, item, users) {
                    out.push(entry);
                }
            }
        }
        (out, roles)
    }

    fn oncall_entry(
        &mut self,
        role: &str,
        item: &Node,
        users: &BTreeMap<String, User>,
    ) -> Option<OnCall> {
        let what = format!("on-call for `{role}`");
        let (user, until) = match &item.kind {
            Kind::Map(_) => {
                let f = self.fields(item, &what, &["user", "until"]);
                let user_node = self.required(&f, "user", &what)?;
                let user = self.string(user_node, &format!("{what} user"))?;
                let until = match f.get("until") {
                    Some(n) => {
                        let text = self.string(n, &format!("{what} until"))?;
                        match DateTime::parse_from_rfc3339(&text) {
                            Ok(t) => Some(t.with_timezone(&Utc)),
                            Err(e) => {
                                let msg = format!("{what}: `until` must be an RFC 3339 time like 2026-12-01T08:00:00Z ({e})");
                                self.problem(n.pos, msg);
                                return None;
                            }
                        }
                    }
                    None => None,
                };
                (user, until)
            }
            _ => (self.string(item, &what)?, None),
        };
        if !users.contains_key(&user) {
            let msg = format!("{what}: unknown user `{user}` (not in people.yaml)");
            self.problem(item.pos, msg);
            return None;
        }
        Some(OnCall {
            role: role.to_string(),
            user,
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::super::load_texts;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYcaOwKPLzc38ZJT+5UcI79zgqNi/JliP8Q/oexCZVA alice@test";

    fn load(oncall: &str) -> Result<super::super::super::Policies, super::super::Problems> {
        let people = format!("users:\n  alice:\n    keys: [\"{KEY}\"]\n    roles: [sre]\n");
        let contract = "contract: c\ntargets: {names: [\"db-*\"]}\nrequesters: [sre]\nsteps:\n  - name: observe\n    principals: [readonly]\n    max_ttl: 30m\n    approvals: {from: [ramp-admin], count: 1, auto: [{name: paged, role: on-call}]}\n";
        load_texts(&[
            (PathBuf::from("p/people.yaml"), people),
            (
                PathBuf::from("p/hosts.yaml"),
                "hosts:\n  db-1:\n    address: 10.0.3.7:22\n".into(),
            ),
            (PathBuf::from("p/oncall.yaml"), oncall.into()),
            (PathBuf::from("p/c.yaml"), contract.into()),
        ])
    }

    #[test]
    fn a_role_held_on_call_counts_until_its_end() {
        let at = |h| chrono::Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap();
        let p =
            load("roles:\n  on-call:\n    - {user: alice, until: 2026-12-01T08:00:00Z}\n").unwrap();
        assert!(p.has_role_at("alice", "on-call", at(7)));
        assert!(
            !p.has_role_at("alice", "on-call", at(8)),
            "ends at its until"
        );
        assert_eq!(p.roles_at("alice", at(7)), ["sre", "on-call"]);
        assert_eq!(p.roles_at("alice", at(9)), ["sre"]);
        let p = load("roles:\n  on-call: [alice]\n").unwrap();
        assert!(
            p.has_role_at("alice", "on-call", at(23)),
            "no until: while the file says so"
        );
    }

    #[test]
    fn oncall_problems_are_named_with_their_place() {
        let err = load("roles:\n  on-call:\n    - mallory\n    - {user: alice, until: tomorrow}\n    - {user: alice, since: now}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p/oncall.yaml:3:7: on-call for `on-call`: unknown user `mallory` (not in people.yaml)"), "{err}");
        assert!(
            err.contains(
                "p/oncall.yaml:4:28: on-call for `on-call`: `until` must be an RFC 3339 time"
            ),
            "{err}"
        );
        assert!(err.contains("p/oncall.yaml:5:"), "{err}");
        let err = load("roles:\n  on-call: alice\n").unwrap_err().to_string();
        assert!(err.contains("role `on-call` must list its people"), "{err}");
    }
}
