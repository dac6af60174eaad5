//! More time on an active grant (`ramp-ca extend`): within the step's `max_ttl` counted from
//! the grant's start and never past the grant it climbed from; approved like the step (the
//! same approvers and rules, never by its holder), or given at once when the step needs no
//! approval. Live sessions read the grant's end, so they run on to the new one.

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::PublicKey;

use super::{Result, Service, ServiceError};
use crate::domain::audit::{ApprovalRefused, Approved, Denied, Entry, Extended};
use crate::domain::grant::{Approval, Extension, Grant, State};
use crate::domain::policy::{self, Decision, Policies, Step};
use crate::store::{Change, GrantChanges};
use crate::wire::grants::{ExtendBody, Outcome};

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Service {
    /// Asks for `body.ttl` more on grant `id`, held by `user`; with `body.certify`, a fresh
    /// certificate for `key` when the extension is given at once.
    pub async fn extend(
        &self,
        user: &str,
        key: &PublicKey,
        id: &str,
        body: &ExtendBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let mut tx = self.grant_changes().await?;
        let out = self.extend_locked(&mut tx, user, key, id, body, now).await;
        Service::settle(tx, out).await
    }

    async fn extend_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        user: &str,
        key: &PublicKey,
        id: &str,
        body: &ExtendBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let p = self.policies();
        let mut grant = self.grant_or_404(tx, id).await?;
        if grant.user != user {
            return Err(ServiceError::Denied(format!(
                "grant `{id}` is `{}`'s: only its holder extends it",
                grant.user
            )));
        }
        let state = grant.state_at(now);
        if state != State::Active {
            return Err(ServiceError::Conflict(format!(
                "grant `{id}` is {state}: only an active grant is extended; ask for the step again"
            )));
        }
        if let Some(e) = &grant.extension {
            return Err(ServiceError::Conflict(format!(
                "an extension of grant `{id}` to {} waits for approval already",
                at(e.end)
            )));
        }
        let more = policy::parse_duration(&body.ttl).ok_or_else(|| {
            ServiceError::BadRequest(format!(
                "bad ttl `{}`: write a positive duration like 30m, 2h",
                body.ttl
            ))
        })?;
        let (_, step) = step_of(&p, &grant)?;
        crate::domain::login::still_entitled(&p, user, &grant.contract)
            .map_err(|why| ServiceError::Denied(why.to_string()))?;
        let reason = body.reason.as_deref().filter(|r| !r.trim().is_empty());
        let from = grant.end;
        let ask = policy::ExtensionAsk {
            user,
            contract: &grant.contract,
            step: &grant.step,
            reason,
            start: grant.start.unwrap_or(now),
            end: grant.end.unwrap_or(now),
            more,
        };
        let to = ask.to();
        let (needed, rule) = match policy::decide_extension(&p, &ask) {
            Decision::Deny { reason, .. } => {
                return Err(ServiceError::BadRequest(format!("grant {id}: {reason}")))
            }
            Decision::Grant { by_rule, .. } => (0, by_rule),
            Decision::NeedsApproval { count, .. } => (count, None),
        };
        self.check_climbed_from(tx, &grant, step, to, now).await?;
        let extended = |pending, approvers, by_rule| Extended {
            from,
            to,
            reason: reason.map(String::from),
            pending,
            approvers,
            by_rule,
        };
        if needed > 0 {
            grant.extension = Some(Extension {
                end: to,
                reason: reason.map(String::from),
                requested_at: now,
                approvals_needed: needed,
                approvals: Vec::new(),
            });
            let change = Change {
                grants: vec![grant.clone()],
                entries: vec![Entry::new(user, id, extended(true, None, None))],
                ..Change::default()
            };
            tx.commit(change, now).await?;
            let from_roles = &step.approvals.as_ref().map(|a| a.from.join(" or "));
            return Ok(Outcome {
                grant: self.view(&p, &grant, now),
                certificate: None,
                serial: None,
                reasons: vec![format!(
                    "extending grant {id} to {} waits for {needed} approval(s) from {}; until then it ends at {}",
                    at(to),
                    from_roles.as_deref().unwrap_or(""),
                    from.map(at).unwrap_or_default()
                )],
                existing: false,
            });
        }
        grant.extend_to(to);
        let entry = Entry::new(user, id, extended(false, None, rule.clone()));
        let change = Change {
            grants: vec![grant.clone()],
            entries: vec![entry],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        let minted = match body.certify {
            true => Some(self.issue(tx, &p, &grant, key, now).await?),
            false => None,
        };
        let how = match rule {
            Some(r) => format!(" (approved by rule `{r}`)"),
            None => String::new(),
        };
        Ok(Outcome {
            grant: self.view(&p, &grant, now),
            serial: minted.as_ref().map(|m| m.serial),
            certificate: minted.map(|m| m.text),
            reasons: vec![format!("grant {id} now ends at {}{how}", at(to))],
            existing: false,
        })
    }

    /// Refuses an end past the end of the grant `grant` climbed from.
    async fn check_climbed_from(
        &self,
        tx: &mut GrantChanges<'_>,
        grant: &Grant,
        step: &Step,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some(after) = &step.after {
            let held = tx.held_steps(&grant.user, now).await?;
            let below = held
                .iter()
                .filter(|h| h.contract == grant.contract && &h.step == after)
                .map(|h| h.end)
                .max();
            match below {
                Some(end) if to <= end => {}
                Some(end) => {
                    return Err(ServiceError::BadRequest(format!(
                        "extending grant {} to {} is past the end of the `{after}` grant it climbed from ({}): extend that one first",
                        grant.id,
                        at(to),
                        at(end)
                    )))
                }
                None => {
                    return Err(ServiceError::BadRequest(format!(
                        "grant {} climbed from `{after}`, which is no longer held",
                        grant.id
                    )))
                }
            }
        }
        Ok(())
    }

    /// An approval of a grant's pending extension; the last one needed moves its end.
    pub(super) async fn approve_extension(
        &self,
        tx: &mut GrantChanges<'_>,
        approver: &str,
        mut grant: Grant,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let p = self.policies();
        let id = grant.id.clone();
        let Some(mut ext) = grant.extension.take() else {
            return Err(ServiceError::Conflict(format!(
                "grant `{id}` has no extension waiting"
            )));
        };
        let already: Vec<String> = ext.approvals.iter().map(|a| a.by.clone()).collect();
        let refusal = policy::approval_refusal(
            &p,
            &grant.contract,
            &grant.step,
            &grant.user,
            approver,
            &already,
        );
        if let Some(why) = refusal {
            let entry = Entry::new(
                approver,
                &id,
                ApprovalRefused {
                    reason: why.clone(),
                },
            );
            tx.commit(Change::audit(vec![entry]), now).await?;
            return Err(ServiceError::Denied(why.replace("request", "extension")));
        }
        ext.approvals.push(Approval {
            by: approver.to_string(),
            at: now,
        });
        let approved = Approved {
            approvals: ext.approvals.len() as u64,
            needed: ext.approvals_needed,
            extension: true,
        };
        let mut entries = vec![Entry::new(approver, &id, approved)];
        let mut reasons = Vec::new();
        if ext.approvals.len() as u32 >= ext.approvals_needed {
            let (_, step) = step_of(&p, &grant)?;
            // Checked again: the grant it climbed from may have ended or moved meanwhile.
            match self
                .check_climbed_from(tx, &grant, step, ext.end, now)
                .await
            {
                Ok(()) => {
                    let extended = Extended {
                        from: grant.end,
                        to: ext.end,
                        reason: ext.reason.clone(),
                        pending: false,
                        approvers: Some(ext.approvals.iter().map(|a| a.by.clone()).collect()),
                        by_rule: None,
                    };
                    grant.extend_to(ext.end);
                    entries.push(Entry::new(approver, &id, extended));
                    reasons.push(format!("grant {id} now ends at {}", at(ext.end)));
                }
                Err(e) => {
                    let denied = Denied {
                        reason: format!("could not extend after approval: {e}"),
                        extension: true,
                    };
                    entries.push(Entry::new(crate::domain::grant::SERVICE_ACTOR, &id, denied));
                    reasons.push(e.to_string());
                }
            }
        } else {
            reasons.push(format!(
                "extension approved {} of {}: still pending",
                ext.approvals.len(),
                ext.approvals_needed
            ));
            grant.extension = Some(ext);
        }
        let change = Change {
            grants: vec![grant.clone()],
            entries,
            ..Change::default()
        };
        tx.commit(change, now).await?;
        Ok(Outcome {
            grant: self.view(&p, &grant, now),
            certificate: None,
            serial: None,
            reasons,
            existing: false,
        })
    }

    /// Denies (or, by its holder, withdraws) a grant's pending extension; the grant stays.
    pub(super) async fn deny_extension(
        &self,
        tx: &mut GrantChanges<'_>,
        who: &str,
        mut grant: Grant,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Grant> {
        grant.extension = None;
        let denied = Denied {
            reason: reason.to_string(),
            extension: true,
        };
        let change = Change {
            grants: vec![grant.clone()],
            entries: vec![Entry::new(who, &grant.id, denied)],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        Ok(grant)
    }
}

fn step_of<'p>(p: &'p Policies, g: &Grant) -> Result<(&'p policy::Contract, &'p Step)> {
    let contract = p.contracts.get(&g.contract);
    let step = contract.and_then(|c| c.step(&g.step));
    match (contract, step) {
        (Some(c), Some(s)) => Ok((c, s)),
        _ => Err(ServiceError::Conflict(format!(
            "step `{}` is no longer in the policies",
            g.what()
        ))),
    }
}
