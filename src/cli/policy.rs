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
            json,
        } => {
            let p =
                crate::install::load_policies(&dir.join("policies")).map_err(crate::Error::from)?;
            let ttl = match ttl {
                Some(t) => Some(
                    policy::parse_duration(&t)
                        .ok_or_else(|| CliError::Usage(format!("--ttl: bad duration `{t}`")))?,
                ),
                None => None,
            };
            let now = Utc::now();
            let end = now + chrono::Duration::days(1);
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
            };
            let d = policy::decide(&p, &req, &held, now);
            let verdict = d.verdict(&contract);
            let refused = matches!(d, policy::Decision::Deny { .. });
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
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"decision": verdict, "reasons": d.reasons(), "after_session": after})
                    )
                    .unwrap_or_default()
                );
            } else {
                println!("{verdict}");
                for r in d.reasons() {
                    println!("  - {r}");
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
            if refused {
                return Err(CliError::Refused("denied".into()));
            }
            Ok(())
        }
    }
}
