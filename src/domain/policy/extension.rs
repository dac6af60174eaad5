//! Extensions (`ramp-ca extend`) as a rule: how far a grant of a step may run, and who must
//! agree to more time. Pure; the service adds what needs the ledger (the grant it climbed
//! from), and `policy explain --extend` says the same without a daemon.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::decide::Decision;
use super::model::{format_duration, Policies};
use super::window::stamp;

/// More time asked for on a grant of `contract`/`step` that runs from `start` to `end`.
#[derive(Debug, Clone)]
pub struct ExtensionAsk<'a> {
    pub user: &'a str,
    pub contract: &'a str,
    pub step: &'a str,
    pub reason: Option<&'a str>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub more: Duration,
}

impl ExtensionAsk<'_> {
    /// The end it asks for.
    pub fn to(&self) -> DateTime<Utc> {
        self.end + chrono::Duration::seconds(self.more.as_secs() as i64)
    }
}

/// Decides an extension: refused past the step's `max_ttl` from the grant's start or for
/// its reason; else approved like the step (an `auto` rule at once), or given at once when
/// the step takes no approvals. The grant's `ttl` in the answer is the time added.
pub fn decide_extension(p: &Policies, ask: &ExtensionAsk<'_>) -> Decision {
    let mut reasons = Vec::new();
    let deny = |reason: String, mut reasons: Vec<String>| {
        reasons.push(reason.clone());
        Decision::Deny { reason, reasons }
    };
    let Some(contract) = p.contracts.get(ask.contract) else {
        return deny(format!("no contract named `{}`", ask.contract), reasons);
    };
    let Some(step) = contract.step(ask.step) else {
        return deny(
            format!("contract `{}` has no step `{}`", ask.contract, ask.step),
            reasons,
        );
    };
    if let Some(why) = contract.reason.refusal(&contract.name, ask.reason) {
        return deny(why, reasons);
    }
    let limit = ask.start + chrono::Duration::seconds(step.max_ttl.as_secs() as i64);
    let to = ask.to();
    if to > limit {
        let left = (limit - ask.end).num_seconds().max(0) as u64;
        return deny(
            format!(
                "extending to {} is past step `{}`'s max_ttl {} from the grant's start ({}): at most {} more",
                stamp(to),
                step.name,
                format_duration(step.max_ttl),
                stamp(ask.start),
                format_duration(Duration::from_secs(left))
            ),
            reasons,
        );
    }
    reasons.push(format!(
        "{} more, to {}: within step `{}`'s max_ttl {} from the grant's start",
        format_duration(ask.more),
        stamp(to),
        step.name,
        format_duration(step.max_ttl)
    ));
    if let Some(after) = &step.after {
        reasons.push(format!(
            "never past the end of the `{after}` grant it climbed from"
        ));
    }
    let granted = |by_rule, reasons| Decision::Grant {
        step: step.name.clone(),
        ttl: ask.more,
        reasons,
        by_rule,
    };
    let Some(a) = &step.approvals else {
        reasons.push(format!(
            "step `{}` takes no approvals: extended at once",
            step.name
        ));
        return granted(None, reasons);
    };
    if let Some(rule) = a.auto.iter().find(|r| r.matches(p, ask.user, ask.reason)) {
        reasons.push(format!(
            "approved at once by rule `{}`: {}",
            rule.name,
            rule.describe()
        ));
        return granted(Some(rule.name.clone()), reasons);
    }
    reasons.push(format!(
        "the extension needs {} approval(s) from {}, never by its holder; until then the grant ends at {}",
        a.count,
        a.from.join(", "),
        stamp(ask.end)
    ));
    Decision::NeedsApproval {
        step: step.name.clone(),
        ttl: ask.more,
        from: a.from.clone(),
        count: a.count,
        reasons,
    }
}
