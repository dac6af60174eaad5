//! The application layer: the only door to the ledger. What the daemon does for a caller
//! (a signed request, a browser session, a login through the bastion) and for itself
//! (recordings, webhooks, checkpoints, metrics), with every authorisation rule and every
//! audit record written here and nowhere else. Every change lands in the ledger with its
//! audit records in one commit, and nobody sees an answer before it is on disk. `now` is an
//! argument so tests can move the clock.

mod access;
mod approvals;
mod audit;
mod bastion;
mod dashboard;
mod extend;
mod grants;
mod hosts;
mod ids;
mod nodes;
mod retention;
mod review;
mod revoke;
mod sessions;
mod stop;
#[cfg(test)]
mod tests;

pub use retention::Swept;
pub use review::{ReviewCounts, MAX_NOTE};
pub use revoke::Cascade;
pub use sessions::Grepped;
pub use stop::{StopOrder, MAX_REASON as MAX_STOP_REASON};

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::PublicKey;

use crate::checkpoint::Signed;
use crate::domain::audit::{AuditRecord, Entry};
use crate::domain::cert::{self, CertError};
use crate::domain::grant::{Grant, State};
use crate::domain::policy::{self, Policies, Step};
use crate::domain::session::{seconds_before, SessionMeta};
use crate::install::keys::Keys;
use crate::metrics::{LedgerGauges, Metrics};
use crate::recordings::place::Place;
use crate::store::{Change, GrantChanges, Ledger, Location, StoreError};
use crate::wire::grants::Whoami;

pub use self::audit::AuditSearch;
pub use self::bastion::Attempt;
pub use self::dashboard::WebUser;
pub use self::hosts::initialise;
pub use self::nodes::{host_name, Node};
#[cfg(test)]
pub(crate) use self::sessions::interrupted_change;

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
    /// What was asked for is gone for good (a recording retention removed).
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Ledger(#[from] StoreError),
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A bug, or a thread that could not finish its work.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::recordings::files::RecordingError> for ServiceError {
    fn from(e: crate::recordings::files::RecordingError) -> ServiceError {
        ServiceError::Ledger(e.into())
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// The running CA: policies, keys and the ledger, none of them reachable but through it.
pub struct Service {
    /// The installation root (`keys/`, `policies/`, `data/`).
    dir: PathBuf,
    /// Swapped whole on reload, so a request sees one consistent version.
    policies: RwLock<Arc<Policies>>,
    /// The CA keys, the bastion's host key and the audit-signer.
    keys: Keys,
    /// The ledger, sled or PostgreSQL.
    store: Ledger,
    /// Counters for `/metrics`, bumped here, in the bastion, the recorder and the notifier.
    metrics: Arc<Metrics>,
    /// This node's name (`serve --node`), in session records, audit details and metrics.
    node: String,
    /// Why the ledger cannot be reached, while it cannot (set by the lease's renewals and
    /// by calls that failed on it): new logins are refused at once meanwhile.
    ledger_down: std::sync::Mutex<Option<String>>,
}

impl Service {
    /// Opens an installation whose keys and policies exist (see [`initialise`]), with its
    /// ledger at `location` (sled under `data/`, or PostgreSQL), as node `node`.
    pub async fn open(
        dir: &Path,
        location: &Location,
        node: &str,
    ) -> std::result::Result<Service, crate::Error> {
        Service::open_with(dir, location, node, &Place::Local).await
    }

    /// [`Service::open`] with the recordings at `recordings`.
    pub async fn open_with(
        dir: &Path,
        location: &Location,
        node: &str,
        recordings: &Place,
    ) -> std::result::Result<Service, crate::Error> {
        let policies = crate::install::load_policies(&dir.join("policies"))?;
        let keys = Keys::load(&dir.join("keys"))?;
        let store = Ledger::open_with(&dir.join("data"), location, recordings)
            .await
            .map_err(ServiceError::from)?;
        Ok(Service {
            dir: dir.to_path_buf(),
            policies: RwLock::new(Arc::new(policies)),
            keys,
            store,
            metrics: Arc::new(Metrics::default()),
            node: node.to_string(),
            ledger_down: std::sync::Mutex::new(None),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts a grant change: its reads, its decision and its commit are serialised with
    /// every other grant change, on this node and on every node sharing the ledger.
    async fn grant_changes(&self) -> Result<GrantChanges<'_>> {
        Ok(self.store.grant_changes().await?)
    }

    /// Ends a grant change with its outcome: releases the lock and waits until what it
    /// committed is durable (a refusal may have committed its audit record). Nobody sees an
    /// answer before its change, and every change it read, are durable.
    async fn settle<T>(changes: GrantChanges<'_>, out: Result<T>) -> Result<T> {
        match (changes.finish().await, out) {
            (Ok(()), out) => out,
            // The ledger error that broke the change says more than the failed commit.
            (Err(_), Err(e @ ServiceError::Ledger(_))) => Err(e),
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Commits one change and waits until it is durable: for changes that need no grant lock.
    async fn commit(&self, change: Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        Ok(self.store.commit(change, now).await?)
    }

    /// Appends one audit record alone and waits for the disk: the one way the service's
    /// parts record what happened outside a ledger change.
    async fn write_audit(&self, entry: Entry, now: DateTime<Utc>) -> Result<()> {
        self.commit(Change::audit(vec![entry]), now).await?;
        Ok(())
    }

    /// Every write made so far, once it is on disk.
    pub async fn on_disk(&self) -> Result<()> {
        Ok(self.store.on_disk().await?)
    }

    /// Forgets request nonces whose timestamps would be refused anyway (see [`crate::auth`]);
    /// the daemon calls it on a timer, never on a request's path.
    pub async fn forget_old_nonces(&self, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = seconds_before(now, 2 * crate::auth::MAX_SKEW_SECS);
        Ok(self.store.forget_nonces(cutoff).await?)
    }

    /// Records a signed request's nonce; false when it was seen before (a replay), on this
    /// node or, with a shared ledger, on any.
    pub async fn fresh_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<bool> {
        Ok(self.store.remember_nonce(nonce, now).await?)
    }

    /// Changes whenever something is revoked, on any node.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.revocations_feed()
    }

    /// Every audit record this node commits from now on (see [`Ledger::subscribe_audit`]).
    pub fn subscribe_audit(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.store.subscribe_audit()
    }

    /// Every checkpoint of the audit chain kept from now on.
    pub fn subscribe_checkpoints(&self) -> tokio::sync::broadcast::Receiver<Signed> {
        self.store.checkpoints().subscribe()
    }

    /// The counters `/metrics` shows, for the parts that bump them.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `/metrics`: the counters, and the ledger's gauges read now (grants active and
    /// requests pending, never a scan of the ledger; the audit chain's length).
    /// A ledger that cannot be reached leaves those gauges out and says so
    /// (`ramp_ledger_up 0`): the counters are still worth scraping during an outage.
    pub async fn metrics_text(&self, now: DateTime<Utc>) -> Result<String> {
        let gauges = match self.ledger_gauges(now).await {
            Ok(g) => Some(g),
            Err(ServiceError::Ledger(e)) if e.outage().is_some() => None,
            Err(e) => return Err(e),
        };
        Ok(crate::metrics::render(
            &self.metrics,
            gauges.as_ref(),
            &self.node,
            crate::metrics::unix_ms(),
        ))
    }

    async fn ledger_gauges(&self, now: DateTime<Utc>) -> Result<LedgerGauges> {
        let mut gauges = LedgerGauges {
            audit_records: self.store.audit_len().await?,
            ..LedgerGauges::default()
        };
        for grant in self.store.open_grants(now).await? {
            match grant.state_at(now) {
                State::Active => gauges.active_grants += 1,
                State::Scheduled => gauges.scheduled_grants += 1,
                State::Pending => gauges.pending_requests += 1,
                _ => {}
            }
        }
        Ok(gauges)
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
        let fresh = crate::install::load_policies(&self.dir.join("policies"))?;
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Who a signed request's key belongs to, with their roles.
    pub fn whoami(&self, user: &str, key: &PublicKey) -> Whoami {
        let roles = self.policies().roles_of(user);
        Whoami {
            key: cert::fingerprint(key),
            roles,
            user: user.to_string(),
        }
    }

    /// Whether `user` is (still) in people.yaml.
    pub fn knows_user(&self, user: &str) -> bool {
        self.policies().users.contains_key(user)
    }

    /// Who registered `key` in people.yaml, if anyone.
    pub fn key_owner(&self, key: &PublicKey) -> Option<String> {
        self.policies().user_by_key(key).map(|u| u.name.clone())
    }

    /// A grant by id, for the service's own parts (webhooks); no caller, no check.
    pub async fn grant_record(&self, id: &str) -> Result<Option<Grant>> {
        Ok(self.store.grant(id).await?)
    }

    /// A session by id, for the service's own parts (webhooks); no caller, no check.
    pub async fn session_record(&self, id: &str) -> Result<Option<SessionMeta>> {
        Ok(self.store.session(id).await?)
    }

    /// Who a certificate was minted for, for the service's own parts (webhooks).
    pub async fn cert_owner(&self, serial: u64) -> Result<Option<String>> {
        Ok(self.store.cert(serial).await?.map(|c| c.user))
    }

    /// The step a grant is of, as the policies in force say.
    pub fn step_of(&self, grant: &Grant) -> Option<Step> {
        self.policies()
            .contracts
            .get(&grant.contract)
            .and_then(|c| c.step(&grant.step))
            .cloned()
    }
}

/// A short random id for requests, grants and sessions.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}
