//! A grant change: a request, an approval, a denial, a revocation or a certificate, which
//! reads the grants it decides on, decides, and commits. Two such changes must not
//! interleave (an approval racing a revocation would overwrite it; two approvals on two
//! nodes would both count as the last), so each holds the ledger's grant lock from its first
//! read to its commit: a lock in memory on sled (one node), a transaction-scoped advisory
//! lock on PostgreSQL, which every node takes.

use chrono::{DateTime, Utc};

use super::embedded::{OnDisk, SledLedger};
use super::{Change, Engine, HeldStep, Ledger, Result};
use crate::domain::audit::AuditRecord;
use crate::domain::cert::CertRecord;
use crate::domain::grant::Grant;
use crate::pgstore::PgTx;

/// A grant change under way: its reads see every grant change committed before it, and
/// what it commits becomes durable at [`GrantChanges::finish`].
pub struct GrantChanges<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Sled {
        store: &'a SledLedger,
        /// The grant lock, held until the change is committed.
        held: tokio::sync::MutexGuard<'a, ()>,
        /// What was committed, to wait for once the lock is released.
        writes: Vec<OnDisk<Vec<AuditRecord>>>,
    },
    /// A transaction holding the advisory grant lock.
    Postgres(Box<PgTx<'a>>),
}

impl<'a> GrantChanges<'a> {
    /// Takes the grant lock.
    pub(super) async fn start(ledger: &'a Ledger) -> Result<GrantChanges<'a>> {
        let inner = match &ledger.engine {
            Engine::Sled(s) => Inner::Sled {
                store: s,
                held: s.lock_grants().await,
                writes: Vec::new(),
            },
            Engine::Postgres(p) => Inner::Postgres(Box::new(p.grant_changes().await?)),
        };
        Ok(GrantChanges { inner })
    }

    pub async fn grant(&mut self, id: &str) -> Result<Option<Grant>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.grant(id),
            Inner::Postgres(tx) => tx.grant(id).await,
        }
    }

    /// The steps `user` holds at `now`, each with its latest end.
    pub async fn held_steps(&mut self, user: &str, now: DateTime<Utc>) -> Result<Vec<HeldStep>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => Ok(store.held_steps(user, now)),
            Inner::Postgres(tx) => tx.held_steps(user, now).await,
        }
    }

    /// The user's own open grant of a step at `now`: the active one that ends last, else the
    /// oldest pending request (not one for a window that opens later).
    pub async fn own_open_grant(
        &mut self,
        user: &str,
        contract: &str,
        step: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Grant>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => Ok(store.own_open_grant(user, contract, step, now)),
            Inner::Postgres(tx) => tx.own_open_grant(user, contract, step, now).await,
        }
    }

    /// The grants of these users pending or active at `now`, oldest request first.
    pub async fn open_grants_of(
        &mut self,
        users: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => Ok(store.open_grants_of(users, now)),
            Inner::Postgres(tx) => tx.open_grants_of(users, now).await,
        }
    }

    /// Whether the ledger holds any grant of `user`, open or not.
    pub async fn has_grants(&mut self, user: &str) -> Result<bool> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.has_grants(user),
            Inner::Postgres(tx) => tx.has_grants(user).await,
        }
    }

    pub async fn cert(&mut self, serial: u64) -> Result<Option<CertRecord>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.cert(serial),
            Inner::Postgres(tx) => tx.cert(serial).await,
        }
    }

    /// The certificates minted from these grants, by serial.
    pub async fn certs_of_grants(&mut self, grants: &[String]) -> Result<Vec<CertRecord>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.certs_of_grants(grants),
            Inner::Postgres(tx) => tx.certs_of_grants(grants).await,
        }
    }

    /// The next certificate serial, never handed out before.
    pub async fn next_serial(&mut self) -> Result<u64> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.next_serial(),
            Inner::Postgres(tx) => tx.next_serial().await,
        }
    }

    /// A session's metadata as this change sees it (retention decides on it under the
    /// lock, so two nodes never remove one recording twice).
    pub async fn session(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::domain::session::SessionMeta>> {
        match &mut self.inner {
            Inner::Sled { store, .. } => store.session(id),
            Inner::Postgres(tx) => tx.session(id).await,
        }
    }

    /// Commits `change` as part of this grant change: later reads of this change see it.
    pub async fn commit(&mut self, change: Change, now: DateTime<Utc>) -> Result<()> {
        match &mut self.inner {
            Inner::Sled { store, writes, .. } => writes.push(store.commit(&change, now)?),
            Inner::Postgres(tx) => tx.apply(&change, now).await?,
        }
        Ok(())
    }

    /// Ends the change: releases the lock and waits until what it committed (and every
    /// change it read) is durable. Called whether the decision was a success or a refusal:
    /// a refusal may have committed its audit record.
    pub async fn finish(self) -> Result<()> {
        match self.inner {
            Inner::Sled { held, writes, .. } => {
                // Waiting for the disk after releasing the lock lets concurrent changes share
                // the flush instead of queueing behind each other's.
                drop(held);
                for w in writes {
                    w.await?;
                }
                Ok(())
            }
            // The commit releases the lock and is the durability point.
            Inner::Postgres(tx) => tx.finish().await.map(|_| ()),
        }
    }
}
