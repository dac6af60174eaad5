//! What the daemon does for a signed-in caller, independent of HTTP: request, approve, deny,
//! mint, revoke, KRL, host certificates, audit. Every change lands in the ledger with its audit
//! records in one commit. `now` is an argument so tests can move the clock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ca;
use crate::grant::{Approval, Closure, Grant, State, Status};
use crate::keys::{self, Keys};
use crate::metrics::{Metrics, RequestOutcome};
use crate::policy::{self, Decision, Policies, ROLE_ADMIN, ROLE_AUDITOR};
use crate::recording::{Event as RecEvent, SessionMeta};
use crate::store::{
    AuditRecord, AuditReport, CertRecord, Change, Event, Revocation, RevokeTarget, Store,
    StoreError,
};

/// Most hits a search returns.
pub const GREP_LIMIT: usize = 1000;

/// The longest a request waits on a pending grant before it is answered as it stands.
pub const MAX_GRANT_WAIT: Duration = Duration::from_secs(25);

/// Host certificates last this long unless asked otherwise.
pub const HOST_CERT_TTL: Duration = Duration::from_secs(365 * 86400);

/// Why the service refused or failed a call; the HTTP layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

type Result<T> = std::result::Result<T, ServiceError>;

/// `POST /v1/requests`: ask for a step, and optionally a certificate for the signing key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub contract: String,
    #[serde(default)]
    pub step: Option<String>,
    /// Like `30m`; defaults to the step's max_ttl.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Mint a certificate for the signing key right away when granted.
    #[serde(default)]
    pub certify: bool,
}

/// A grant as shown to people: the record plus its state now and what it allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: Grant,
    pub state: State,
    pub principals: Vec<String>,
    pub targets: Vec<String>,
}

/// What a request, approval or certificate call returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub grant: GrantView,
    /// The certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA...`), when one was minted.
    pub certificate: Option<String>,
    pub serial: Option<u64>,
    /// Why the policy decided as it did.
    pub reasons: Vec<String>,
    /// The answer comes from a grant or request the caller already had: nothing new was
    /// filed (the last reason says which).
    #[serde(default)]
    pub existing: bool,
}

/// `POST /v1/revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub serial: Option<u64>,
    pub grant: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/hosts/sign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignHostBody {
    pub name: String,
    pub public_key: String,
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The running CA: policies, keys and the ledger.
pub struct Service {
    /// The installation root (`keys/`, `policies/`, `data/`).
    pub dir: PathBuf,
    /// Swapped whole on reload, so a request sees one consistent version.
    policies: RwLock<Arc<Policies>>,
    pub keys: Keys,
    pub store: Store,
    /// Bumped on every revocation, so the bastion cuts sessions off at once.
    revoked: tokio::sync::watch::Sender<u64>,
    /// Held across read, check and commit of any grant change, so two changes to one grant
    /// (an approval racing a revocation) cannot overwrite each other.
    grant_changes: std::sync::Mutex<()>,
    /// Counters for `/metrics`, shared with the bastion and the notifier.
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// Opens an installation whose keys and policies exist (see `init`).
    pub fn open(dir: &Path) -> std::result::Result<Service, crate::Error> {
        let policies = policy::load_dir(&dir.join("policies"))?;
        let keys = Keys::load(&dir.join("keys"))?;
        let store = Store::open(&dir.join("data"))?;
        Ok(Service {
            dir: dir.to_path_buf(),
            policies: RwLock::new(Arc::new(policies)),
            keys,
            store,
            revoked: tokio::sync::watch::channel(0).0,
            grant_changes: std::sync::Mutex::new(()),
            metrics: Arc::new(Metrics::default()),
        })
    }

    fn lock_grants(&self) -> std::sync::MutexGuard<'_, ()> {
        self.grant_changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a change made under the grant lock (written with [`Store::apply`]), then, with
    /// the lock released, waits until it is on disk: concurrent changes share disk flushes
    /// instead of queueing behind each other's. Nobody sees an answer before its change, and
    /// every change it read, are durable (flushes cover every write made before them).
    async fn changing<T>(&self, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let out = change();
        self.store.durable().await?;
        out
    }

    /// Forgets request nonces whose timestamps would be refused anyway (see [`crate::auth`]);
    /// the daemon calls it on a timer, never on a request's path.
    pub fn forget_old_nonces(&self, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = seconds_before(now, 2 * crate::auth::MAX_SKEW_SECS);
        Ok(self.store.forget_nonces(cutoff)?)
    }

    /// Changes whenever something is revoked.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the policy directory; on problems the old policies stay in force.
    pub fn reload_policies(&self) -> std::result::Result<(), policy::Problems> {
        let fresh = policy::load_dir(&self.dir.join("policies"))?;
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    fn view(&self, p: &Policies, grant: Grant, now: DateTime<Utc>) -> GrantView {
        let contract = p.contracts.get(&grant.contract);
        let principals = contract
            .and_then(|c| c.step(&grant.step))
            .map(|s| s.principals.clone())
            .unwrap_or_default();
        let targets = contract
            .map(|c| p.targets_of(c).map(|h| h.name.clone()).collect())
            .unwrap_or_default();
        GrantView {
            state: grant.state(now),
            grant,
            principals,
            targets,
        }
    }

    fn grant_or_404(&self, id: &str) -> Result<Grant> {
        self.store
            .grant(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("no grant or request with id `{id}`")))
    }

    /// Decides a request against the requester's grants active at `now`.
    fn decide(
        &self,
        p: &Policies,
        req: &policy::Request<'_>,
        now: DateTime<Utc>,
    ) -> Result<Decision> {
        let steps = self.store.held_steps(req.user, now);
        let held: Vec<policy::Held<'_>> = steps
            .iter()
            .map(|h| policy::Held {
                contract: &h.contract,
                step: &h.step,
                end: h.end,
            })
            .collect();
        Ok(policy::decide(p, req, &held, now))
    }

    /// Mints a certificate for `key` from an active grant; returns it with its ledger record.
    fn mint(
        &self,
        p: &Policies,
        grant: &Grant,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> Result<(String, CertRecord)> {
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
        let serial = self.store.next_serial()?;
        let spec = ca::user_cert_for(grant, step, key, serial, now)?;
        let cert = ca::mint_user_cert(&self.keys.user_ca, &spec, &mut rand::rng())?;
        let text = cert.to_openssh().map_err(ca::CaError::from)?;
        let record = CertRecord {
            serial,
            key_id: spec.key_id.clone(),
            kind: "user".into(),
            user: grant.user.clone(),
            grant: grant.id.clone(),
            principals: step.principals.clone(),
            valid_after: spec.valid_after,
            valid_before: spec.valid_before,
            fingerprint: keys::fingerprint(key),
            issued_at: now,
        };
        Ok((text, record))
    }

    fn issue_event(user: &str, r: &CertRecord) -> Event {
        Event::new(
            user,
            "issue",
            &r.serial.to_string(),
            json!({"grant": r.grant, "key_id": r.key_id, "principals": r.principals,
                   "valid_after": r.valid_after, "valid_before": r.valid_before, "key": r.fingerprint}),
        )
    }

    /// Mints from an active grant and records the certificate with its audit event.
    fn issue(
        &self,
        p: &Policies,
        grant: &Grant,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> Result<(String, u64)> {
        let (text, record) = self.mint(p, grant, key, now)?;
        let serial = record.serial;
        self.store.apply(
            Change {
                events: vec![Self::issue_event(&grant.user, &record)],
                certs: vec![record],
                ..Change::default()
            },
            now,
        )?;
        self.metrics.certificate_issued(false);
        Ok((text, serial))
    }

    /// A request for a step the caller already holds, or already asked for, is answered from
    /// that grant instead of filing a duplicate for approvers: a certificate from the active
    /// grant when `certify`, else the grant or the pending request as it stands.
    fn reuse(
        &self,
        p: &Policies,
        grant: Grant,
        key: &PublicKey,
        certify: bool,
        mut reasons: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let id = grant.id.clone();
        let mut minted = None;
        if grant.state(now) == State::Active {
            let end = grant
                .end
                .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            reasons.push(format!(
                "you already hold grant {id} of this step until {}; {}",
                end.unwrap_or_default(),
                if certify {
                    "the certificate comes from it (no new request filed)"
                } else {
                    "no new request filed"
                }
            ));
            if certify {
                minted = Some(self.issue(p, &grant, key, now)?);
            }
        } else {
            reasons.push(format!(
                "you already asked for this step: request {id} is pending ({} of {} approvals); no new request filed",
                grant.approvals.len(),
                grant.approvals_needed
            ));
        }
        Ok(Outcome {
            grant: self.view(p, grant, now),
            serial: minted.as_ref().map(|m| m.1),
            certificate: minted.map(|m| m.0),
            reasons,
            existing: true,
        })
    }

    /// A request for a step: granted, pending approval, or denied (and audited either way).
    pub async fn request(
        &self,
        user: &str,
        key: &PublicKey,
        body: &RequestBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        self.changing(|| self.request_locked(user, key, body, now))
            .await
    }

    fn request_locked(
        &self,
        user: &str,
        key: &PublicKey,
        body: &RequestBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let _changes = self.lock_grants();
        let p = self.policies();
        let ttl = match body.ttl.as_deref() {
            Some(t) => Some(policy::parse_duration(t).ok_or_else(|| {
                ServiceError::BadRequest(format!(
                    "bad ttl `{t}`: write a positive duration like 90s, 30m, 2h, 1d"
                ))
            })?),
            None => None,
        };
        let req = policy::Request {
            user,
            contract: &body.contract,
            step: body.step.as_deref(),
            reason: body.reason.as_deref(),
            ttl,
        };
        let decision = self.decide(&p, &req, now)?;
        let asked = json!({"contract": body.contract, "step": body.step, "ttl": body.ttl, "reason": body.reason});
        let (step, ttl, from, count) = match &decision {
            Decision::Deny { reason, .. } => {
                let mut detail = asked;
                detail["denied"] = json!(reason);
                self.store.apply_events(
                    vec![Event::new(user, "request-denied", &body.contract, detail)],
                    now,
                )?;
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
        if let Some(held) = self.store.own_open_grant(user, &body.contract, &step, now) {
            return self.reuse(
                &p,
                held,
                key,
                body.certify,
                decision.reasons().to_vec(),
                now,
            );
        }
        let mut grant = Grant {
            id: new_id(),
            user: user.to_string(),
            contract: body.contract.clone(),
            step,
            reason: body.reason.clone().filter(|r| !r.trim().is_empty()),
            ttl_secs: ttl.as_secs(),
            requested_at: now,
            status: Status::Pending,
            start: None,
            end: None,
            approvals_from: from,
            approvals_needed: count,
            approvals: Vec::new(),
            closed: None,
        };
        let mut events = vec![Event::new(
            user,
            "request",
            &grant.id,
            json!({"contract": grant.contract, "step": grant.step, "ttl_secs": grant.ttl_secs,
                   "reason": grant.reason, "needs_approvals": count}),
        )];
        if count == 0 {
            grant.activate(now);
            events.push(Event::new(
                user,
                "grant",
                &grant.id,
                json!({"end": grant.end}),
            ));
        }
        let mut change = Change::default();
        let mut certificate = None;
        if body.certify && count == 0 {
            let (text, record) = self.mint(&p, &grant, key, now)?;
            events.push(Self::issue_event(user, &record));
            certificate = Some((text, record.serial));
            change.certs.push(record);
        }
        change.grants.push(grant.clone());
        change.events = events;
        self.store.apply(change, now)?;
        self.metrics.request(if count == 0 {
            RequestOutcome::Granted
        } else {
            RequestOutcome::Pending
        });
        if certificate.is_some() {
            self.metrics.certificate_issued(false);
        }
        Ok(Outcome {
            grant: self.view(&p, grant, now),
            serial: certificate.as_ref().map(|c| c.1),
            certificate: certificate.map(|c| c.0),
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
        self.changing(|| self.certificate_locked(user, key, id, now))
            .await
    }

    fn certificate_locked(
        &self,
        user: &str,
        key: &PublicKey,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let _changes = self.lock_grants();
        let p = self.policies();
        let grant = self.grant_or_404(id)?;
        if grant.user != user {
            return Err(ServiceError::Denied(format!(
                "grant `{id}` belongs to `{}`, not you",
                grant.user
            )));
        }
        match grant.state(now) {
            State::Active => {}
            State::Pending => {
                return Err(ServiceError::Conflict(format!(
                    "grant `{id}` is still pending: {} of {} approvals",
                    grant.approvals.len(),
                    grant.approvals_needed
                )))
            }
            other => return Err(ServiceError::Conflict(format!("grant `{id}` is {other}"))),
        }
        let (text, serial) = self.issue(&p, &grant, key, now)?;
        Ok(Outcome {
            grant: self.view(&p, grant, now),
            certificate: Some(text),
            serial: Some(serial),
            reasons: Vec::new(),
            existing: false,
        })
    }

    /// An approval; the last one needed activates the grant.
    pub async fn approve(&self, approver: &str, id: &str, now: DateTime<Utc>) -> Result<Outcome> {
        self.changing(|| self.approve_locked(approver, id, now))
            .await
    }

    fn approve_locked(&self, approver: &str, id: &str, now: DateTime<Utc>) -> Result<Outcome> {
        let _changes = self.lock_grants();
        let p = self.policies();
        let mut grant = self.grant_or_404(id)?;
        if grant.state(now) != State::Pending {
            return Err(ServiceError::Conflict(format!(
                "request `{id}` is {}, not pending",
                grant.state(now)
            )));
        }
        if let Some(why) = policy::approval_refusal(
            &p,
            &grant.contract,
            &grant.step,
            &grant.user,
            approver,
            &grant.approvers(),
        ) {
            self.store.apply_events(
                vec![Event::new(
                    approver,
                    "approve-refused",
                    id,
                    json!({"reason": why}),
                )],
                now,
            )?;
            return Err(ServiceError::Denied(why));
        }
        grant.approvals.push(Approval {
            by: approver.to_string(),
            at: now,
        });
        let mut events = vec![Event::new(
            approver,
            "approve",
            id,
            json!({"approvals": grant.approvals.len(), "needed": grant.approvals_needed}),
        )];
        let mut reasons = Vec::new();
        if grant.approvals.len() as u32 >= grant.approvals_needed {
            // Re-decide at activation: the step it climbs from may have ended meanwhile.
            let req = policy::Request {
                user: &grant.user,
                contract: &grant.contract,
                step: Some(&grant.step),
                reason: grant.reason.as_deref(),
                ttl: Some(Duration::from_secs(grant.ttl_secs)),
            };
            match self.decide(&p, &req, now)? {
                Decision::Deny { reason, .. } => {
                    grant.status = Status::Denied;
                    grant.closed = Some(Closure {
                        by: "ramp-ca".into(),
                        at: now,
                        reason: format!("could not activate after approval: {reason}"),
                    });
                    events.push(Event::new("ramp-ca", "deny", id, json!({"reason": reason})));
                    reasons.push(reason);
                }
                d => {
                    if let Decision::Grant { ttl, .. } | Decision::NeedsApproval { ttl, .. } = &d {
                        grant.ttl_secs = grant.ttl_secs.min(ttl.as_secs());
                    }
                    reasons = d.reasons().to_vec();
                    grant.activate(now);
                    events.push(Event::new(
                        approver,
                        "grant",
                        id,
                        json!({"end": grant.end, "approvers": grant.approvers()}),
                    ));
                }
            }
        }
        self.store.apply(
            Change {
                grants: vec![grant.clone()],
                events,
                ..Change::default()
            },
            now,
        )?;
        self.metrics.approval();
        Ok(Outcome {
            grant: self.view(&p, grant, now),
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
        self.changing(|| self.deny_locked(who, id, reason, now))
            .await
    }

    fn deny_locked(
        &self,
        who: &str,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<GrantView> {
        let _changes = self.lock_grants();
        let p = self.policies();
        let mut grant = self.grant_or_404(id)?;
        if grant.state(now) != State::Pending {
            return Err(ServiceError::Conflict(format!(
                "request `{id}` is {}, not pending",
                grant.state(now)
            )));
        }
        if reason.trim().is_empty() {
            return Err(ServiceError::BadRequest(
                "a denial needs a reason (--reason)".into(),
            ));
        }
        let may = who == grant.user
            || p.has_role(who, ROLE_ADMIN)
            || grant.approvals_from.iter().any(|r| p.has_role(who, r));
        if !may {
            return Err(ServiceError::Denied(format!(
                "`{who}` may not deny this request: it takes one of the roles {} (or ramp-admin)",
                grant.approvals_from.join(", ")
            )));
        }
        grant.status = Status::Denied;
        grant.closed = Some(Closure {
            by: who.to_string(),
            at: now,
            reason: reason.to_string(),
        });
        self.store.apply(
            Change {
                grants: vec![grant.clone()],
                events: vec![Event::new(who, "deny", id, json!({"reason": reason}))],
                ..Change::default()
            },
            now,
        )?;
        Ok(self.view(&p, grant, now))
    }

    /// Whether `user` may see `g`: their own; everything for admins and auditors; pending
    /// requests they could approve for approvers.
    fn may_see(p: &Policies, user: &str, g: &Grant) -> bool {
        g.user == user
            || p.has_role(user, ROLE_ADMIN)
            || p.has_role(user, ROLE_AUDITOR)
            || (g.status == Status::Pending && g.approvals_from.iter().any(|r| p.has_role(user, r)))
    }

    /// Grants the caller may see ([`Service::may_see`]). Ended grants only with `all`.
    pub fn grants(&self, user: &str, all: bool, now: DateTime<Utc>) -> Result<Vec<GrantView>> {
        let p = self.policies();
        // Open grants are kept in memory; only `all` reads the whole ledger.
        let grants = if all {
            self.store.grants()?
        } else {
            self.store.open_grants(now)
        };
        Ok(grants
            .into_iter()
            .filter(|g| Self::may_see(&p, user, g))
            .filter(|g| all || matches!(g.state(now), State::Active | State::Pending))
            .map(|g| self.view(&p, g, now))
            .collect())
    }

    /// One grant, if the caller may see it: one keyed read.
    pub fn grant(&self, user: &str, id: &str, now: DateTime<Utc>) -> Result<GrantView> {
        let p = self.policies();
        match self.store.grant(id)? {
            Some(g) if Self::may_see(&p, user, &g) => Ok(self.view(&p, g, now)),
            _ => Err(ServiceError::NotFound(format!(
                "no grant or request with id `{id}` that you may see"
            ))),
        }
    }

    /// [`Service::grant`], but while the grant is pending, answers only once it is decided
    /// (or after `wait`, at most [`MAX_GRANT_WAIT`]): a waiting `sign --wait` costs a
    /// subscription, not a poll of the ledger.
    pub async fn wait_grant(&self, user: &str, id: &str, wait: Duration) -> Result<GrantView> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_GRANT_WAIT);
        // Subscribed before the first read, so no write between the two goes unseen.
        let mut writes = self.store.subscribe_grants();
        loop {
            let view = self.grant(user, id, Utc::now())?;
            if view.state != State::Pending {
                return Ok(view);
            }
            loop {
                match tokio::time::timeout_at(deadline, writes.recv()).await {
                    Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        return Ok(view)
                    }
                    Ok(Ok(written)) if written != id => continue,
                    // This grant was written, or writes were missed: read it again.
                    Ok(_) => break,
                }
            }
        }
    }

    /// Revokes by serial, grant or user. Admins revoke anything; others only their own grants.
    pub async fn revoke(
        &self,
        who: &str,
        body: &RevokeBody,
        now: DateTime<Utc>,
    ) -> Result<Revocation> {
        self.changing(|| self.revoke_locked(who, body, now)).await
    }

    fn revoke_locked(
        &self,
        who: &str,
        body: &RevokeBody,
        now: DateTime<Utc>,
    ) -> Result<Revocation> {
        let _changes = self.lock_grants();
        let p = self.policies();
        let admin = p.has_role(who, ROLE_ADMIN);
        let target = match (body.serial, &body.grant, &body.user) {
            (Some(s), None, None) => RevokeTarget::Serial(s),
            (None, Some(g), None) => RevokeTarget::Grant(g.clone()),
            (None, None, Some(u)) => RevokeTarget::User(u.clone()),
            _ => {
                return Err(ServiceError::BadRequest(
                    "revoke exactly one of --serial, --grant or --user".into(),
                ))
            }
        };
        let certs = self.store.certs()?;
        let grants = self.store.grants()?;
        let (mut serials, mut hit): (Vec<u64>, Vec<Grant>) = match &target {
            RevokeTarget::Serial(s) => {
                let c = certs.iter().find(|c| c.serial == *s).ok_or_else(|| {
                    ServiceError::NotFound(format!("no certificate with serial {s} in the ledger"))
                })?;
                if !admin && c.user != who {
                    return Err(ServiceError::Denied(format!(
                        "serial {s} belongs to `{}`; only ramp-admin may revoke it",
                        c.user
                    )));
                }
                (vec![*s], Vec::new())
            }
            RevokeTarget::Grant(id) => {
                let g = grants
                    .iter()
                    .find(|g| &g.id == id)
                    .ok_or_else(|| ServiceError::NotFound(format!("no grant with id `{id}`")))?;
                if !admin && g.user != who {
                    return Err(ServiceError::Denied(format!(
                        "grant `{id}` belongs to `{}`; only ramp-admin may revoke it",
                        g.user
                    )));
                }
                (Vec::new(), vec![g.clone()])
            }
            RevokeTarget::User(u) => {
                if !admin && u != who {
                    return Err(ServiceError::Denied(
                        "only ramp-admin may revoke another user".into(),
                    ));
                }
                if !p.users.contains_key(u) && !grants.iter().any(|g| &g.user == u) {
                    return Err(ServiceError::NotFound(format!(
                        "no user `{u}` in people.yaml or the ledger"
                    )));
                }
                (
                    Vec::new(),
                    grants.iter().filter(|g| &g.user == u).cloned().collect(),
                )
            }
        };
        let (fell, shortened) = fallout(&p, &grants, &hit, now);
        hit.extend(fell);
        // A revoked grant takes every certificate minted from it along.
        for g in &hit {
            serials.extend(certs.iter().filter(|c| c.grant == g.id).map(|c| c.serial));
        }
        serials.sort_unstable();
        serials.dedup();
        let reason = body.reason.clone().unwrap_or_else(|| "revoked".into());
        hit.retain(|g| matches!(g.state(now), State::Active | State::Pending));
        for g in &mut hit {
            g.status = Status::Revoked;
            g.closed = Some(Closure {
                by: who.to_string(),
                at: now,
                reason: reason.clone(),
            });
        }
        let revocation = Revocation {
            target: target.clone(),
            by: who.to_string(),
            at: now,
            reason: reason.clone(),
            serials: serials.clone(),
            grants: hit.iter().map(|g| g.id.clone()).collect(),
        };
        let subject = match &target {
            RevokeTarget::Serial(s) => format!("serial:{s}"),
            RevokeTarget::Grant(g) => format!("grant:{g}"),
            RevokeTarget::User(u) => format!("user:{u}"),
        };
        let moved: Vec<serde_json::Value> = shortened
            .iter()
            .map(|g| json!({"grant": g.id, "end": g.end}))
            .collect();
        let mut written = hit;
        written.extend(shortened);
        self.store.apply(
            Change {
                grants: written,
                revocation: Some(revocation.clone()),
                events: vec![Event::new(
                    who,
                    "revoke",
                    &subject,
                    json!({"reason": reason, "serials": serials, "grants": revocation.grants,
                           "shortened": moved}),
                )],
                ..Change::default()
            },
            now,
        )?;
        self.revoked.send_modify(|n| *n += 1);
        self.metrics.revocation();
        Ok(revocation)
    }

    /// An OpenSSH KRL of every revoked user certificate. It depends on the ledger only: its
    /// version is the number of revocations and its time the last one's, so it is byte for
    /// byte the same until the next revocation (and a file deployed from it changes only
    /// then).
    pub fn krl(&self) -> Result<Vec<u8>> {
        let serials = self.store.revoked_serials()?;
        let revocations = self.store.revocations()?;
        let version = revocations.len() as u64;
        let generated = revocations
            .iter()
            .map(|r| r.at.timestamp())
            .max()
            .unwrap_or(0);
        let ca = self.keys.user_ca.public_key();
        let node = self.keys.node_ca.public_key();
        let sections = [
            crate::krl::RevokedCerts {
                ca,
                serials: serials.clone(),
                key_ids: Vec::new(),
            },
            // Targets trust node-ca; the bastion's hop certificates reuse the user's serial.
            crate::krl::RevokedCerts {
                ca: node,
                serials: serials.clone(),
                key_ids: Vec::new(),
            },
            // Clients that trust host-ca can refuse a revoked host certificate too.
            crate::krl::RevokedCerts {
                ca: self.keys.host_ca.public_key(),
                serials,
                key_ids: Vec::new(),
            },
        ];
        Ok(crate::krl::encode(
            &sections,
            version,
            generated.max(0) as u64,
            "ramp-ca",
        ))
    }

    /// A host certificate for a target (or any host name an admin vouches for).
    pub fn sign_host(&self, who: &str, body: &SignHostBody, now: DateTime<Utc>) -> Result<String> {
        let p = self.policies();
        if !p.has_role(who, ROLE_ADMIN) {
            return Err(ServiceError::Denied(
                "signing host certificates takes ramp-admin".into(),
            ));
        }
        if !policy::valid_name(&body.name) {
            return Err(ServiceError::BadRequest(format!(
                "bad host name `{}`",
                body.name
            )));
        }
        let key = keys::parse_public(&body.public_key).map_err(|e| {
            ServiceError::BadRequest(format!("--pubkey is not an OpenSSH public key: {e}"))
        })?;
        let ttl = match body.ttl.as_deref() {
            Some(t) => policy::parse_duration(t)
                .ok_or_else(|| ServiceError::BadRequest(format!("bad ttl `{t}`")))?,
            None => HOST_CERT_TTL,
        };
        let mut principals = vec![body.name.clone()];
        if let Some(h) = p.hosts.get(&body.name) {
            let host = h
                .address
                .rsplit_once(':')
                .map_or(h.address.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host != body.name {
                principals.push(host.to_string());
            }
        }
        let cert = issue_host_cert(
            &self.store,
            &self.keys.host_ca,
            &key,
            &body.name,
            principals,
            ttl,
            who,
            now,
        )?;
        self.metrics.certificate_issued(true);
        Ok(cert)
    }

    fn require_auditor(&self, who: &str) -> Result<()> {
        let p = self.policies();
        if p.has_role(who, ROLE_ADMIN) || p.has_role(who, ROLE_AUDITOR) {
            Ok(())
        } else {
            Err(ServiceError::Denied(
                "reading the audit log takes ramp-admin or ramp-auditor".into(),
            ))
        }
    }

    /// Recorded sessions matching `filter`, for admins and auditors; the listing is audited.
    pub fn sessions(
        &self,
        who: &str,
        filter: &SessionFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionMeta>> {
        self.require_reviewer(who)?;
        let out: Vec<SessionMeta> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|s| filter.matches(s, now))
            .collect();
        self.store.audit_events(
            vec![Event::new(
                who,
                "sessions-list",
                "sessions",
                json!({"filter": filter, "count": out.len()}),
            )],
            now,
        )?;
        Ok(out)
    }

    /// One session's metadata and events, for admins and auditors; every read is audited
    /// with its purpose (show, play, export).
    pub fn session(
        &self,
        who: &str,
        id: &str,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<(SessionMeta, Vec<RecEvent>)> {
        self.require_reviewer(who)?;
        let meta = self
            .store
            .session(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("no recorded session with id `{id}`")))?;
        let events = self.store.session_events(&meta)?;
        self.store.audit_events(
            vec![Event::new(
                who,
                "session-read",
                id,
                json!({"purpose": purpose, "user": meta.user, "target": meta.target}),
            )],
            now,
        )?;
        Ok((meta, events))
    }

    /// Searches recordings for a pattern, for admins and auditors; the search is audited.
    pub fn grep(
        &self,
        who: &str,
        body: &GrepBody,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::review::Hit>> {
        self.require_reviewer(who)?;
        if body.pattern.is_empty() {
            return Err(ServiceError::BadRequest(
                "the search pattern is empty".into(),
            ));
        }
        let mut hits = Vec::new();
        for meta in self
            .store
            .sessions()?
            .iter()
            .filter(|s| body.filter.matches(s, now))
        {
            let events = self.store.session_events(meta)?;
            hits.extend(crate::review::grep(
                meta,
                &events,
                &body.pattern,
                GREP_LIMIT - hits.len().min(GREP_LIMIT),
            ));
            if hits.len() >= GREP_LIMIT {
                break;
            }
        }
        self.store.audit_events(
            vec![Event::new(
                who,
                "sessions-grep",
                "sessions",
                json!({"pattern": body.pattern, "filter": body.filter, "hits": hits.len()}),
            )],
            now,
        )?;
        Ok(hits)
    }

    fn require_reviewer(&self, who: &str) -> Result<()> {
        let p = self.policies();
        if p.has_role(who, ROLE_ADMIN) || p.has_role(who, ROLE_AUDITOR) {
            Ok(())
        } else {
            Err(ServiceError::Denied(
                "reading recordings takes ramp-admin or ramp-auditor".into(),
            ))
        }
    }

    /// Audit records since a time, for admins and auditors.
    /// `since_secs` back from `now` (any value: absurd ones saturate), after the role check.
    pub fn audit(
        &self,
        who: &str,
        since_secs: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>> {
        self.require_auditor(who)?;
        let since = since_secs.map_or(DateTime::<Utc>::MIN_UTC, |s| seconds_before(now, s));
        Ok(self.store.audit_since(since)?)
    }

    /// Audit records 1 to `upto`, for admins and auditors: what a client checks its
    /// checkpoints against.
    pub fn audit_upto(&self, who: &str, upto: u64) -> Result<Vec<AuditRecord>> {
        self.require_auditor(who)?;
        Ok(self.store.audit_upto(upto)?)
    }

    /// Verifies the audit chain and every finished recording's seal against it (reading
    /// and hashing the files too when `read_files`), for admins and auditors.
    pub fn verify_audit(&self, who: &str, read_files: bool) -> Result<AuditReport> {
        self.require_auditor(who)?;
        let mut report = self.store.verify_audit()?;
        report.recordings = Some(self.store.verify_recordings(read_files)?);
        Ok(report)
    }

    /// A checkpoint of the audit chain's head signed now, for admins and auditors (see
    /// [`crate::checkpoint::writer::sign_head`]).
    pub fn audit_checkpoint(
        &self,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<crate::checkpoint::Signed> {
        self.require_auditor(who)?;
        crate::checkpoint::writer::sign_head(self, now)
    }
}

/// Which sessions a listing or search covers; every field narrows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    /// Only sessions started this many seconds ago or later.
    pub since: Option<i64>,
}

impl SessionFilter {
    fn matches(&self, s: &SessionMeta, now: DateTime<Utc>) -> bool {
        self.user.as_ref().is_none_or(|u| &s.user == u)
            && self.target.as_ref().is_none_or(|t| &s.target == t)
            && self
                .since
                .is_none_or(|secs| s.start >= seconds_before(now, secs))
    }
}

/// `POST /v1/sessions/grep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepBody {
    pub pattern: String,
    #[serde(default, flatten)]
    pub filter: SessionFilter,
}

/// Mints a host certificate with a ledger serial, records it with its audit event, and
/// returns its line. `sign-host` and the bastion's own certificate both come through here.
#[allow(clippy::too_many_arguments)]
pub fn issue_host_cert(
    store: &Store,
    host_ca: &PrivateKey,
    key: &PublicKey,
    name: &str,
    principals: Vec<String>,
    ttl: Duration,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    let serial = store.next_serial()?;
    let from = (now.timestamp() - ca::BACKDATE_SECS).max(0) as u64;
    let until = from
        .saturating_add(ca::BACKDATE_SECS as u64)
        .saturating_add(ttl.as_secs())
        .min(i64::MAX as u64);
    let key_id = format!("ramp-host:{name}");
    let cert = ca::mint_host_cert(
        host_ca,
        key,
        serial,
        &key_id,
        &principals,
        (from, until),
        &mut rand::rng(),
    )?;
    let event = Event::new(
        actor,
        "sign-host",
        name,
        json!({"serial": serial, "principals": principals, "key": keys::fingerprint(key), "valid_before": until}),
    );
    let record = CertRecord {
        serial,
        key_id,
        kind: "host".into(),
        user: actor.to_string(),
        grant: String::new(),
        principals,
        valid_after: from,
        valid_before: until,
        fingerprint: keys::fingerprint(key),
        issued_at: now,
    };
    store.commit(
        Change {
            certs: vec![record],
            events: vec![event],
            ..Change::default()
        },
        now,
    )?;
    Ok(cert.to_openssh().map_err(ca::CaError::from)?)
}

/// What ending `ended` does to the grants that climbed from them. A step with `after: X` is
/// held only while an active grant of X is (a pending request holds nothing), and never past
/// the latest end among those: revoking one of two `observe` grants moves an `operate` grant's
/// end back to the other's. Transitive. Returns the open grants left standing on nothing (to
/// close with `ended`) and the active grants whose end moves earlier, with the new end.
fn fallout(
    p: &Policies,
    grants: &[Grant],
    ended: &[Grant],
    now: DateTime<Utc>,
) -> (Vec<Grant>, Vec<Grant>) {
    let mut gone: std::collections::HashSet<String> = ended.iter().map(|g| g.id.clone()).collect();
    // Open grants of the people concerned (a step climbs only from its own user's grants), as
    // they will stand, ends possibly moved earlier.
    let users: std::collections::HashSet<&str> = ended.iter().map(|g| g.user.as_str()).collect();
    let mut open: Vec<Grant> = grants
        .iter()
        .filter(|g| users.contains(g.user.as_str()))
        .filter(|g| matches!(g.state(now), State::Active | State::Pending))
        .cloned()
        .collect();
    let mut closed = Vec::new();
    let mut moved: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let mut changed = false;
        for i in 0..open.len() {
            let g = &open[i];
            if gone.contains(&g.id) {
                continue;
            }
            let Some(after) = p
                .contracts
                .get(&g.contract)
                .and_then(|c| c.step(&g.step))
                .and_then(|s| s.after.as_deref())
            else {
                continue;
            };
            let held_until = open
                .iter()
                .filter(|o| {
                    o.user == g.user
                        && o.contract == g.contract
                        && o.step == after
                        && o.state(now) == State::Active
                        && !gone.contains(&o.id)
                })
                .filter_map(|o| o.end)
                .max();
            match held_until {
                None => {
                    gone.insert(g.id.clone());
                    closed.push(g.clone());
                    changed = true;
                }
                Some(until) if g.status == Status::Active && g.end.is_some_and(|e| e > until) => {
                    open[i].end = Some(until);
                    moved.insert(open[i].id.clone());
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if !changed {
            break;
        }
    }
    let shortened = open
        .into_iter()
        .filter(|g| moved.contains(&g.id) && !gone.contains(&g.id))
        .collect();
    (closed, shortened)
}

/// `now - secs`, saturating at the earliest time instead of overflowing on absurd input.
pub fn seconds_before(now: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    chrono::TimeDelta::try_seconds(secs.max(0))
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A short random id for requests and grants.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}

#[cfg(test)]
mod tests;
