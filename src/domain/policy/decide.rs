//! Decisions: a pure function of (policies, request, current grants, now).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::model::*;
use super::window;

/// What an engineer asks for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub user: &'a str,
    pub contract: &'a str,
    /// `None` asks for the contract's first step.
    pub step: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// `None` asks for the step's `max_ttl`.
    pub ttl: Option<Duration>,
    /// A window that opens later (`--start`); `None` opens it at once.
    pub start: Option<DateTime<Utc>>,
}

/// A grant the requester holds (at the window's start, for a window asked for ahead), as far
/// as decisions care.
#[derive(Debug, Clone)]
pub struct Held<'a> {
    pub contract: &'a str,
    pub step: &'a str,
    pub end: DateTime<Utc>,
}

/// The outcome of a request; a denial is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted on request for `ttl`.
    Grant {
        step: String,
        ttl: Duration,
        reasons: Vec<String>,
        /// The `approvals.auto` rule that approved it, for a step that takes approvals.
        by_rule: Option<String>,
    },
    /// Becomes a grant once `count` distinct people holding one of `from` approve.
    NeedsApproval {
        step: String,
        ttl: Duration,
        from: Vec<String>,
        count: u32,
        reasons: Vec<String>,
    },
    Deny {
        reason: String,
        reasons: Vec<String>,
    },
}

impl Decision {
    /// The decision in one line, as `policy explain` prints it.
    pub fn verdict(&self, contract: &str) -> String {
        match self {
            Decision::Grant {
                step, ttl, by_rule, ..
            } => format!(
                "GRANT {contract}/{step} for {}{}",
                format_duration(*ttl),
                by_rule
                    .as_deref()
                    .map(|r| format!(" (approved by rule `{r}`)"))
                    .unwrap_or_default()
            ),
            Decision::NeedsApproval {
                step,
                ttl,
                from,
                count,
                ..
            } => format!(
                "NEEDS APPROVAL {contract}/{step} for {}: {count} from {}",
                format_duration(*ttl),
                from.join(", ")
            ),
            Decision::Deny { reason, .. } => format!("DENY: {reason}"),
        }
    }

    /// The reasons that led here, the decisive one last.
    pub fn reasons(&self) -> &[String] {
        match self {
            Decision::Grant { reasons, .. }
            | Decision::NeedsApproval { reasons, .. }
            | Decision::Deny { reasons, .. } => reasons,
        }
    }
}

/// Decides a request. Deny by default: anything the policies do not grant is refused. A
/// window asked for ahead is decided on the roles held `now` and, for `after:`, on `held`
/// at its start.
pub fn decide(p: &Policies, req: &Request<'_>, held: &[Held<'_>], now: DateTime<Utc>) -> Decision {
    let mut reasons = Vec::new();
    let deny = |reason: String, mut reasons: Vec<String>| {
        reasons.push(reason.clone());
        Decision::Deny { reason, reasons }
    };
    let Some(user) = p.users.get(req.user) else {
        return deny(
            format!("unknown user `{}`: not in people.yaml", req.user),
            reasons,
        );
    };
    let Some(contract) = p.contracts.get(req.contract) else {
        let names: Vec<&str> = p.contracts.keys().map(String::as_str).collect();
        return deny(
            format!(
                "no contract named `{}`; contracts: {}",
                req.contract,
                names.join(", ")
            ),
            reasons,
        );
    };
    let step = match req.step {
        Some(name) => contract.step(name),
        None => contract.steps.first(),
    };
    let Some(step) = step else {
        let names: Vec<&str> = contract.steps.iter().map(|s| s.name.as_str()).collect();
        return deny(
            format!(
                "contract `{}` has no step `{}`; steps: {}",
                contract.name,
                req.step.unwrap_or(""),
                names.join(", ")
            ),
            reasons,
        );
    };
    // people.yaml's roles, and those held on call now.
    let roles = p.roles_at(&user.name, now);
    match roles.iter().find(|r| contract.requesters.contains(r)) {
        Some(role) => reasons.push(format!(
            "`{}` holds role `{role}`, a requester of `{}`",
            user.name, contract.name
        )),
        None => {
            return deny(
                format!(
                    "`{}` holds none of the roles that may request `{}` ({}); has: {}",
                    user.name,
                    contract.name,
                    contract.requesters.join(", "),
                    if roles.is_empty() {
                        "no roles".into()
                    } else {
                        roles.join(", ")
                    }
                ),
                reasons,
            )
        }
    }
    if let Some(why) = contract.reason.refusal(&contract.name, req.reason) {
        return deny(why, reasons);
    }
    let mut ttl = match req.ttl {
        Some(t) if t > step.max_ttl => {
            return deny(
                format!(
                    "requested ttl {} exceeds step `{}` max_ttl {}",
                    format_duration(t),
                    step.name,
                    format_duration(step.max_ttl)
                ),
                reasons,
            )
        }
        Some(t) => t,
        None => step.max_ttl,
    };
    reasons.push(format!(
        "ttl {} (step max_ttl {})",
        format_duration(ttl),
        format_duration(step.max_ttl)
    ));
    let at = match req.start {
        Some(start) => {
            if let Some(why) = window::start_refusal(start, now) {
                return deny(why, reasons);
            }
            reasons.push(format!(
                "window opens at {} ({}) and ends {} later; approvals may be given before it opens",
                window::stamp(start),
                window::until(start, now),
                format_duration(ttl)
            ));
            start
        }
        None => now,
    };
    if let Some(after) = &step.after {
        let prior = held
            .iter()
            .filter(|h| h.contract == contract.name && h.step == after && h.end > at)
            .max_by_key(|h| h.end);
        let Some(prior) = prior else {
            let why = match req.start {
                Some(start) => format!(
                    "step `{}` comes after `{after}`: no `{after}` grant of yours is held when the window opens at {}; ask for `{after}` with the same --start first",
                    step.name,
                    window::stamp(start)
                ),
                None => format!(
                    "step `{}` comes after `{after}`: request `{after}` first and hold it while asking for `{}`",
                    step.name, step.name
                ),
            };
            return deny(why, reasons);
        };
        // A higher step never outlives the step it climbed from.
        let left = (prior.end - at).to_std().unwrap_or_default();
        if left < ttl {
            ttl = Duration::from_secs(left.as_secs());
            reasons.push(format!(
                "ttl shortened to {} so it ends with the `{after}` grant it climbed from",
                format_duration(ttl)
            ));
        } else if req.start.is_some() {
            reasons.push(format!("holds an `{after}` grant when the window opens"));
        } else {
            reasons.push(format!("holds an active `{after}` grant"));
        }
        if ttl.is_zero() {
            return deny(
                format!("the `{after}` grant ends now; request it again"),
                reasons,
            );
        }
    }
    match &step.approvals {
        Some(a) => {
            if let Some(rule) = a.auto.iter().find(|r| r.matches(p, req.user, req.reason)) {
                reasons.push(format!(
                    "approved at once by rule `{}`: {}",
                    rule.name,
                    rule.describe()
                ));
                return Decision::Grant {
                    step: step.name.clone(),
                    ttl,
                    reasons,
                    by_rule: Some(rule.name.clone()),
                };
            }
            reasons.push(format!(
                "step `{}` needs {} approval(s) from: {}",
                step.name,
                a.count,
                a.from.join(", ")
            ));
            Decision::NeedsApproval {
                step: step.name.clone(),
                ttl,
                from: a.from.clone(),
                count: a.count,
                reasons,
            }
        }
        None => {
            reasons.push(format!("step `{}` is granted on request", step.name));
            Decision::Grant {
                step: step.name.clone(),
                ttl,
                reasons,
                by_rule: None,
            }
        }
    }
}

/// Whether `approver` may approve a request for `contract`/`step` made by `requester`.
/// Returns the refusal reason when not; approvals already given by the same person count once.
pub fn approval_refusal(
    p: &Policies,
    contract: &str,
    step: &str,
    requester: &str,
    approver: &str,
    already: &[String],
) -> Option<String> {
    let found = p.contracts.get(contract).and_then(|c| c.step(step));
    let Some(approvals) = found.and_then(|s| s.approvals.as_ref()) else {
        return Some(format!("step `{contract}/{step}` takes no approvals"));
    };
    if approver == requester {
        return Some("you cannot approve your own request".into());
    }
    if !approvals.from.iter().any(|r| p.has_role(approver, r)) {
        return Some(format!(
            "`{approver}` holds none of the approving roles ({})",
            approvals.from.join(", ")
        ));
    }
    if already.iter().any(|a| a == approver) {
        return Some(format!(
            "`{approver}` already approved this request; approvals from one person count once"
        ));
    }
    None
}
