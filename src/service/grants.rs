//! Requests and grants: asking for a step, approving, denying, certificates from a grant,
//! and what each caller may see.

use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::PublicKey;

use super::access::{may_approve, may_deny, may_see};
use super::{new_id, Result, Service, ServiceError, MAX_GRANT_WAIT};
use crate::domain::audit::{Entry, Granted, Issued, RequestDenied, Requested};
use crate::domain::cert::{self, CertError, CertKind, CertRecord, Minted};
use crate::domain::grant::{Asked, Grant, State};
use crate::domain::policy::{self, Decision, Policies};
use crate::metrics::RequestOutcome;
use crate::store::{Change, GrantChanges, GrantNews};
use crate::wire::grants::{GrantView, Outcome, RequestBody};

/// Most windows asked for ahead (`--start`) one person may have open at once.
pub const MAX_SCHEDULED: usize = 16;

/// A certificate just minted: its line and its serial.
pub(super) struct NewCert {
    pub(super) text: String,
    pub(super) serial: u64,
}

impl Service {
    /// A grant as people see it at `now`: with its state and what it allows.
    pub(crate) fn view(&self, p: &Policies, grant: &Grant, now: DateTime<Utc>) -> GrantView {
        let contract = p.contracts.get(&grant.contract);
        let step = contract.and_then(|c| c.step(&grant.step));
        let targets = contract
            .map(|c| p.targets_of(c).map(|h| h.name.clone()).collect())
            .unwrap_or_default();
        let mut shown: crate::wire::grants::Grant = grant.into();
        shown.state = grant.state_at(now);
        GrantView {
            grant: shown,
            principals: step.map(|s| s.principals.clone()).unwrap_or_default(),
            targets,
            break_glass: step.is_some_and(|s| s.break_glass),
            options: step.map(|s| s.options.describe()).unwrap_or_default(),
        }
    }

    pub(super) async fn grant_or_404(&self, tx: &mut GrantChanges<'_>, id: &str) -> Result<Grant> {
        tx.grant(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no grant or request with id `{id}`")))
    }

    /// Decides a request against the requester's grants active at `now`, or, for a window
    /// asked for ahead, those that will be active when it opens.
    pub(super) async fn decide(
        &self,
        tx: &mut GrantChanges<'_>,
        p: &Policies,
        req: &policy::Request<'_>,
        now: DateTime<Utc>,
    ) -> Result<Decision> {
        let steps: Vec<(String, String, DateTime<Utc>)> = match req.start.filter(|s| *s > now) {
            Some(start) => tx
                .open_grants_of(&[req.user], now)
                .await?
                .into_iter()
                .filter(|g| g.is_active(start))
                .filter_map(|g| Some((g.contract, g.step, g.end?)))
                .collect(),
            None => tx
                .held_steps(req.user, now)
                .await?
                .into_iter()
                .map(|h| (h.contract, h.step, h.end))
                .collect(),
        };
        let held: Vec<policy::Held<'_>> = steps
            .iter()
            .map(|(contract, step, end)| policy::Held {
                contract,
                step,
                end: *end,
            })
            .collect();
        Ok(policy::decide(p, req, &held, now))
    }

    /// Mints a certificate for `key` from an active grant; returns it with its ledger record
    /// and the audit entry that goes with it.
    async fn mint(
        &self,
        tx: &mut GrantChanges<'_>,
        p: &Policies,
        grant: &Grant,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> Result<(NewCert, CertRecord, Entry)> {
        let step = p
            .contracts
            .get(&grant.contract)
            .and_then(|c| c.step(&grant.step))
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "contract `{}` step `{}` no longer exists in the policies",
                    grant.contract, grant.step
                ))
            })?;
        let serial = tx.next_serial().await?;
        let spec = cert::user_cert_for(grant, step, key, serial, now)?;
        let minted = cert::mint_user_cert(&self.keys.user_ca, &spec, &mut rand::rng())?;
        let text = minted.to_openssh().map_err(CertError::from)?;
        let record = CertRecord::new(
            Minted {
                kind: CertKind::User,
                serial,
                key_id: &spec.key_id,
                user: &grant.user,
                grant: &grant.id,
                principals: &step.principals,
                window: spec.window,
                key,
            },
            now,
        );
        let issued = Issued {
            grant: record.grant.clone(),
            key_id: record.key_id.clone(),
            principals: record.principals.clone(),
            valid_after: record.valid_after,
            valid_before: record.valid_before,
            key: record.fingerprint.clone(),
        };
        let entry = Entry::new(&grant.user, &serial.to_string(), issued);
        Ok((NewCert { text, serial }, record, entry))
    }

    /// Mints from an active grant and commits the certificate with its audit record.
    pub(super) async fn issue(
        &self,
        tx: &mut GrantChanges<'_>,
        p: &Policies,
        grant: &Grant,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> Result<NewCert> {
        let (minted, record, entry) = self.mint(tx, p, grant, key, now).await?;
        let change = Change {
            entries: vec![entry],
            certs: vec![record],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        self.metrics.certificate_issued(false);
        Ok(minted)
    }

    /// A request for a step the caller already holds, or already asked for, is answered from
    /// that grant instead of filing a duplicate for approvers: a certificate from the active
    /// grant when `certify`, else the grant or the pending request as it stands.
    #[allow(clippy::too_many_arguments)]
    async fn reuse(
        &self,
        tx: &mut GrantChanges<'_>,
        p: &Policies,
        grant: Grant,
        key: &PublicKey,
        certify: bool,
        mut reasons: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let id = &grant.id;
        let mut minted = None;
        if grant.is_held(now) {
            let end = grant.end.map(policy::stamp);
            let from = match grant.state_at(now) {
                State::Scheduled => format!(
                    " from {}",
                    grant.start.map(policy::stamp).unwrap_or_default()
                ),
                _ => String::new(),
            };
            reasons.push(format!(
                "you already hold grant {id} of this step{from} until {}; {}",
                end.unwrap_or_default(),
                if certify {
                    "the certificate comes from it (no new request filed)"
                } else {
                    "no new request filed"
                }
            ));
            if certify {
                minted = Some(self.issue(tx, p, &grant, key, now).await?);
            }
        } else {
            reasons.push(format!(
                "you already asked for this step: request {id} is pending ({} of {} approvals); no new request filed",
                grant.approvals.len(),
                grant.approvals_needed
            ));
        }
        Ok(Outcome {
            grant: self.view(p, &grant, now),
            serial: minted.as_ref().map(|m| m.serial),
            certificate: minted.map(|m| m.text),
            reasons,
            existing: true,
        })
    }

    /// `user`'s open window of `contract`/`step` asked for ahead from `start`, if any; none
    /// when they have [`MAX_SCHEDULED`] windows asked for ahead open already (each is a grant
    /// or a request of its own, never answered from the grant held, so their number is
    /// bounded until they end, are decided or withdrawn: pending, scheduled or open).
    async fn scheduled_twin(
        &self,
        tx: &mut GrantChanges<'_>,
        user: &str,
        contract: &str,
        step: &str,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Grant>> {
        let ahead: Vec<Grant> = tx
            .open_grants_of(&[user], now)
            .await?
            .into_iter()
            .filter(|g| g.scheduled.is_some())
            .collect();
        let twin = ahead
            .iter()
            .find(|g| g.contract == contract && g.step == step && g.scheduled == Some(start));
        if twin.is_none() && ahead.len() >= MAX_SCHEDULED {
            return Err(ServiceError::Conflict(format!(
                "you have {} windows asked for ahead open already (at most {MAX_SCHEDULED}, pending, scheduled or begun): withdraw one (ramp-ca deny ID --reason ... or ramp-ca revoke --grant ID) or wait for one to end",
                ahead.len()
            )));
        }
        Ok(twin.cloned())
    }

    /// A request for a step: granted, pending approval, or denied (and audited either way).
    pub async fn request(
        &self,
        user: &str,
        key: &PublicKey,
        body: &RequestBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let mut tx = self.grant_changes().await?;
        let out = self.request_locked(&mut tx, user, key, body, now).await;
        Service::settle(tx, out).await
    }

    async fn request_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        user: &str,
        key: &PublicKey,
        body: &RequestBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let p = self.policies();
        let ttl = match body.ttl.as_deref() {
            Some(t) => Some(policy::parse_duration(t).ok_or_else(|| {
                ServiceError::BadRequest(format!(
                    "bad ttl `{t}`: write a positive duration like 90s, 30m, 2h, 1d"
                ))
            })?),
            None => None,
        };
        let start = match body.start.as_deref() {
            Some(t) => Some(policy::parse_start(t, now).map_err(ServiceError::BadRequest)?),
            None => None,
        };
        let req = policy::Request {
            user,
            contract: &body.contract,
            step: body.step.as_deref(),
            reason: body.reason.as_deref(),
            ttl,
            start,
        };
        let decision = self.decide(tx, &p, &req, now).await?;
        let (step, ttl, from, count) = match &decision {
            Decision::Deny { reason, .. } => {
                let denied = RequestDenied {
                    contract: body.contract.clone(),
                    step: body.step.clone(),
                    ttl: body.ttl.clone(),
                    reason: body.reason.clone(),
                    denied: reason.clone(),
                    start: body.start.clone(),
                };
                let entry = Entry::new(user, &body.contract, denied);
                tx.commit(Change::audit(vec![entry]), now).await?;
                self.metrics.request(RequestOutcome::Denied);
                return Err(ServiceError::Denied(reason.clone()));
            }
            Decision::Grant { step, ttl, .. } => (step.clone(), *ttl, Vec::new(), 0),
            Decision::NeedsApproval {
                step,
                ttl,
                from,
                count,
                ..
            } => (step.clone(), *ttl, from.clone(), *count),
        };
        // A window asked for ahead is its own request, never answered by a grant held now;
        // asked again for the same start, it is answered from the first.
        let held = match start {
            Some(start) => {
                self.scheduled_twin(tx, user, &body.contract, &step, start, now)
                    .await?
            }
            None => tx.own_open_grant(user, &body.contract, &step, now).await?,
        };
        if let Some(held) = held {
            let reasons = decision.reasons().to_vec();
            return self
                .reuse(tx, &p, held, key, body.certify, reasons, now)
                .await;
        }
        let asked = Asked {
            id: new_id(),
            user,
            contract: &body.contract,
            step,
            reason: body.reason.as_deref(),
            ttl_secs: ttl.as_secs(),
            approvals_from: from,
            approvals_needed: count,
            start,
        };
        let grant = Grant::requested(asked, now);
        let requested = Requested {
            contract: grant.contract.clone(),
            step: grant.step.clone(),
            ttl_secs: grant.ttl_secs,
            reason: grant.reason.clone(),
            needs_approvals: count,
            start: grant.scheduled,
        };
        let mut change = Change::audit(vec![Entry::new(user, &grant.id, requested)]);
        if grant.is_held(now) {
            // Approved by a rule: the chain names it (and the reason it matched).
            let by_rule = match &decision {
                Decision::Grant {
                    by_rule: Some(_), ..
                } => decision.reasons().last().cloned(),
                _ => None,
            };
            let granted = Granted {
                end: grant.end,
                approvers: None,
                by_rule,
                node: Some(self.node.clone()),
            };
            change.entries.push(Entry::new(user, &grant.id, granted));
        }
        let mut certificate = None;
        // A window approved ahead gets its certificate now, valid from the window's start.
        if body.certify && grant.is_held(now) {
            let (minted, record, entry) = self.mint(tx, &p, &grant, key, now).await?;
            change.entries.push(entry);
            change.certs.push(record);
            certificate = Some(minted);
        }
        change.grants.push(grant.clone());
        tx.commit(change, now).await?;
        self.metrics.request(if count == 0 {
            RequestOutcome::Granted
        } else {
            RequestOutcome::Pending
        });
        if certificate.is_some() {
            self.metrics.certificate_issued(false);
        }
        Ok(Outcome {
            grant: self.view(&p, &grant, now),
            serial: certificate.as_ref().map(|c| c.serial),
            certificate: certificate.map(|c| c.text),
            reasons: decision.reasons().to_vec(),
            existing: false,
        })
    }

    /// A certificate for the caller's key from one of their active grants.
    pub async fn certificate(
        &self,
        user: &str,
        key: &PublicKey,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let mut tx = self.grant_changes().await?;
        let out = self.certificate_locked(&mut tx, user, key, id, now).await;
        Service::settle(tx, out).await
    }

    async fn certificate_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        user: &str,
        key: &PublicKey,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let p = self.policies();
        let grant = self.grant_or_404(tx, id).await?;
        if grant.user != user {
            return Err(ServiceError::Denied(format!(
                "grant `{id}` belongs to `{}`, not you",
                grant.user
            )));
        }
        match grant.state_at(now) {
            // Before its window, a certificate valid from its start.
            State::Active | State::Scheduled => {}
            State::Pending => {
                return Err(ServiceError::Conflict(format!(
                    "grant `{id}` is still pending: {} of {} approvals",
                    grant.approvals.len(),
                    grant.approvals_needed
                )))
            }
            other => return Err(ServiceError::Conflict(format!("grant `{id}` is {other}"))),
        }
        let minted = self.issue(tx, &p, &grant, key, now).await?;
        Ok(Outcome {
            grant: self.view(&p, &grant, now),
            certificate: Some(minted.text),
            serial: Some(minted.serial),
            reasons: Vec::new(),
            existing: false,
        })
    }

    /// Grants the caller may see: their own; everything for admins and auditors; pending
    /// requests they could approve for approvers. Ended grants only with `all`.
    pub async fn grants(
        &self,
        user: &str,
        all: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<GrantView>> {
        // Open grants come without a scan of the ledger; only `all` reads it whole.
        let grants = if all {
            self.store.grants().await?
        } else {
            self.store.open_grants(now).await?
        };
        let p = self.policies();
        Ok(grants
            .iter()
            .filter(|g| may_see(&p, user, g))
            .filter(|g| all || g.is_open(now))
            .map(|g| self.view(&p, g, now))
            .collect())
    }

    /// One grant, if the caller may see it: one keyed read.
    pub async fn grant(&self, user: &str, id: &str, now: DateTime<Utc>) -> Result<GrantView> {
        let found = self.store.grant(id).await?;
        let p = self.policies();
        match found {
            Some(g) if may_see(&p, user, &g) => Ok(self.view(&p, &g, now)),
            _ => Err(ServiceError::NotFound(format!(
                "no grant or request with id `{id}` that you may see"
            ))),
        }
    }

    /// [`Service::grant`], but while the grant is pending, answers only once it is decided
    /// (or after `wait`, at most [`MAX_GRANT_WAIT`]): a waiting `sign --wait` costs a
    /// subscription, not a poll of the ledger.
    pub async fn wait_grant(&self, user: &str, id: &str, wait: Duration) -> Result<GrantView> {
        self.wait_grant_while(user, id, wait, |v| v.grant.state == State::Pending)
            .await
    }

    /// [`Service::wait_grant`] while `waiting` holds of the grant (a pending request, or a
    /// pending extension).
    pub async fn wait_grant_while(
        &self,
        user: &str,
        id: &str,
        wait: Duration,
        waiting: impl Fn(&GrantView) -> bool,
    ) -> Result<GrantView> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_GRANT_WAIT);
        // Subscribed before the first read, so no write between the two goes unseen.
        let mut writes = self.store.subscribe_grants();
        loop {
            let view = self.grant(user, id, Utc::now()).await?;
            if !waiting(&view) {
                return Ok(view);
            }
            loop {
                match tokio::time::timeout_at(deadline, writes.recv()).await {
                    Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return Ok(view)
                    }
                    Ok(Ok(GrantNews::Written(written))) if written != id => continue,
                    // This grant was written, or writes were missed: read it again.
                    Ok(_) => break,
                }
            }
        }
    }

    /// Whether `who` may approve the pending request `g` and may deny it (for the pages).
    pub(crate) fn pending_rights(&self, p: &Policies, who: &str, g: &Grant) -> (bool, bool) {
        (may_approve(p, who, g), may_deny(p, who, g))
    }
}
