//! Deciding requests: approvals (the last one activates the grant, or opens its window at its
//! start) and denials, by eligible approvers or by the requester withdrawing their own.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::access::may_deny;
use super::{Result, Service, ServiceError};
use crate::domain::audit::{ApprovalRefused, Approved, Denied, Entry, Granted};
use crate::domain::grant::{Grant, State, SERVICE_ACTOR};
use crate::domain::policy::{self, Decision};
use crate::store::{Change, GrantChanges};
use crate::wire::grants::{GrantView, Outcome};

impl Service {
    /// A pending request, or why it is not one.
    async fn pending_or_409(
        &self,
        tx: &mut GrantChanges<'_>,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Grant> {
        let grant = self.grant_or_404(tx, id).await?;
        match grant.state_at(now) {
            State::Pending => Ok(grant),
            other => Err(ServiceError::Conflict(format!(
                "request `{id}` is {other}, not pending"
            ))),
        }
    }

    /// An approval; the last one needed activates the grant.
    pub async fn approve(&self, approver: &str, id: &str, now: DateTime<Utc>) -> Result<Outcome> {
        let mut tx = self.grant_changes().await?;
        let out = self.approve_locked(&mut tx, approver, id, now).await;
        Service::settle(tx, out).await
    }

    async fn approve_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        approver: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let p = self.policies();
        let found = self.grant_or_404(tx, id).await?;
        if found.extension.is_some() && found.is_active(now) {
            return self.approve_extension(tx, approver, found, now).await;
        }
        let mut grant = self.pending_or_409(tx, id, now).await?;
        if let Some(why) = policy::approval_refusal(
            &p,
            &grant.contract,
            &grant.step,
            &grant.user,
            approver,
            &grant.approvers(),
        ) {
            let refused = ApprovalRefused {
                reason: why.clone(),
            };
            let entry = Entry::new(approver, id, refused);
            tx.commit(Change::audit(vec![entry]), now).await?;
            return Err(ServiceError::Denied(why));
        }
        let complete = grant.approve(approver, now);
        let approved = Approved {
            approvals: grant.approvals.len() as u64,
            needed: grant.approvals_needed,
            extension: false,
        };
        let mut entries = vec![Entry::new(approver, id, approved)];
        let mut reasons = Vec::new();
        if complete {
            // Re-decide at activation: the step it climbs from may have ended meanwhile.
            let req = policy::Request {
                user: &grant.user,
                contract: &grant.contract,
                step: Some(&grant.step),
                reason: grant.reason.as_deref(),
                ttl: Some(Duration::from_secs(grant.ttl_secs)),
                start: grant.scheduled.filter(|s| *s > now),
            };
            match self.decide(tx, &p, &req, now).await? {
                Decision::Deny { reason, .. } => {
                    let why = format!("could not activate after approval: {reason}");
                    grant.close(State::Denied, SERVICE_ACTOR, now, &why);
                    let denied = Denied {
                        reason: reason.clone(),
                        extension: false,
                    };
                    entries.push(Entry::new(SERVICE_ACTOR, id, denied));
                    reasons.push(reason);
                }
                d => {
                    if let Decision::Grant { ttl, .. } | Decision::NeedsApproval { ttl, .. } = &d {
                        grant.ttl_secs = grant.ttl_secs.min(ttl.as_secs());
                    }
                    reasons = d.reasons().to_vec();
                    grant.activate(now);
                    let granted = Granted {
                        end: grant.end,
                        approvers: Some(grant.approvers()),
                        by_rule: None,
                        node: Some(self.node.clone()),
                    };
                    entries.push(Entry::new(approver, id, granted));
                }
            }
        }
        let change = Change {
            grants: vec![grant.clone()],
            entries,
            ..Change::default()
        };
        tx.commit(change, now).await?;
        self.metrics.approval();
        Ok(Outcome {
            grant: self.view(&p, &grant, now),
            certificate: None,
            serial: None,
            reasons,
            existing: false,
        })
    }

    /// A denial by an eligible approver, or the requester withdrawing their own request.
    pub async fn deny(
        &self,
        who: &str,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<GrantView> {
        let mut tx = self.grant_changes().await?;
        let out = self.deny_locked(&mut tx, who, id, reason, now).await;
        Service::settle(tx, out).await
    }

    async fn deny_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        who: &str,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<GrantView> {
        let p = self.policies();
        let found = self.grant_or_404(tx, id).await?;
        let extension = found.extension.is_some() && found.is_active(now);
        let mut grant = match extension {
            true => found,
            false => self.pending_or_409(tx, id, now).await?,
        };
        if reason.trim().is_empty() {
            return Err(ServiceError::BadRequest(
                "a denial needs a reason (--reason)".into(),
            ));
        }
        if extension && may_deny(&p, who, &grant) {
            let grant = self.deny_extension(tx, who, grant, reason, now).await?;
            return Ok(self.view(&p, &grant, now));
        }
        if !may_deny(&p, who, &grant) {
            return Err(ServiceError::Denied(format!(
                "`{who}` may not deny this request: it takes one of the roles {} (or ramp-admin)",
                grant.approvals_from.join(", ")
            )));
        }
        grant.close(State::Denied, who, now, reason);
        let denied = Denied {
            reason: reason.to_string(),
            extension: false,
        };
        let change = Change {
            grants: vec![grant.clone()],
            entries: vec![Entry::new(who, id, denied)],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        Ok(self.view(&p, &grant, now))
    }
}
