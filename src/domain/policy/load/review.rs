//! Validating what a contract asks after a session: a step's `review:` and the contract's
//! `flag:` rules.

use std::collections::BTreeSet;
use std::time::Duration;

use super::super::review::{FlagOn, FlagRule, ReviewRule, ReviewSetting};
use super::super::yaml::{Kind, Node};
use super::Loader;
use crate::domain::Vocabulary;

/// The longest pattern a flag rule may have: rules run on every line of every session.
const MAX_PATTERN: usize = 1000;

impl Loader {
    /// A regular expression at `node`, compiled with a size limit; `what` names it in the
    /// problem.
    pub(super) fn regex(&mut self, node: &Node, what: &str) -> Option<regex::Regex> {
        let text = self.string(node, what)?;
        match regex::RegexBuilder::new(&text).size_limit(1 << 20).build() {
            Ok(re) => Some(re),
            Err(e) => {
                let e = e.to_string();
                let e = e.lines().last().unwrap_or("").trim().to_string();
                self.problem(
                    node.pos,
                    format!("{what} `{text}` is not a regular expression: {e}"),
                );
                None
            }
        }
    }

    /// A step's `review: {by: [ROLE...], within: DURATION}`, or `review: none`.
    pub(super) fn review_setting(
        &mut self,
        node: &Node,
        what: &str,
        roles: &BTreeSet<String>,
    ) -> ReviewSetting {
        if node.as_str() == Some("none") {
            return ReviewSetting::Never;
        }
        if !matches!(node.kind, Kind::Map(_)) {
            self.problem(
                node.pos,
                format!("{what} review must be `none` or {{by: [ramp-auditor], within: 1d}}"),
            );
            return ReviewSetting::Unsaid;
        }
        let here = format!("{what} review");
        let f = self.fields(node, &here, &["by", "within"]);
        let by = match self.required(&f, "by", &here) {
            Some(n) => {
                let by = self.strings(n, &format!("{here} by"));
                if by.is_empty() {
                    self.problem(n.pos, format!("{here} by needs at least one role"));
                }
                self.roles_known(&by, roles, &here);
                by.into_iter().map(|r| r.0).collect()
            }
            None => Vec::new(),
        };
        let within = self
            .required(&f, "within", &here)
            .and_then(|n| self.duration(n, &format!("{here} within")));
        match within {
            Some(within) if !by.is_empty() => ReviewSetting::Rule(ReviewRule { by, within }),
            _ => ReviewSetting::Unsaid,
        }
    }

    /// A contract's `keep:`: how long its recordings are kept after a session ends, or
    /// `forever` (`None`, as when it is left out).
    pub(super) fn keep(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.string(node, what)?;
        if text.trim() == "forever" {
            return None;
        }
        let keep = super::super::parse_duration(&text);
        if keep.is_none() {
            self.problem(
                node.pos,
                format!("{what}: bad duration `{text}`; write how long recordings are kept after a session ends, like 90d, 12h, 30m, or `forever`"),
            );
        }
        keep
    }

    /// A contract's `flag:` rules: `[{name, pattern, on: command|output|file, block}]`.
    pub(super) fn flag_rules(&mut self, node: &Node, what: &str) -> Vec<FlagRule> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(
                node.pos,
                format!("{what} flag must be a list of rules, like [{{name: drop-table, pattern: 'DROP TABLE', on: command, block: true}}]"),
            );
            return Vec::new();
        };
        let mut out: Vec<FlagRule> = Vec::new();
        for item in items {
            let here = format!("{what} flag rule");
            let f = self.fields(item, &here, &["name", "pattern", "on", "block"]);
            let Some(name_node) = self.required(&f, "name", &here) else {
                continue;
            };
            let Some(name) = self.string(name_node, &format!("{here} name")) else {
                continue;
            };
            if !self.name(&name, name_node.pos, "rule name") {
                continue;
            }
            let here = format!("{here} `{name}`");
            if out.iter().any(|r| r.name == name) {
                self.problem(
                    name_node.pos,
                    format!("{what}: two flag rules are named `{name}`"),
                );
                continue;
            }
            let pattern = self.required(&f, "pattern", &here).and_then(|n| {
                let long = n.as_str().is_some_and(|t| t.len() > MAX_PATTERN);
                if long {
                    self.problem(
                        n.pos,
                        format!("{here} pattern is longer than {MAX_PATTERN} characters"),
                    );
                    return None;
                }
                self.regex(n, &format!("{here} pattern"))
            });
            let on = self.required(&f, "on", &here).and_then(|n| {
                let text = self.string(n, &format!("{here} on"))?;
                let on = FlagOn::from_label(&text);
                if on.is_none() {
                    self.problem(
                        n.pos,
                        format!("{here} on `{text}` is not one of command, output, file"),
                    );
                }
                on
            });
            let block = f
                .get("block")
                .and_then(|n| {
                    let b = self.bool(n, &format!("{here} block"))?;
                    if b && on == Some(FlagOn::Output) {
                        self.problem(
                            n.pos,
                            format!("{here} cannot block output: output has already happened when it is seen; block a `command` or `file` rule, or drop `block`"),
                        );
                    }
                    Some(b)
                })
                .unwrap_or(false);
            if let (Some(pattern), Some(on)) = (pattern, on) {
                out.push(FlagRule {
                    name,
                    pattern,
                    on,
                    block: block && on != FlagOn::Output,
                });
            }
        }
        out
    }
}
