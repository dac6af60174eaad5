//! The ledger: the only module that touches sled.
//!
//! Trees: `grants` (id -> Grant), `certs` (serial -> CertRecord), `revoked` (serial -> why),
//! `revocations` (seq -> Revocation), `audit` (seq -> AuditRecord, hash-chained), `nonces`
//! (request nonce -> time, against replay), `meta` (serial counter, audit head).
//! Every change and its audit records commit in one transaction, then the store is flushed.
//! `sessions` (id -> SessionMeta) holds recorded sessions; their events are files, see
//! [`recordings`]. This module and its child are the only code that touches `data/`.

mod active;
pub mod recordings;
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
pub use self::recordings::{RecordingError, RecordingFile, Recordings};

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
}

/// The first record where the chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub seq: u64,
    pub reason: String,
}

/// The head of the chain, kept in `meta` so removing the newest records is noticed too.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
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
    /// Serialises commits so audit sequence numbers are handed out in order.
    writer: Mutex<()>,
    /// Active grants by user and step, for decisions.
    active: Mutex<ActiveIndex>,
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
            syncs: sync::Syncer::start(db),
            writer: Mutex::new(()),
            active: Mutex::new(ActiveIndex::default()),
            audit_feed: tokio::sync::broadcast::channel(AUDIT_FEED_CAPACITY).0,
            grant_feed: tokio::sync::broadcast::channel(AUDIT_FEED_CAPACITY).0,
        };
        store.index_grants(&store.grants()?);
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
        );
        let records = trees
            .transaction(|(grants, certs, revoked, revocations, audit, meta)| {
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
                    None => Head {
                        seq: 0,
                        hash: ZERO_HASH.into(),
                    },
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
                Ok(out)
            })
            .map_err(|e: TransactionError<String>| match e {
                TransactionError::Abort(msg) => StoreError::Conflict(msg),
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.index_grants(&change.grants);
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

    /// Walks the chain and reports the first record that is missing, edited or out of place.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        // A commit landing mid-walk would look like a removed tail.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut expected = 1u64;
        let mut prev = ZERO_HASH.to_string();
        let bad = |seq: u64, reason: String| AuditReport {
            records: seq.saturating_sub(1),
            first_bad: Some(BadRecord { seq, reason }),
        };
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let key_seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            if key_seq != expected {
                return Ok(bad(
                    expected,
                    format!("record {expected} is missing (next stored is {key_seq})"),
                ));
            }
            let r: AuditRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(bad(
                        expected,
                        format!("record {expected} is unreadable: {e}"),
                    ))
                }
            };
            if r.seq != expected {
                return Ok(bad(
                    expected,
                    format!("record {expected} claims sequence {}", r.seq),
                ));
            }
            if r.prev != prev {
                return Ok(bad(
                    expected,
                    format!("record {expected} does not link to record {}", expected - 1),
                ));
            }
            if chain_hash(&r) != r.hash {
                return Ok(bad(
                    expected,
                    format!("record {expected} was altered (its hash does not match its contents)"),
                ));
            }
            prev = r.hash;
            expected += 1;
        }
        let count = expected - 1;
        let head: Option<Head> = self
            .meta
            .get(META_HEAD)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        match head {
            Some(h) if h.seq != count || h.hash != prev => Ok(bad(
                count + 1,
                format!("the log ends at record {count} but {} were written; the newest were removed or altered", h.seq),
            )),
            None if count > 0 => Ok(bad(count + 1, "the chain head is missing".into())),
            _ => Ok(AuditReport {
                records: count,
                first_bad: None,
            }),
        }
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

    /// A session's events in order, checked against the seal in its metadata.
    pub fn session_events(&self, meta: &SessionMeta) -> Result<Vec<RecEvent>> {
        let bytes = self.recordings.read(&meta.id, meta.recording.as_ref())?;
        decode_events(&bytes).map_err(|e| StoreError::Corrupt {
            tree: "recordings",
            key: meta.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Marks sessions left `live` by a daemon that died as `interrupted`, sealing their
    /// recordings as they are on disk (a half-written last event is cut off); returns them.
    pub fn mark_interrupted(&self) -> Result<Vec<SessionMeta>> {
        let mut out = Vec::new();
        for mut s in self.sessions()? {
            if s.state == SessionState::Live {
                let sealed = self.recordings.seal_interrupted(&s.id)?;
                s.state = SessionState::Interrupted;
                s.end_reason = Some(
                    "the bastion stopped without ending the session (crash or kill -9)".into(),
                );
                // The metadata may lag the file by one flush; the file is the truth.
                s.bytes_in = sealed.bytes_in;
                s.bytes_out = sealed.bytes_out;
                s.recording = Some(sealed.seal);
                self.put_session(&s)?;
                out.push(s);
            }
        }
        self.flush()?;
        Ok(out)
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
