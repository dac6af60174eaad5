//! The ledger: the only module that touches sled.
//!
//! Trees: `grants` (id -> Grant), `certs` (serial -> CertRecord), `revoked` (serial -> why),
//! `revocations` (seq -> Revocation), `audit` (seq -> AuditRecord, hash-chained), `nonces`
//! (request nonce -> time, against replay), `meta` (serial counter, audit head).
//! Every change and its audit records commit in one transaction, then the store is flushed.
//! `sessions` (id -> SessionMeta) holds recorded sessions; their events are files, see
//! [`recordings`]; a finished recording's seal is also in the audit record that ends its
//! session, see [`seals`]. Signed checkpoints of the chain are files too, see
//! [`checkpoints`]. This module and its children are the only code that touches `data/`.

mod active;
pub mod checkpoints;
pub mod recordings;
pub mod seals;
mod sync;

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::Tree;

use crate::grant::Grant;
use crate::recording::{decode_events, Event as RecEvent, SessionMeta, SessionState};

use self::active::ActiveIndex;
pub use self::active::HeldStep;
pub use self::checkpoints::Checkpoints;
pub use self::recordings::{RecordingError, RecordingFile, Recordings};
pub use self::seals::{BadRecording, SealReport, SESSION_END, SESSION_INTERRUPTED};

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
}

type Result<T> = std::result::Result<T, StoreError>;

/// A certificate the CA minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: u64,
    pub key_id: String,
    /// `user` or `host`.
    pub kind: String,
    pub user: String,
    /// The grant it was minted from; empty for host certificates.
    pub grant: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// SHA-256 fingerprint of the certified key.
    pub fingerprint: String,
    pub issued_at: DateTime<Utc>,
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeTarget {
    Serial(u64),
    Grant(String),
    User(String),
}

/// One revocation as an admin made it, with the certificates and grants it covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub target: RevokeTarget,
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub serials: Vec<u64>,
    pub grants: Vec<String>,
}

/// One entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// Who did it (a user name, or `ramp-ca` for the service itself).
    pub actor: String,
    /// What happened: `request`, `approve`, `deny`, `issue`, `revoke`, ...
    pub action: String,
    /// What it happened to (a grant id, a serial, a host).
    pub subject: String,
    pub detail: serde_json::Value,
    /// Hex SHA-256 of the previous record (zeros for the first).
    pub prev: String,
    /// Hex SHA-256 over `prev` and this record's fields.
    pub hash: String,
}

/// An audit event before it is chained.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(actor: &str, action: &str, subject: &str, detail: serde_json::Value) -> Event {
        Event {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            detail,
        }
    }
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub records: u64,
    /// `None` when the whole chain is intact.
    pub first_bad: Option<BadRecord>,
    /// Recordings checked against their seals in the chain; `None` when not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recordings: Option<SealReport>,
}

/// The first record where the chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub seq: u64,
    pub reason: String,
}

/// A point of the chain: a record's sequence number and hash. The chain's head is kept in
/// `meta`, so removing the newest records is noticed too; a checkpoint signs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// Before the first record.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: ZERO_HASH.into(),
        }
    }
}

/// Follows the chain record by record from a known point, checking every link: the one
/// place that says what a well-formed next record is (the ledger's own verification, the
/// checkpoint writer's and an auditor's client all walk with it).
#[derive(Debug, Clone)]
pub struct ChainWalk {
    at: Head,
}

impl ChainWalk {
    pub fn from(at: Head) -> ChainWalk {
        ChainWalk { at }
    }

    /// Where the walk stands: the last record checked.
    pub fn at(&self) -> &Head {
        &self.at
    }

    /// The sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.at.seq + 1
    }

    /// Checks that `r` is the next record, links to the last one and hashes to its hash.
    pub fn step(&mut self, r: &AuditRecord) -> std::result::Result<(), BadRecord> {
        let expected = self.next_seq();
        let bad = |reason: String| BadRecord {
            seq: expected,
            reason,
        };
        if r.seq != expected {
            return Err(bad(format!("record {expected} claims sequence {}", r.seq)));
        }
        if r.prev != self.at.hash {
            return Err(bad(format!(
                "record {expected} does not link to record {}",
                expected - 1
            )));
        }
        if chain_hash(r) != r.hash {
            return Err(bad(format!(
                "record {expected} was altered (its hash does not match its contents)"
            )));
        }
        self.at = Head {
            seq: r.seq,
            hash: r.hash.clone(),
        };
        Ok(())
    }
}

/// sled's page cache; the ledger's data is small (recordings are files).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const META_SERIAL: &[u8] = b"serial";
const META_HEAD: &[u8] = b"audit_head";
/// Records a subscriber may fall behind by before it misses some.
const AUDIT_FEED_CAPACITY: usize = 4096;

/// A set of changes committed together with their audit events.
#[derive(Debug, Default)]
pub struct Change {
    pub grants: Vec<Grant>,
    pub certs: Vec<CertRecord>,
    pub revocation: Option<Revocation>,
    pub events: Vec<Event>,
    /// Sessions that end with this change, each with the index in `events` of the record
    /// that ends it: written with `sealed_in` set to that record's sequence number, so the
    /// seal in the metadata and the one in the chain are never apart.
    pub sessions: Vec<(SessionMeta, usize)>,
}

/// The ledger.
pub struct Store {
    grants: Tree,
    certs: Tree,
    revoked: Tree,
    revocations: Tree,
    audit: Tree,
    nonces: Tree,
    /// `time ++ nonce` for every nonce, so old ones are found without walking them all.
    nonce_times: Tree,
    meta: Tree,
    /// Session id -> SessionMeta.
    sessions: Tree,
    /// One file of events per session.
    pub recordings: Recordings,
    /// Signed checkpoints of the audit chain, one file each.
    pub checkpoints: Checkpoints,
    /// Serialises commits so audit sequence numbers are handed out in order.
    writer: Mutex<()>,
    /// Active grants by user and step, for decisions.
    active: Mutex<ActiveIndex>,
    /// The newest user certificate of each key (by fingerprint), so a login that offered only
    /// a plain key is explained without reading every certificate.
    newest_certs: Mutex<std::collections::HashMap<String, CertRecord>>,
    syncs: sync::Syncer,
    /// Every committed audit record, in order, for live listeners (webhooks, dashboard).
    audit_feed: tokio::sync::broadcast::Sender<AuditRecord>,
    /// The id of every grant written, for requests waiting on one (`sign --wait`).
    grant_feed: tokio::sync::broadcast::Sender<String>,
}

/// The `nonce_times` key: the big-endian unix time, then the nonce.
fn nonce_time_key(at: &[u8; 8], nonce: &str) -> Vec<u8> {
    let mut key = at.to_vec();
    key.extend_from_slice(nonce.as_bytes());
    key
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("ledger records always serialise")
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// The chained hash of a record: SHA-256 over the previous hash and the record's fields.
pub fn chain_hash(r: &AuditRecord) -> String {
    let body = serde_json::json!({
        "seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action,
        "subject": r.subject, "detail": r.detail,
    });
    let mut h = Sha256::new();
    h.update(r.prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&body).expect("json"));
    hex::encode(h.finalize())
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store> {
        // Owner-only, like keys/: the ledger holds reasons, commands and who went where.
        let private = |source: std::io::Error| StoreError::Open {
            path: path.display().to_string(),
            source: sled::Error::Io(source),
        };
        std::fs::create_dir_all(path).map_err(private)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(private)?;
        }
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            // sled caches up to 1 GiB by default; recordings would otherwise sit in memory.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let tree = |name: &str| db.open_tree(name);
        let store = Store {
            grants: tree("grants")?,
            certs: tree("certs")?,
            revoked: tree("revoked")?,
            revocations: tree("revocations")?,
            audit: tree("audit")?,
            nonces: tree("nonces")?,
            nonce_times: tree("nonce_times")?,
            meta: tree("meta")?,
            sessions: tree("sessions")?,
            recordings: Recordings::open(&path.join("recordings"))?,
            checkpoints: Checkpoints::open(&path.join("checkpoints"))?,
            syncs: sync::Syncer::start(db),
            writer: Mutex::new(()),
            active: Mutex::new(ActiveIndex::default()),
            newest_certs: Mutex::new(std::collections::HashMap::new()),
            audit_feed: tokio::sync::broadcast::channel(AUDIT_FEED_CAPACITY).0,
            grant_feed: tokio::sync::broadcast::channel(AUDIT_FEED_CAPACITY).0,
        };
        store.index_grants(&store.grants()?);
        store.index_certs(&store.certs()?);
        store.index_old_nonces()?;
        Ok(store)
    }

    /// Ledgers written before `nonce_times` existed: index their nonces once, so they are
    /// forgotten like the rest.
    fn index_old_nonces(&self) -> Result<()> {
        if !self.nonce_times.is_empty() {
            return Ok(());
        }
        for kv in self.nonces.iter() {
            let (nonce, at) = kv?;
            let at: [u8; 8] = at.as_ref().try_into().unwrap_or([0; 8]);
            let mut key = at.to_vec();
            key.extend_from_slice(&nonce);
            self.nonce_times.insert(key, &[])?;
        }
        Ok(())
    }

    fn index_grants(&self, grants: &[Grant]) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for g in grants {
            active.put(g);
        }
    }

    /// Waits until everything written so far is on disk (sharing the flush with whoever
    /// else is waiting).
    pub fn flush(&self) -> Result<()> {
        self.syncs.wait(self.syncs.ticket())
    }

    /// [`Store::flush`] for async callers: the task waits, no thread does.
    pub async fn durable(&self) -> Result<()> {
        self.syncs.wait_async(self.syncs.ticket()).await
    }

    /// Hands out the next certificate serial; a serial is never reused, even after a crash.
    /// The counter is written before the certificate's record, and sled recovers writes in
    /// order, so once the record is on disk (which is before anyone gets the certificate)
    /// the counter is too; a crash before that may reuse a serial nobody ever received.
    pub fn next_serial(&self) -> Result<u64> {
        let v = self.meta.update_and_fetch(META_SERIAL, |old| {
            let n = old.map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(u64::from_be_bytes(
            v.as_deref()
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        ))
    }

    /// Commits a change and its audit events atomically, then waits until they are on disk.
    /// Returns the audit records.
    pub fn commit(&self, change: Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let records = self.apply(change, now)?;
        self.flush()?;
        Ok(records)
    }

    /// Commits a change and its audit events atomically, without waiting for the disk: for
    /// callers that hold a lock while they commit, then [`Store::durable`] after releasing it,
    /// so that commits waiting on one disk flush do not wait on each other too.
    pub fn apply(&self, change: Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let trees = (
            &self.grants,
            &self.certs,
            &self.revoked,
            &self.revocations,
            &self.audit,
            &self.meta,
            &self.sessions,
        );
        let records = trees
            .transaction(|trees| {
                let (grants, certs, revoked, revocations, audit, meta, sessions) = trees;
                for g in &change.grants {
                    grants.insert(g.id.as_bytes(), encode(g))?;
                }
                for c in &change.certs {
                    certs.insert(&c.serial.to_be_bytes(), encode(c))?;
                }
                if let Some(r) = &change.revocation {
                    let id = revocations.generate_id()?;
                    revocations.insert(&id.to_be_bytes(), encode(r))?;
                    for s in &r.serials {
                        revoked.insert(&s.to_be_bytes(), encode(&r.target))?;
                    }
                }
                let mut out = Vec::new();
                let mut head: Head = match meta.get(META_HEAD)? {
                    Some(b) => serde_json::from_slice(&b).map_err(|e| {
                        ConflictableTransactionError::Abort(format!("corrupt audit head: {e}"))
                    })?,
                    None => Head::genesis(),
                };
                for e in &change.events {
                    let mut r = AuditRecord {
                        seq: head.seq + 1,
                        at: now,
                        actor: e.actor.clone(),
                        action: e.action.clone(),
                        subject: e.subject.clone(),
                        detail: e.detail.clone(),
                        prev: head.hash.clone(),
                        hash: String::new(),
                    };
                    r.hash = chain_hash(&r);
                    audit.insert(&r.seq.to_be_bytes(), encode(&r))?;
                    head = Head {
                        seq: r.seq,
                        hash: r.hash.clone(),
                    };
                    out.push(r);
                }
                meta.insert(META_HEAD, encode(&head))?;
                for (s, ended_by) in &change.sessions {
                    let mut s = s.clone();
                    s.sealed_in = out.get(*ended_by).map(|r: &AuditRecord| r.seq);
                    sessions.insert(s.id.as_bytes(), encode(&s))?;
                }
                Ok(out)
            })
            .map_err(|e: TransactionError<String>| match e {
                TransactionError::Abort(msg) => StoreError::Conflict(msg),
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.index_grants(&change.grants);
        self.index_certs(&change.certs);
        if self.grant_feed.receiver_count() > 0 {
            for g in &change.grants {
                let _ = self.grant_feed.send(g.id.clone());
            }
        }
        // Still under the writer lock, so subscribers see records in sequence order.
        if self.audit_feed.receiver_count() > 0 {
            for r in &records {
                let _ = self.audit_feed.send(r.clone());
            }
        }
        Ok(records)
    }

    /// Every audit record committed from now on, in sequence order, sent once its
    /// transaction commits (before the disk flush that follows). A subscriber that falls
    /// more than a few thousand records behind misses some (`RecvError::Lagged`).
    pub fn subscribe_audit(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.audit_feed.subscribe()
    }

    /// The id of every grant written from now on, once its transaction commits. A subscriber
    /// that falls far behind gets `RecvError::Lagged` and should read again what it watches.
    pub fn subscribe_grants(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.grant_feed.subscribe()
    }

    /// Appends audit events alone, durably.
    pub fn audit_events(&self, events: Vec<Event>, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let records = self.apply_events(events, now)?;
        self.flush()?;
        Ok(records)
    }

    /// Appends audit events alone, without waiting for the disk (see [`Store::apply`]).
    pub fn apply_events(&self, events: Vec<Event>, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        self.apply(
            Change {
                events,
                ..Change::default()
            },
            now,
        )
    }

    pub fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.grants
            .get(id.as_bytes())?
            .map(|b| decode("grants", id.as_bytes(), &b))
            .transpose()
    }

    /// Every grant, oldest request first.
    pub fn grants(&self) -> Result<Vec<Grant>> {
        let mut out: Vec<Grant> = self
            .grants
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("grants", &k, &v)
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Grants pending or active at `now`, oldest request first, without reading the ledger.
    pub fn open_grants(&self, now: DateTime<Utc>) -> Vec<Grant> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.open(now)
    }

    /// The steps a user holds at `now` (an active grant of them), each with the latest end
    /// among its grants: all a decision needs, however many grants the user holds.
    pub fn held_steps(&self, user: &str, now: DateTime<Utc>) -> Vec<HeldStep> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.held(user, now)
    }

    /// The user's own open grant of a step at `now`: the active one that ends last, else the
    /// oldest pending request; from memory.
    pub fn own_open_grant(
        &self,
        user: &str,
        contract: &str,
        step: &str,
        now: DateTime<Utc>,
    ) -> Option<Grant> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.own(user, contract, step, now)
    }

    pub fn cert(&self, serial: u64) -> Result<Option<CertRecord>> {
        let key = serial.to_be_bytes();
        self.certs
            .get(key)?
            .map(|b| decode("certs", &key, &b))
            .transpose()
    }

    /// The newest user certificate minted for the key with this fingerprint, from memory.
    pub fn newest_cert_for(&self, fingerprint: &str) -> Option<CertRecord> {
        let newest = self.newest_certs.lock().unwrap_or_else(|e| e.into_inner());
        newest.get(fingerprint).cloned()
    }

    fn index_certs(&self, certs: &[CertRecord]) {
        let mut newest = self.newest_certs.lock().unwrap_or_else(|e| e.into_inner());
        for c in certs.iter().filter(|c| c.kind == "user") {
            let slot = newest
                .entry(c.fingerprint.clone())
                .or_insert_with(|| c.clone());
            if c.serial > slot.serial {
                *slot = c.clone();
            }
        }
    }

    /// Every certificate minted, by serial.
    pub fn certs(&self) -> Result<Vec<CertRecord>> {
        self.certs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("certs", &k, &v)
            })
            .collect()
    }

    /// Whether a serial was revoked.
    pub fn is_revoked(&self, serial: u64) -> Result<bool> {
        Ok(self.revoked.contains_key(serial.to_be_bytes())?)
    }

    /// Every revoked serial, ascending.
    pub fn revoked_serials(&self) -> Result<Vec<u64>> {
        self.revoked
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                Ok(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
            })
            .collect()
    }

    /// Every revocation, in order.
    pub fn revocations(&self) -> Result<Vec<Revocation>> {
        self.revocations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("revocations", &k, &v)
            })
            .collect()
    }

    /// Records a request nonce; false when it was seen before (a replay). Nothing else
    /// happens on this path: forgetting old nonces is [`Store::forget_nonces`]' job, on a
    /// timer, so no client's input decides when a sweep runs.
    pub fn remember_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<bool> {
        let at = now.timestamp().to_be_bytes();
        let fresh = self
            .nonces
            .compare_and_swap(nonce.as_bytes(), None as Option<&[u8]>, Some(&at[..]))?
            .is_ok();
        if fresh {
            self.nonce_times.insert(nonce_time_key(&at, nonce), &[])?;
        }
        Ok(fresh)
    }

    /// Forgets nonces recorded before `cutoff` (their timestamps are refused anyway); walks
    /// only those, in time order. Returns how many went.
    pub fn forget_nonces(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        // Timestamps are signed; before 1970 sorts after (big-endian two's complement), and
        // no request is stamped then.
        let end = cutoff.timestamp().max(0).to_be_bytes();
        let mut gone = 0;
        for kv in self.nonce_times.range(..&end[..]) {
            let (k, _) = kv?;
            self.nonces.remove(&k[8..])?;
            self.nonce_times.remove(&k)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Audit records with `at >= since`, oldest first.
    pub fn audit_since(&self, since: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let r: AuditRecord = decode("audit", &k, &v)?;
            if r.at >= since {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// How many records the audit chain holds (its head's sequence number).
    pub fn audit_len(&self) -> Result<u64> {
        Ok(match self.meta.get(META_HEAD)? {
            Some(b) => decode::<Head>("meta", META_HEAD, &b)?.seq,
            None => 0,
        })
    }

    /// The head of the chain: its newest record's sequence number and hash.
    pub fn audit_head(&self) -> Result<Head> {
        Ok(match self.meta.get(META_HEAD)? {
            Some(b) => decode("meta", META_HEAD, &b)?,
            None => Head::genesis(),
        })
    }

    /// One audit record.
    pub fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>> {
        let key = seq.to_be_bytes();
        self.audit
            .get(key)?
            .map(|b| decode("audit", &key, &b))
            .transpose()
    }

    /// Audit records 1 to `upto`, oldest first.
    pub fn audit_upto(&self, upto: u64) -> Result<Vec<AuditRecord>> {
        self.audit
            .range(..=upto.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode("audit", &k, &v)
            })
            .collect()
    }

    /// Walks the stored records after `walk`'s point up to `upto`, stopping at the first
    /// that is missing, unreadable or does not follow.
    fn walk_records(&self, walk: &mut ChainWalk, upto: u64) -> Result<Option<BadRecord>> {
        let from = walk.next_seq();
        if from > upto {
            return Ok(None);
        }
        for kv in self.audit.range(from.to_be_bytes()..=upto.to_be_bytes()) {
            let (k, v) = kv?;
            let expected = walk.next_seq();
            let key_seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            if key_seq != expected {
                return Ok(Some(BadRecord {
                    seq: expected,
                    reason: format!("record {expected} is missing (next stored is {key_seq})"),
                }));
            }
            let r: AuditRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Some(BadRecord {
                        seq: expected,
                        reason: format!("record {expected} is unreadable: {e}"),
                    }))
                }
            };
            if let Err(bad) = walk.step(&r) {
                return Ok(Some(bad));
            }
        }
        Ok(None)
    }

    /// Walks the chain and reports the first record that is missing, edited or out of place.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        // A commit landing mid-walk would look like a removed tail.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let bad = |b: BadRecord| AuditReport {
            records: b.seq.saturating_sub(1),
            first_bad: Some(b),
            recordings: None,
        };
        let mut walk = ChainWalk::from(Head::genesis());
        if let Some(b) = self.walk_records(&mut walk, u64::MAX)? {
            return Ok(bad(b));
        }
        let Head {
            seq: count,
            hash: prev,
        } = walk.at().clone();
        let head: Option<Head> = self
            .meta
            .get(META_HEAD)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let at_end = |reason: String| {
            bad(BadRecord {
                seq: count + 1,
                reason,
            })
        };
        match head {
            Some(h) if h.seq != count || h.hash != prev => Ok(at_end(format!(
                "the log ends at record {count} but {} were written; the newest were removed or altered",
                h.seq
            ))),
            None if count > 0 => Ok(at_end("the chain head is missing".into())),
            _ => Ok(AuditReport {
                records: count,
                first_bad: None,
                recordings: None,
            }),
        }
    }

    /// Whether the chain still holds `from` (a point a checkpoint signed) and runs on from
    /// it, record by record, to its head; returns the head, or the first record that breaks.
    /// Reads only the records from `from` on, without holding up commits.
    pub fn audit_extends(&self, from: &Head) -> Result<std::result::Result<Head, BadRecord>> {
        let head = self.audit_head()?;
        let bad = |seq: u64, reason: String| Ok(Err(BadRecord { seq, reason }));
        if head.seq < from.seq {
            return bad(
                head.seq + 1,
                format!(
                    "the chain ends at record {} but record {} was checkpointed; the newest were removed",
                    head.seq, from.seq
                ),
            );
        }
        if from.seq > 0 {
            let kept = self.audit_record(from.seq)?;
            if !kept.is_some_and(|r| r.hash == from.hash && chain_hash(&r) == r.hash) {
                return bad(
                    from.seq,
                    format!(
                        "record {} is not the one its checkpoint signed: the chain up to it was rewritten",
                        from.seq
                    ),
                );
            }
        }
        let mut walk = ChainWalk::from(from.clone());
        if let Some(b) = self.walk_records(&mut walk, head.seq)? {
            return Ok(Err(b));
        }
        if walk.at() != &head {
            let seq = walk.at().seq;
            return bad(
                seq + 1,
                format!(
                    "the log ends at record {seq} but {} were written; the newest were removed or altered",
                    head.seq
                ),
            );
        }
        Ok(Ok(head))
    }

    /// Writes a session's metadata (created or updated).
    pub fn put_session(&self, meta: &SessionMeta) -> Result<()> {
        self.sessions.insert(meta.id.as_bytes(), encode(meta))?;
        Ok(())
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionMeta>> {
        self.sessions
            .get(id.as_bytes())?
            .map(|b| decode("sessions", id.as_bytes(), &b))
            .transpose()
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionMeta>> {
        let mut out: Vec<SessionMeta> = self
            .sessions
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("sessions", &k, &v)
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A session's events in order, checked against its seal: the one in its metadata,
    /// which must be the one in the audit record that ended the session.
    pub fn session_events(&self, meta: &SessionMeta) -> Result<Vec<RecEvent>> {
        let seal = self.audited_seal(meta)?;
        let bytes = self.recordings.read(&meta.id, seal.as_ref())?;
        decode_events(&bytes).map_err(|e| StoreError::Corrupt {
            tree: "recordings",
            key: meta.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Marks sessions left `live` by a daemon that died as `interrupted`, sealing their
    /// recordings as they are on disk (a half-written last event is cut off), each with its
    /// `session-interrupted` audit record carrying the seal; returns them. A session the
    /// chain already ended is not sealed again (its metadata was set back to `live`): its
    /// seal is taken back from the chain, so a changed recording is still found. Finished
    /// sessions that name no end record (from older versions) are linked to theirs, so
    /// reads need not search the chain. One pass over the chain, only when needed.
    pub fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<Vec<SessionMeta>> {
        let (live, unlinked): (Vec<SessionMeta>, Vec<SessionMeta>) = self
            .sessions()?
            .into_iter()
            .filter(|s| s.state == SessionState::Live || s.sealed_in.is_none())
            .partition(|s| s.state == SessionState::Live);
        if live.is_empty() && unlinked.is_empty() {
            return Ok(Vec::new());
        }
        let ended = self.session_ends()?;
        for mut s in unlinked {
            if let Some(end) = ended.get(&s.id).and_then(|e| e.first()) {
                s.sealed_in = Some(end.seq);
                self.put_session(&s)?;
            }
        }
        let mut change = Change::default();
        for mut s in live {
            if let Some(end) = ended.get(&s.id).and_then(|e| e.first()) {
                tracing::error!(session = %s.id, record = end.seq, "the ledger says this session is live but the audit chain ended it; its metadata was altered");
                self.put_session(&seals::restore_from(s, end))?;
                continue;
            }
            let sealed = self.recordings.seal_interrupted(&s.id)?;
            s.state = SessionState::Interrupted;
            s.end_reason =
                Some("the bastion stopped without ending the session (crash or kill -9)".into());
            // The metadata may lag the file by one flush; the file is the truth.
            s.bytes_in = sealed.bytes_in;
            s.bytes_out = sealed.bytes_out;
            s.recording = Some(sealed.seal);
            change.events.push(Event::new(
                &s.user,
                SESSION_INTERRUPTED,
                &s.id,
                serde_json::json!({"target": s.target, "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out, "recording": s.recording}),
            ));
            change.sessions.push((s, change.events.len() - 1));
        }
        let out = change.sessions.iter().map(|(s, _)| s.clone()).collect();
        self.commit(change, now)?;
        Ok(out)
    }

    /// Writes sessions that ended with the audit records that end them, in one
    /// transaction, durably: each session's `sealed_in` names its record.
    pub fn end_sessions(
        &self,
        ended: Vec<(SessionMeta, Event)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>> {
        let mut change = Change::default();
        for (i, (meta, event)) in ended.into_iter().enumerate() {
            change.events.push(event);
            change.sessions.push((meta, i));
        }
        self.commit(change, now)
    }

    /// Low-level access for tests and repair tools: the raw `meta` tree (the serial counter
    /// and the audit chain's head).
    #[doc(hidden)]
    pub fn raw_meta_tree(&self) -> &Tree {
        &self.meta
    }

    /// Low-level access for tests and repair tools: the raw audit tree.
    #[doc(hidden)]
    pub fn raw_audit_tree(&self) -> &Tree {
        &self.audit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a nonce starting with `00` made the request that sent it sweep every
    /// stored nonce inline; now remembering does no sweep, and forgetting walks only the old.
    #[test]
    fn nonces_are_refused_twice_and_forgotten_by_age_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let later = t0 + chrono::Duration::seconds(600);
        assert!(store.remember_nonce("00aa", t0).unwrap());
        assert!(store.remember_nonce("00bb", t0).unwrap());
        assert!(store.remember_nonce("cc", later).unwrap());
        assert!(!store.remember_nonce("00aa", later).unwrap(), "a replay");
        // Nothing was swept by the requests themselves.
        assert_eq!(store.nonces.len(), 3);
        assert_eq!(store.forget_nonces(t0).unwrap(), 0, "cutoff is exclusive");
        assert_eq!(
            store
                .forget_nonces(t0 + chrono::Duration::seconds(1))
                .unwrap(),
            2
        );
        assert_eq!(store.nonces.len(), 1);
        assert!(!store.remember_nonce("cc", later).unwrap(), "still refused");
        assert!(store.remember_nonce("00aa", later).unwrap(), "forgotten");
    }

    /// Regression: explaining a plain-key login read every certificate in the ledger, for
    /// anyone who connected.
    #[test]
    fn the_newest_certificate_of_a_key_is_known_without_reading_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let cert = |serial: u64, fp: &str, kind: &str| CertRecord {
            serial,
            key_id: format!("k{serial}"),
            kind: kind.into(),
            user: "alice".into(),
            grant: String::new(),
            principals: vec!["readonly".into()],
            valid_after: 0,
            valid_before: serial,
            fingerprint: fp.into(),
            issued_at: Utc::now(),
        };
        {
            let store = Store::open(&path).unwrap();
            for c in [
                cert(3, "fp-a", "user"),
                cert(2, "fp-a", "user"),
                cert(4, "fp-a", "host"),
            ] {
                store
                    .apply(
                        Change {
                            certs: vec![c],
                            ..Change::default()
                        },
                        Utc::now(),
                    )
                    .unwrap();
            }
            assert_eq!(store.newest_cert_for("fp-a").map(|c| c.serial), Some(3));
            assert!(store.newest_cert_for("fp-b").is_none());
            store.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.newest_cert_for("fp-a").map(|c| c.serial),
            Some(3),
            "rebuilt at open"
        );
    }

    #[test]
    fn subscribers_see_committed_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let mut feed = store.subscribe_audit();
        let now = Utc::now();
        let ev = |a: &str| Event::new("alice", a, "x", serde_json::json!({}));
        store
            .apply_events(vec![ev("request"), ev("grant")], now)
            .unwrap();
        store.apply_events(vec![ev("revoke")], now).unwrap();
        let seen: Vec<(u64, String)> = std::iter::from_fn(|| feed.try_recv().ok())
            .map(|r| (r.seq, r.action))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, "request".to_string()),
                (2, "grant".to_string()),
                (3, "revoke".to_string())
            ]
        );
    }
}
