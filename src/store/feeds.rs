//! What the ledger tells live listeners once a change commits: every audit record this node
//! committed (webhooks, the dashboard), every grant written (`sign --wait`), every
//! revocation (the bastion's watchdogs). In-process broadcasts; with PostgreSQL, grants and
//! revocations committed by other nodes arrive here too (`pgstore::listen`), audit records
//! do not: each node announces the records it committed, so a deployment announces each
//! record once.

use tokio::sync::{broadcast, watch};

use crate::domain::audit::AuditRecord;

/// Records a subscriber may fall behind by before it misses some.
const FEED_CAPACITY: usize = 4096;

/// News of grants written, for requests waiting on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantNews {
    /// This grant was written (here or, with PostgreSQL, on another node).
    Written(String),
    /// Writes may have gone unseen (the listener to other nodes reconnected): read again
    /// whatever is being waited on.
    Missed,
}

/// The three feeds; the engines publish, the service subscribes.
pub struct Feeds {
    /// Every audit record this node committed, in sequence order.
    audit: broadcast::Sender<AuditRecord>,
    /// Grants written, by id.
    grants: broadcast::Sender<GrantNews>,
    /// Bumped on every revocation (and whenever one may have been missed).
    revoked: watch::Sender<u64>,
}

impl Default for Feeds {
    fn default() -> Feeds {
        Feeds {
            audit: broadcast::channel(FEED_CAPACITY).0,
            grants: broadcast::channel(FEED_CAPACITY).0,
            revoked: watch::channel(0).0,
        }
    }
}

impl Feeds {
    /// Announces what a commit of this node wrote. Called once the change committed, in
    /// commit order (the engines call it under the lock that orders their commits).
    pub fn committed(&self, records: &[AuditRecord], grants: &[String], revocation: bool) {
        if self.audit.receiver_count() > 0 {
            for r in records {
                let _ = self.audit.send(r.clone());
            }
        }
        self.grants_written(grants);
        if revocation {
            self.revocation();
        }
    }

    /// Grants written (here or elsewhere).
    pub fn grants_written(&self, ids: &[String]) {
        if self.grants.receiver_count() > 0 {
            for id in ids {
                let _ = self.grants.send(GrantNews::Written(id.clone()));
            }
        }
    }

    /// Something was revoked (here or elsewhere).
    pub fn revocation(&self) {
        self.revoked.send_modify(|n| *n += 1);
    }

    /// News from other nodes may have been lost: waiters read again, watchdogs re-check.
    pub fn missed(&self) {
        let _ = self.grants.send(GrantNews::Missed);
        self.revocation();
    }

    pub fn subscribe_audit(&self) -> broadcast::Receiver<AuditRecord> {
        self.audit.subscribe()
    }

    pub fn subscribe_grants(&self) -> broadcast::Receiver<GrantNews> {
        self.grants.subscribe()
    }

    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }
}
