//! Validating one contract file: its targets, its steps with their options, and their
//! order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::super::model::*;
use super::super::yaml::{Kind, Node, Pos};
use super::{parse_cidr, Loader, DEFAULT_CONTRACT_MAX_TTL};

impl Loader {
    pub(super) fn contract(
        &mut self,
        root: &Node,
        roles: &BTreeSet<String>,
        hosts: &BTreeMap<String, Host>,
    ) -> Option<(Contract, Pos)> {
        let f = self.fields(
            root,
            "contract",
            &[
                "contract",
                "description",
                "targets",
                "requesters",
                "reason",
                "max_ttl",
                "steps",
                "flag",
                "keep",
            ],
        );
        let name_node = self.required(&f, "contract", "contract file")?;
        let name = self.string(name_node, "contract")?;
        let what = format!("contract `{name}`");
        let name_ok = self.name(&name, name_node.pos, "contract name");
        let description = f
            .get("description")
            .and_then(|n| self.string(n, "description"))
            .unwrap_or_default();
        let max_ttl = f
            .get("max_ttl")
            .map(|n| self.duration(n, &format!("{what} max_ttl")))
            .unwrap_or(Some(DEFAULT_CONTRACT_MAX_TTL));
        let reason = f
            .get("reason")
            .map(|n| self.reason_rule(n, &what))
            .unwrap_or_default();
        let requesters = match self.required(&f, "requesters", &what) {
            Some(n) => self.strings(n, &format!("{what} requesters")),
            None => Vec::new(),
        };
        self.roles_known(&requesters, roles, &format!("{what} requesters"));
        let targets = self.targets(f.get("targets"), f.pos, &what, hosts);
        let steps_node = self.required(&f, "steps", &what);
        let steps = match steps_node.map(|n| &n.kind) {
            Some(Kind::Seq(items)) if !items.is_empty() => items
                .iter()
                .filter_map(|n| self.step(n, &what, roles, max_ttl))
                .collect(),
            Some(_) => {
                let pos = steps_node.map_or(f.pos, |n| n.pos);
                self.problem(
                    pos,
                    format!("{what} steps must be a non-empty list of steps"),
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        self.step_order(&steps, &what);
        let flags = f
            .get("flag")
            .filter(|n| !n.is_null())
            .map(|n| self.flag_rules(n, &what))
            .unwrap_or_default();
        let keep = f
            .get("keep")
            .and_then(|n| self.keep(n, &format!("{what} keep")));
        let contract = Contract {
            name,
            description,
            targets,
            requesters: requesters.into_iter().map(|r| r.0).collect(),
            reason,
            max_ttl: max_ttl?,
            steps: steps.into_iter().map(|s| s.0).collect(),
            flags,
            keep,
        };
        name_ok.then_some((contract, name_node.pos))
    }

    /// A step's `approvals.auto`: rules with a name and at least one condition.
    fn auto_rules(&mut self, node: &Node, what: &str, roles: &BTreeSet<String>) -> Vec<AutoRule> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(
                node.pos,
                format!("{what} approvals.auto must be a list of rules, like [{{name: on-call, role: on-call}}]"),
            );
            return Vec::new();
        };
        let mut out: Vec<AutoRule> = Vec::new();
        for item in items {
            let here = format!("{what} approvals.auto rule");
            let f = self.fields(item, &here, &["name", "role", "reason"]);
            let Some(name_node) = self.required(&f, "name", &here) else {
                continue;
            };
            let Some(name) = self.string(name_node, &format!("{here} name")) else {
                continue;
            };
            if !self.name(&name, name_node.pos, "rule name") {
                continue;
            }
            if out.iter().any(|r| r.name == name) {
                self.problem(
                    name_node.pos,
                    format!("{what}: two approvals.auto rules are named `{name}`"),
                );
                continue;
            }
            let role = f.get("role").and_then(|n| {
                let r = self.string(n, &format!("{here} `{name}` role"))?;
                self.roles_known(&[(r.clone(), n.pos)], roles, &format!("{here} `{name}`"));
                Some(r)
            });
            let reason = f
                .get("reason")
                .and_then(|n| self.regex(n, &format!("{here} `{name}` reason")));
            if f.get("role").is_none() && f.get("reason").is_none() {
                self.problem(
                    item.pos,
                    format!("{here} `{name}` has no condition: give `role:` and/or `reason:`"),
                );
                continue;
            }
            out.push(AutoRule { name, role, reason });
        }
        out
    }

    /// `reason: required|optional`, or `{required: BOOL, pattern: REGEX, example: TEXT}`
    /// (the example must have the pattern's form).
    fn reason_rule(&mut self, node: &Node, what: &str) -> ReasonRule {
        match node.as_str() {
            Some("optional") => return ReasonRule::default(),
            Some("required") => {
                return ReasonRule {
                    required: true,
                    ..ReasonRule::default()
                }
            }
            _ => {}
        }
        if !matches!(node.kind, Kind::Map(_)) {
            self.problem(
                node.pos,
                format!("{what} reason must be `required`, `optional`, or {{required: true, pattern: '^INC-[0-9]+', example: INC-1234}}"),
            );
            return ReasonRule::default();
        }
        let f = self.fields(
            node,
            &format!("{what} reason"),
            &["required", "pattern", "example"],
        );
        let required = f
            .get("required")
            .and_then(|n| self.bool(n, &format!("{what} reason.required")))
            .unwrap_or(false);
        let pattern = f
            .get("pattern")
            .and_then(|n| self.regex(n, &format!("{what} reason.pattern")));
        let example = f.get("example").and_then(|n| {
            let text = self.string(n, &format!("{what} reason.example"))?;
            if let Some(p) = &pattern {
                if !p.is_match(&text) {
                    self.problem(
                        n.pos,
                        format!(
                            "{what} reason.example `{text}` does not have the form `{}`",
                            p.as_str()
                        ),
                    );
                }
            }
            Some(text)
        });
        ReasonRule {
            required,
            pattern,
            example,
        }
    }

    fn targets(
        &mut self,
        node: Option<&Node>,
        pos: Pos,
        what: &str,
        hosts: &BTreeMap<String, Host>,
    ) -> Targets {
        let Some(node) = node else {
            self.problem(
                pos,
                format!("{what} is missing `targets` (names and/or labels)"),
            );
            return Targets::default();
        };
        let f = self.fields(node, &format!("{what} targets"), &["names", "labels"]);
        let mut targets = Targets::default();
        let names = match f.get("names") {
            Some(n) => self.strings(n, &format!("{what} target names")),
            None => Vec::new(),
        };
        for (glob, gpos) in &names {
            if !hosts.values().any(|h| glob_match(glob, &h.name)) {
                let known: Vec<&str> = hosts.keys().map(String::as_str).collect();
                self.problem(
                    *gpos,
                    format!(
                        "{what}: unknown target `{glob}` matches no host in hosts.yaml; hosts: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        targets.names = names.into_iter().map(|n| n.0).collect();
        if let Some(n) = f.get("labels") {
            for (k, _, v) in self.entries(n, &format!("{what} target labels")) {
                if let Some(v) = self.string(v, &format!("{what} target label `{k}`")) {
                    targets.labels.insert(k.to_string(), v);
                }
            }
            if !targets.labels.is_empty()
                && !hosts.values().any(|h| {
                    Targets {
                        names: vec![],
                        labels: targets.labels.clone(),
                    }
                    .matches(h)
                })
            {
                self.problem(
                    n.pos,
                    format!("{what}: target labels match no host in hosts.yaml"),
                );
            }
        }
        if targets.names.is_empty() && targets.labels.is_empty() {
            self.problem(
                node.pos,
                format!("{what} targets select nothing; give names and/or labels"),
            );
        }
        targets
    }

    fn step(
        &mut self,
        node: &Node,
        contract: &str,
        roles: &BTreeSet<String>,
        limit: Option<Duration>,
    ) -> Option<(Step, Pos, Option<Pos>)> {
        let f = self.fields(
            node,
            &format!("{contract} step"),
            &[
                "name",
                "after",
                "principals",
                "max_ttl",
                "approvals",
                "options",
                "break_glass",
                "review",
            ],
        );
        let name_node = self.required(&f, "name", &format!("{contract} step"))?;
        let name = self.string(name_node, "step name")?;
        self.name(&name, name_node.pos, "step name");
        let what = format!("{contract} step `{name}`");
        let after = f.get("after").filter(|n| !n.is_null());
        let after_name = after.and_then(|n| self.string(n, &format!("{what} after")));
        let mut principals = Vec::new();
        if let Some(n) = self.required(&f, "principals", &what) {
            let list = self.strings(n, &format!("{what} principals"));
            if list.is_empty() {
                self.problem(n.pos, format!("{what} principals must not be empty: a certificate with none is valid for every user"));
            }
            for (p, ppos) in list {
                match principal_problem(&p) {
                    Some(why) => self.problem(
                        ppos,
                        format!(
                            "{what} principal {p:?} {why}; use a plain login name like `readonly`"
                        ),
                    ),
                    None => principals.push(p),
                }
            }
        }
        let max_ttl = self
            .required(&f, "max_ttl", &what)
            .and_then(|n| Some((self.duration(n, &format!("{what} max_ttl"))?, n.pos)));
        if let (Some((ttl, tpos)), Some(limit)) = (max_ttl, limit) {
            if ttl > limit {
                self.problem(
                    tpos,
                    format!("{what} max_ttl {} is above the contract's limit {}; lower it or raise the contract's max_ttl", format_duration(ttl), format_duration(limit)),
                );
            }
        }
        let approvals = f.get("approvals").filter(|n| !n.is_null()).and_then(|n| {
            let af = self.fields(n, &format!("{what} approvals"), &["from", "count", "auto"]);
            let from = match self.required(&af, "from", &format!("{what} approvals")) {
                Some(n) => self.strings(n, &format!("{what} approvals from")),
                None => Vec::new(),
            };
            if from.is_empty() {
                self.problem(
                    n.pos,
                    format!("{what} approvals need at least one role in `from`"),
                );
            }
            self.roles_known(&from, roles, &format!("{what} approvals"));
            let count = match af.get("count") {
                None => Some(1),
                Some(c) => match c.as_str().and_then(|s| s.parse::<u32>().ok()) {
                    Some(n @ 1..=10) => Some(n),
                    _ => {
                        self.problem(
                            c.pos,
                            format!("{what} approvals count must be a number from 1 to 10"),
                        );
                        None
                    }
                },
            };
            let auto = af
                .get("auto")
                .map(|n| self.auto_rules(n, &what, roles))
                .unwrap_or_default();
            Some(Approvals {
                from: from.into_iter().map(|r| r.0).collect(),
                count: count?,
                auto,
            })
        });
        let options = match f.get("options") {
            Some(n) => self.options(n, &what),
            None => CertOptions::default(),
        };
        let break_glass = match f.get("break_glass").filter(|n| !n.is_null()) {
            Some(n) => self.bool(n, &format!("{what} break_glass")),
            None => None,
        }
        .unwrap_or(name == BREAK_GLASS);
        let review = f
            .get("review")
            .filter(|n| !n.is_null())
            .map(|n| self.review_setting(n, &what, roles))
            .unwrap_or_default();
        let step = Step {
            name,
            after: after_name,
            principals,
            // An invalid max_ttl was reported; the zero keeps the step for the `after` checks.
            max_ttl: max_ttl.map_or(Duration::ZERO, |t| t.0),
            approvals,
            options,
            break_glass,
            review,
        };
        Some((step, name_node.pos, after.map(|n| n.pos)))
    }

    fn options(&mut self, node: &Node, what: &str) -> CertOptions {
        let what = format!("{what} options");
        let f = self.fields(
            node,
            &what,
            &[
                "pty",
                "port_forwarding",
                "agent_forwarding",
                "x11_forwarding",
                "user_rc",
                "source_address",
                "force_command",
            ],
        );
        let mut o = CertOptions::default();
        for (key, slot) in [
            ("pty", &mut o.pty),
            ("port_forwarding", &mut o.port_forwarding),
            ("agent_forwarding", &mut o.agent_forwarding),
            ("x11_forwarding", &mut o.x11_forwarding),
            ("user_rc", &mut o.user_rc),
        ] {
            if let Some(n) = f.get(key) {
                if let Some(b) = self.bool(n, &format!("{what} {key}")) {
                    *slot = b;
                }
            }
        }
        if let Some(n) = f.get("source_address") {
            for (cidr, cpos) in self.strings(n, &format!("{what} source_address")) {
                match parse_cidr(&cidr) {
                    Some(net) => o.source_address.push(net),
                    None => self.problem(cpos, format!("{what}: invalid CIDR `{cidr}`; write an address or network like 10.0.0.0/8 or 2001:db8::/32")),
                }
            }
        }
        if let Some(n) = f.get("force_command").filter(|n| !n.is_null()) {
            match self.string(n, &format!("{what} force_command")) {
                Some(cmd) if cmd.trim().is_empty() => self.problem(
                    n.pos,
                    format!("{what} force_command is empty; give a command or null"),
                ),
                cmd => o.force_command = cmd,
            }
        }
        o
    }

    /// Every `after:` names a step of the same contract; no cycles; step names unique.
    fn step_order(&mut self, steps: &[(Step, Pos, Option<Pos>)], what: &str) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, (step, pos, _)) in steps.iter().enumerate() {
            if index.insert(&step.name, i).is_some() {
                self.problem(
                    *pos,
                    format!(
                        "{what}: duplicate step name `{}`; step names must be unique",
                        step.name
                    ),
                );
            }
        }
        let names: Vec<&str> = steps.iter().map(|s| s.0.name.as_str()).collect();
        for (step, _, after_pos) in steps {
            let (Some(after), Some(apos)) = (&step.after, after_pos) else {
                continue;
            };
            if !index.contains_key(after.as_str()) {
                self.problem(
                    *apos,
                    format!(
                        "{what} step `{}`: after `{after}` names no step; steps are: {}",
                        step.name,
                        names.join(", ")
                    ),
                );
                continue;
            }
            // Walk the chain; coming back to this step means a cycle.
            let mut cur = after.as_str();
            for _ in 0..steps.len() {
                if cur == step.name {
                    self.problem(*apos, format!("{what} step `{}`: after `{after}` forms a cycle; the first step must have no `after`", step.name));
                    break;
                }
                match index.get(cur).and_then(|&i| steps[i].0.after.as_deref()) {
                    Some(next) => cur = next,
                    None => break,
                }
            }
        }
    }
}
