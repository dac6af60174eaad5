//! The ledger: grants, certificates, revocations, the audit chain, request nonces and the
//! metadata of recorded sessions, behind one interface, [`Ledger`], over two engines: sled
//! under `DIR/data` (embedded, the default, for one node: [`embedded`]) and PostgreSQL
//! (shared by several nodes: [`crate::pgstore`]). Only the service uses it; every rule stays
//! there, so both engines keep the same records and answer the same questions.
//!
//! Every change commits with its audit records in one transaction ([`Ledger::commit`], or
//! [`GrantChanges::commit`] for a change that read what it decides on), and nobody sees an
//! answer before it is durable: sled's group commit, PostgreSQL's commit. Recordings are
//! files under `DIR/data/recordings`, or in a directory every node mounts, with either
//! engine (see [`crate::recordings::files`] and [`crate::recordings::place`]);
//! a finished recording's seal is also in the audit record that ends its session (see
//! `seals`). Signed checkpoints of the chain are files in `DIR/data/checkpoints`, see
//! [`checkpoints`]. Committed changes are announced through [`Feeds`].

mod chain;
mod changes;
pub mod checkpoints;
pub mod copy;
mod embedded;
mod feeds;
mod location;
mod recordings;
mod seals;
mod sessions;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::audit::{AuditRecord, Entry, Head};
use crate::domain::cert::CertRecord;
use crate::domain::grant::{Grant, Revocation};
use crate::domain::session::SessionMeta;
use crate::pgstore::PgLedger;
use crate::recordings::files::{RecordingError, Recordings};
use crate::recordings::place::Place;

pub use self::chain::{AuditReport, Walk};
pub use self::changes::GrantChanges;
pub use self::checkpoints::Checkpoints;
pub use self::embedded::OnDisk;
#[doc(hidden)]
pub use self::embedded::SledLedger;
pub use self::feeds::{Feeds, GrantNews};
pub use self::location::Location;
pub use self::seals::{BadRecording, SealReport};
pub use self::sessions::{Interrupted, TakeOver};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source} (is another ramp-ca serve running on this directory?)")]
    Open { path: String, source: sled::Error },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in `{tree}` at key {key}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Recording(#[from] RecordingError),
    #[error("cannot sync the ledger to disk: {0}")]
    Sync(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A finished recording whose seal in the ledger is not the one its session's end
    /// record in the audit chain carries (or that record is not there).
    #[error("recording {path} does not match its seal in audit record {seq} ({why}): the recording and its ledger entry were changed after the session ended")]
    SealMismatch { path: String, seq: u64, why: String },
    /// A finished recording the audit chain has no end record for.
    #[error("recording {path} has no seal in the audit chain ({why})")]
    Unsealed { path: String, why: String },
    /// A recording retention deleted (its audit record proves it): nothing to read.
    #[error("{0}")]
    Removed(String),
    /// A read that ran on a thread of its own did not finish.
    #[error("a ledger read did not finish: {0}")]
    Task(String),
    #[error(transparent)]
    Postgres(crate::pgstore::PgError),
}

type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// When the ledger cannot be reached now (PostgreSQL down, silent or restarting), what
    /// to tell the caller; `None` for every other error.
    pub fn outage(&self) -> Option<String> {
        match self {
            StoreError::Postgres(e) => e.outage(),
            _ => None,
        }
    }
}

/// A set of changes committed together with their audit entries.
#[derive(Debug, Default)]
pub struct Change {
    pub grants: Vec<Grant>,
    pub certs: Vec<CertRecord>,
    pub revocation: Option<Revocation>,
    pub entries: Vec<Entry>,
    /// Sessions written as they stand (started, or their metadata moved on).
    pub sessions: Vec<SessionMeta>,
    /// Sessions that end with this change, each with the index in `entries` of the record
    /// that ends it: written with `sealed_in` set to that record's sequence number, so the
    /// seal in the metadata and the one in the chain are never apart.
    pub ended: Vec<(SessionMeta, usize)>,
    /// Sessions whose recordings this change removes, each with the index in `entries` of
    /// its `recording-removed` record: written with `removed.record` set to that record's
    /// sequence number.
    pub removed: Vec<(SessionMeta, usize)>,
}

impl Change {
    /// Audit entries alone.
    pub fn audit(entries: Vec<Entry>) -> Change {
        Change {
            entries,
            ..Change::default()
        }
    }

    /// The change's audit records, chained on from `head` at `now`; moves `head` to the last.
    pub fn chain(&self, head: &mut Head, now: DateTime<Utc>) -> Vec<AuditRecord> {
        self.entries
            .iter()
            .map(|e| {
                let r = e.chain(head, now);
                *head = Head {
                    seq: r.seq,
                    hash: r.hash.clone(),
                };
                r
            })
            .collect()
    }

    /// The sessions to write, once `records` are the change's audit records: those written
    /// as they stand, then those that end, naming the record that ends them.
    pub fn sessions_written(&self, records: &[AuditRecord]) -> Vec<SessionMeta> {
        let ended = self.ended.iter().map(|(s, ended_by)| {
            let mut s = s.clone();
            s.sealed_in = records.get(*ended_by).map(|r| r.seq);
            s
        });
        let removed = self.removed.iter().map(|(s, removed_by)| {
            let mut s = s.clone();
            if let (Some(r), Some(rec)) = (s.removed.as_mut(), records.get(*removed_by)) {
                r.record = rec.seq;
            }
            s
        });
        self.sessions
            .iter()
            .cloned()
            .chain(ended)
            .chain(removed)
            .collect()
    }

    /// The ids of the grants it writes.
    pub fn grant_ids(&self) -> Vec<String> {
        self.grants.iter().map(|g| g.id.clone()).collect()
    }
}

/// A step a user holds, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldStep {
    pub contract: String,
    pub step: String,
    pub end: DateTime<Utc>,
}

/// Grants in the order listings show them: oldest request first.
pub(crate) fn by_request(grants: &mut [Grant]) {
    grants.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
}

/// Sessions in the order listings show them: oldest first.
pub(crate) fn by_start(sessions: &mut [SessionMeta]) {
    sessions.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
}

/// The engine that keeps the ledger.
enum Engine {
    /// sled, for one node; scans run on blocking threads, so it is shared with them.
    Sled(Arc<SledLedger>),
    /// PostgreSQL, shared by every node that serves from the same database.
    Postgres(Box<PgLedger>),
}

/// The ledger, whichever engine keeps it, with the recording and checkpoint files beside it.
pub struct Ledger {
    /// Where the records are.
    engine: Engine,
    /// One file of events per session, in `DIR/data/recordings` or a shared directory.
    recordings: Recordings,
    /// Signed checkpoints of the audit chain, one file each, in `DIR/data/checkpoints`.
    checkpoints: Arc<Checkpoints>,
    /// What committed changes are announced on.
    feeds: Arc<Feeds>,
}

/// Runs a sled read that walks a tree on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: &Arc<SledLedger>,
    read: impl FnOnce(&SledLedger) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Runs file work (reading, hashing, syncing) on a blocking thread.
async fn on_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl Ledger {
    /// Opens (or creates) the ledger at `location`, with its files under `data` (created
    /// owner-only: the ledger and recordings hold reasons, commands and who went where).
    pub async fn open(data: &Path, location: &Location) -> Result<Ledger> {
        Ledger::open_with(data, location, &Place::Local).await
    }

    /// [`Ledger::open`] with the recordings at `recordings` (a directory every node mounts,
    /// or this node's `data/recordings`).
    pub async fn open_with(data: &Path, location: &Location, recordings: &Place) -> Result<Ledger> {
        let private = |source: std::io::Error| StoreError::Open {
            path: data.display().to_string(),
            source: sled::Error::Io(source),
        };
        std::fs::create_dir_all(data).map_err(private)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
                .map_err(private)?;
        }
        let feeds = Arc::new(Feeds::default());
        let engine = match location {
            Location::Embedded => {
                let (at, feeds) = (data.to_path_buf(), feeds.clone());
                Engine::Sled(Arc::new(
                    on_thread(move || SledLedger::open(&at, feeds)).await?,
                ))
            }
            Location::Postgres { url, pool } => Engine::Postgres(Box::new(
                PgLedger::open(url, pool.clone(), feeds.clone()).await?,
            )),
        };
        Ok(Ledger {
            engine,
            recordings: recordings::open(data, recordings).await?,
            checkpoints: Arc::new(Checkpoints::open(&data.join("checkpoints"))?),
            feeds,
        })
    }

    /// The sled engine, for tests and repair tools that tamper with it.
    #[doc(hidden)]
    pub fn raw_sled(&self) -> Option<&SledLedger> {
        match &self.engine {
            Engine::Sled(s) => Some(s),
            Engine::Postgres(_) => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn sled(&self) -> &SledLedger {
        self.raw_sled().expect("the ledger is in sled")
    }

    /// Whether other nodes may share this ledger (so nothing kept in memory is the truth,
    /// and files under `DIR/data` are only this node's).
    pub fn is_shared(&self) -> bool {
        match &self.engine {
            Engine::Sled(_) => false,
            Engine::Postgres(_) => true,
        }
    }

    /// Commits a change and its audit entries atomically, and returns its audit records
    /// once it is durable. For changes that decide on nothing they read (audit records,
    /// session metadata, host certificates); grant changes go through
    /// [`Ledger::grant_changes`].
    pub async fn commit(&self, change: Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        match &self.engine {
            Engine::Sled(s) => s.commit(&change, now)?.await,
            Engine::Postgres(p) => p.commit(&change, now).await,
        }
    }

    /// Starts a grant change: what it reads, decides and commits is serialised with every
    /// other grant change (see [`GrantChanges`]).
    pub async fn grant_changes(&self) -> Result<GrantChanges<'_>> {
        GrantChanges::start(self).await
    }

    /// Every write made so far, once it is durable.
    pub async fn on_disk(&self) -> Result<()> {
        match &self.engine {
            Engine::Sled(s) => s.on_disk().await,
            // Every commit was durable when it returned.
            Engine::Postgres(_) => Ok(()),
        }
    }

    /// The next certificate serial, never handed out before.
    pub async fn next_serial(&self) -> Result<u64> {
        match &self.engine {
            Engine::Sled(s) => s.next_serial(),
            Engine::Postgres(p) => p.next_serial().await,
        }
    }

    pub async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        match &self.engine {
            Engine::Sled(s) => s.grant(id),
            Engine::Postgres(p) => p.grant(id).await,
        }
    }

    /// Every grant, oldest request first.
    pub async fn grants(&self) -> Result<Vec<Grant>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, |s| s.grants()).await,
            Engine::Postgres(p) => p.grants().await,
        }
    }

    /// Grants pending or active at `now`, oldest request first; never a scan of the ledger.
    pub async fn open_grants(&self, now: DateTime<Utc>) -> Result<Vec<Grant>> {
        match &self.engine {
            Engine::Sled(s) => Ok(s.open_grants(now)),
            Engine::Postgres(p) => p.open_grants(now).await,
        }
    }

    pub async fn cert(&self, serial: u64) -> Result<Option<CertRecord>> {
        match &self.engine {
            Engine::Sled(s) => s.cert(serial),
            Engine::Postgres(p) => p.cert(serial).await,
        }
    }

    /// Up to `limit` grant ids (or, with `sessions`, session ids) starting with `prefix`.
    pub async fn ids_starting(
        &self,
        sessions: bool,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        match &self.engine {
            Engine::Sled(s) => s.ids_starting(sessions, prefix, limit),
            Engine::Postgres(p) => p.ids_starting(sessions, prefix, limit).await,
        }
    }

    /// The certificates minted from these grants, by serial.
    pub async fn certs_of_grants(&self, grants: &[String]) -> Result<Vec<CertRecord>> {
        match &self.engine {
            Engine::Sled(s) => s.certs_of_grants(grants),
            Engine::Postgres(p) => p.certs_of_grants(grants).await,
        }
    }

    /// The newest user certificate minted for the key with this fingerprint; never a scan
    /// (anyone may offer a plain key).
    pub async fn newest_cert_for(&self, fingerprint: &str) -> Result<Option<CertRecord>> {
        match &self.engine {
            Engine::Sled(s) => Ok(s.newest_cert_for(fingerprint)),
            Engine::Postgres(p) => p.newest_cert_for(fingerprint).await,
        }
    }

    /// Whether a serial was revoked.
    pub async fn is_revoked(&self, serial: u64) -> Result<bool> {
        match &self.engine {
            Engine::Sled(s) => s.is_revoked(serial),
            Engine::Postgres(p) => p.is_revoked(serial).await,
        }
    }

    /// Every revoked serial, ascending.
    pub async fn revoked_serials(&self) -> Result<Vec<u64>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, |s| s.revoked_serials()).await,
            Engine::Postgres(p) => p.revoked_serials().await,
        }
    }

    /// Every revocation, in order.
    pub async fn revocations(&self) -> Result<Vec<Revocation>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, |s| s.revocations()).await,
            Engine::Postgres(p) => p.revocations().await,
        }
    }

    /// Audit records with `at >= since`, oldest first.
    pub async fn audit_since(&self, since: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, move |s| s.audit_since(since)).await,
            Engine::Postgres(p) => p.audit_since(since).await,
        }
    }

    /// The head of the chain: its newest record's sequence number and hash.
    pub async fn audit_head(&self) -> Result<Head> {
        match &self.engine {
            Engine::Sled(s) => s.audit_head(),
            Engine::Postgres(p) => p.audit_head().await,
        }
    }

    /// How many records the audit chain holds (its head's sequence number).
    pub async fn audit_len(&self) -> Result<u64> {
        Ok(self.audit_head().await?.seq)
    }

    /// One audit record.
    pub async fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>> {
        match &self.engine {
            Engine::Sled(s) => s.audit_record(seq),
            Engine::Postgres(p) => p.audit_record(seq).await,
        }
    }

    /// Audit records 1 to `upto`, oldest first.
    pub async fn audit_upto(&self, upto: u64) -> Result<Vec<AuditRecord>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, move |s| s.audit_upto(upto)).await,
            Engine::Postgres(p) => p.audit_upto(upto).await,
        }
    }

    /// Feeds `walk` the stored records from its next one up to `upto`, until one breaks it.
    async fn walk_chain(&self, walk: Walk, upto: u64) -> Result<Walk> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, move |s| s.walk_chain(walk, upto)).await,
            Engine::Postgres(p) => p.walk_chain(walk, upto).await,
        }
    }

    /// Walks the whole chain, as it stands at one moment, and reports the first record that
    /// is missing, edited or out of place, or a head that does not match the last record.
    pub async fn verify_audit(&self) -> Result<AuditReport> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, |s| s.verify_audit()).await,
            Engine::Postgres(p) => p.verify_audit().await,
        }
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionMeta>> {
        match &self.engine {
            Engine::Sled(s) => s.session(id),
            Engine::Postgres(p) => p.session(id).await,
        }
    }

    /// Every session, oldest first.
    pub async fn sessions(&self) -> Result<Vec<SessionMeta>> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, |s| s.sessions()).await,
            Engine::Postgres(p) => p.sessions().await,
        }
    }

    /// Sessions the ledger says are live, on any node sharing it, oldest first.
    pub async fn live_sessions(&self) -> Result<Vec<SessionMeta>> {
        match &self.engine {
            Engine::Sled(s) => {
                blocking(s, |s| {
                    let mut all = s.sessions()?;
                    all.retain(|m| m.state == crate::domain::session::SessionState::Live);
                    Ok(all)
                })
                .await
            }
            Engine::Postgres(p) => p.live_sessions().await,
        }
    }

    /// Records a signed request's nonce; false when it was seen before (a replay).
    pub async fn remember_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<bool> {
        match &self.engine {
            Engine::Sled(s) => s.remember_nonce(nonce, now),
            Engine::Postgres(p) => p.remember_nonce(nonce, now).await,
        }
    }

    /// Forgets nonces recorded before `cutoff`; returns how many went.
    pub async fn forget_nonces(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        match &self.engine {
            Engine::Sled(s) => blocking(s, move |s| s.forget_nonces(cutoff)).await,
            Engine::Postgres(p) => p.forget_nonces(cutoff).await,
        }
    }

    /// Every audit record this node commits from now on, in sequence order, sent once its
    /// transaction commits. A subscriber that falls more than a few thousand records behind
    /// misses some (`RecvError::Lagged`).
    pub fn subscribe_audit(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.feeds.subscribe_audit()
    }

    /// Every grant written from now on, by any node, once its transaction commits. A
    /// subscriber that falls far behind gets `RecvError::Lagged` and should read again what
    /// it watches, as on [`GrantNews::Missed`].
    pub fn subscribe_grants(&self) -> tokio::sync::broadcast::Receiver<GrantNews> {
        self.feeds.subscribe_grants()
    }

    /// Changes whenever something is revoked, by any node.
    pub fn revocations_feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feeds.revocations()
    }

    /// The signed checkpoints of the audit chain kept on disk.
    pub fn checkpoints(&self) -> &Arc<Checkpoints> {
        &self.checkpoints
    }
}
