//! `policy check | explain`: the policy directory validated as a whole, and the decision a
//! request would get, with every reason, without a daemon.

use std::path::Path;

use chrono::Utc;
use serde_json::json;

use super::{CliError, PolicyCommand, Result};
use crate::domain::policy;

pub(super) fn run(dir: &Path, cmd: PolicyCommand) -> Result {
    match cmd {
        PolicyCommand::Check { path } => {
            let path = path.unwrap_or_else(|| dir.join("policies"));
            let p = crate::install::load_policies(&path)
                .map_err(|e| CliError::Refused(format!("{e}\n{} problem(s) found", e.0.len())))?;
            println!(
                "{}: ok ({} users, {} hosts, {} contracts)",
                path.display(),
                p.users.len(),
                p.hosts.len(),
                p.contracts.len()
            );
            Ok(())
        }
        PolicyCommand::Explain {
            user,
            contract,
            step,
            ttl,
            reason,
            holding,
            start,
            extend,
            json,
        } => {
            let p =
                crate::install::load_policies(&dir.join("policies")).map_err(crate::Error::from)?;
            let duration = |flag: &str, t: &str| {
                policy::parse_duration(t)
                    .ok_or_else(|| CliError::Usage(format!("{flag}: bad duration `{t}`")))
            };
            let ttl = ttl.as_deref().map(|t| duration("--ttl", t)).transpose()?;
            let more = extend
                .as_deref()
                .map(|t| duration("--extend", t))
                .transpose()?;
            let now = Utc::now();
            let start = start
                .as_deref()
                .map(|t| policy::parse_start(t, now).map_err(CliError::Usage))
                .transpose()?;
            // Assumed held grants cover the window's start for a day.
            let end = start.unwrap_or(now) + chrono::Duration::days(1);
            let held: Vec<policy::Held<'_>> = holding
                .iter()
                .map(|s| policy::Held {
                    contract: &contract,
                    step: s,
                    end,
                })
                .collect();
            let req = policy::Request {
                user: &user,
                contract: &contract,
                step: step.as_deref(),
                reason: reason.as_deref().or(Some("(explain)")),
                ttl,
                start,
            };
            let d = policy::decide(&p, &req, &held, now);
            let extension = match (&d, more) {
                (
                    policy::Decision::Grant { step, ttl, .. }
                    | policy::Decision::NeedsApproval { step, ttl, .. },
                    Some(more),
                ) => {
                    let begins = start.unwrap_or(now);
                    let ask = policy::ExtensionAsk {
                        user: &user,
                        contract: &contract,
                        step,
                        reason: req.reason,
                        start: begins,
                        end: begins + chrono::Duration::seconds(ttl.as_secs() as i64),
                        more,
                    };
                    Some(policy::decide_extension(&p, &ask))
                }
                _ => None,
            };
            let after: Vec<String> = p
                .contracts
                .get(&contract)
                .and_then(|c| {
                    let s = match &step {
                        Some(s) => c.step(s),
                        None => c.steps.first(),
                    }?;
                    Some(policy::after_session(c, s))
                })
                .unwrap_or_default();
            let refused = |d: &policy::Decision| matches!(d, policy::Decision::Deny { .. });
            let verdict = d.verdict(&contract);
            if json {
                let ext = extension
                    .as_ref()
                    .map(|e| json!({"decision": extension_verdict(e), "reasons": e.reasons()}));
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "decision": verdict,
                        "reasons": d.reasons(),
                        "after_session": after,
                        "extension": ext,
                    }))
                    .unwrap_or_default()
                );
            } else {
                println!("{verdict}");
                for r in d.reasons() {
                    println!("  - {r}");
                }
                if let Some(e) = &extension {
                    println!("extension: {}", extension_verdict(e));
                    for r in e.reasons() {
                        println!("  - {r}");
                    }
                }
                if !after.is_empty() {
                    println!("after the session:");
                    for a in &after {
                        println!("  - {a}");
                    }
                }
                if reason.is_none() {
                    println!("  (assumed a reason was given; pass --reason to check it)");
                }
            }
            if refused(&d) || extension.as_ref().is_some_and(refused) {
                return Err(CliError::Refused("denied".into()));
            }
            Ok(())
        }
    }
}

/// An extension's decision in one line.
fn extension_verdict(d: &policy::Decision) -> String {
    match d {
        policy::Decision::Grant { ttl, by_rule, .. } => format!(
            "EXTEND by {} at once{}",
            policy::format_duration(*ttl),
            by_rule
                .as_deref()
                .map(|r| format!(" (approved by rule `{r}`)"))
                .unwrap_or_default()
        ),
        policy::Decision::NeedsApproval {
            ttl, from, count, ..
        } => format!(
            "EXTEND by {} NEEDS APPROVAL: {count} from {}",
            policy::format_duration(*ttl),
            from.join(", ")
        ),
        policy::Decision::Deny { reason, .. } => format!("DENY: {reason}"),
    }
}
