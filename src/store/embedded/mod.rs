//! The embedded engine: the ledger in sled under `DIR/data`, for a single node. The only
//! module that touches sled.
//!
//! Trees: `grants` (id -> Grant), `certs` (serial -> CertRecord), `revoked` (serial -> why),
//! `revocations` (seq -> Revocation), `audit` (seq -> AuditRecord, hash-chained), `nonces`
//! (request nonce -> time, against replay), `meta` (serial counter, audit head), `sessions`
//! (id -> SessionMeta). Records are the domain types' serde form. Every change commits with
//! its audit records in one sled transaction ([`SledLedger::commit`]), whose future resolves
//! once the change is on disk (one thread flushes for everyone waiting: group commit). What
//! decisions need often (open grants, held steps, the newest certificate of each key) is
//! kept in memory, which only a single node may trust.

mod active;
mod audit;
mod export;
mod nonces;
mod sync;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::Tree;

use super::feeds::Feeds;
use super::{Change, Result, StoreError};
use crate::domain::audit::{AuditRecord, Head};
use crate::domain::cert::{CertKind, CertRecord};
use crate::domain::grant::{Grant, Revocation};
use crate::domain::session::SessionMeta;

use self::active::ActiveIndex;
pub use self::sync::OnDisk;
use super::HeldStep;

/// sled's page cache; the ledger's data is small (recordings are files).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

const META_SERIAL: &[u8] = b"serial";
const META_HEAD: &[u8] = b"audit_head";

/// The ledger in sled.
pub struct SledLedger {
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
    /// Serialises commits so audit sequence numbers are handed out in order.
    writer: Mutex<()>,
    /// Held across read, decision and commit of a grant change (see
    /// [`super::GrantChanges`]), so two changes to one grant cannot overwrite each other.
    grant_changes: tokio::sync::Mutex<()>,
    /// Active grants by user and step, for decisions.
    active: Mutex<ActiveIndex>,
    /// The newest user certificate of each key (by fingerprint), so a login that offered only
    /// a plain key is explained without reading every certificate.
    newest_certs: Mutex<HashMap<String, CertRecord>>,
    /// The group commit: one thread flushes sled for everyone waiting.
    syncs: sync::GroupCommit,
    /// Where committed changes are announced.
    feeds: Arc<Feeds>,
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

/// Every record of a tree, in key order.
fn all<T: DeserializeOwned>(name: &'static str, tree: &Tree) -> Result<Vec<T>> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            decode(name, &k, &v)
        })
        .collect()
}

/// A big-endian `u64` key.
fn key_u64(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
}

impl SledLedger {
    /// Opens (or creates) the ledger in the directory `path`, which exists.
    pub fn open(path: &Path, feeds: Arc<Feeds>) -> Result<SledLedger> {
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
        let store = SledLedger {
            grants: tree("grants")?,
            certs: tree("certs")?,
            revoked: tree("revoked")?,
            revocations: tree("revocations")?,
            audit: tree("audit")?,
            nonces: tree("nonces")?,
            nonce_times: tree("nonce_times")?,
            meta: tree("meta")?,
            sessions: tree("sessions")?,
            syncs: sync::GroupCommit::start(db),
            writer: Mutex::new(()),
            grant_changes: tokio::sync::Mutex::new(()),
            active: Mutex::new(ActiveIndex::default()),
            newest_certs: Mutex::new(HashMap::new()),
            feeds,
        };
        store.index_grants(&store.grants()?);
        store.index_certs(&store.certs()?);
        store.index_old_nonces()?;
        Ok(store)
    }

    fn index_grants(&self, grants: &[Grant]) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for g in grants {
            active.put(g);
        }
    }

    fn index_certs(&self, certs: &[CertRecord]) {
        let mut newest = self.newest_certs.lock().unwrap_or_else(|e| e.into_inner());
        for c in certs.iter().filter(|c| c.is(CertKind::User)) {
            let slot = newest
                .entry(c.fingerprint.clone())
                .or_insert_with(|| c.clone());
            if c.serial > slot.serial {
                *slot = c.clone();
            }
        }
    }

    /// The lock every grant change holds from its first read to its commit.
    pub async fn lock_grants(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.grant_changes.lock().await
    }

    /// Every write made so far, once it is on disk (sharing the flush with whoever else is
    /// waiting). Writes nothing itself.
    pub fn on_disk(&self) -> OnDisk<()> {
        self.syncs.after(())
    }

    /// Hands out the next certificate serial; a serial is never reused, even after a crash.
    /// The counter is written before the certificate's record, and sled recovers writes in
    /// order, so once the record is on disk (which is before anyone gets the certificate)
    /// the counter is too; a crash before that may reuse a serial nobody ever received.
    pub fn next_serial(&self) -> Result<u64> {
        let v = self.meta.update_and_fetch(META_SERIAL, |old| {
            let n = old.map_or(0, key_u64);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(v.as_deref().map_or(0, key_u64))
    }

    /// Commits a change and its audit entries atomically, at once, and returns what waits
    /// for the disk: its audit records, once the change (and every write before it) is on
    /// disk. The wait is the caller's, so a caller holding a lock while it changes the ledger
    /// waits after releasing it, and commits waiting on one disk flush do not wait on each
    /// other too.
    pub fn commit(&self, change: &Change, now: DateTime<Utc>) -> Result<OnDisk<Vec<AuditRecord>>> {
        Ok(self.syncs.after(self.apply(change, now)?))
    }

    fn apply(&self, change: &Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
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
                let mut head: Head = match meta.get(META_HEAD)? {
                    Some(b) => serde_json::from_slice(&b).map_err(|e| {
                        ConflictableTransactionError::Abort(format!("corrupt audit head: {e}"))
                    })?,
                    None => Head::genesis(),
                };
                let out = change.chain(&mut head, now);
                for r in &out {
                    audit.insert(&r.seq.to_be_bytes(), encode(r))?;
                }
                meta.insert(META_HEAD, encode(&head))?;
                for s in change.sessions_written(&out) {
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
        // Still under the writer lock, so subscribers see records in sequence order.
        self.feeds
            .committed(&records, &change.grant_ids(), change.revocation.is_some());
        Ok(records)
    }

    pub fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.grants
            .get(id.as_bytes())?
            .map(|b| decode("grants", id.as_bytes(), &b))
            .transpose()
    }

    /// Every grant, oldest request first.
    pub fn grants(&self) -> Result<Vec<Grant>> {
        let mut out: Vec<Grant> = all("grants", &self.grants)?;
        super::by_request(&mut out);
        Ok(out)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, ActiveIndex> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants pending or active at `now`, oldest request first, from memory.
    pub fn open_grants(&self, now: DateTime<Utc>) -> Vec<Grant> {
        self.active().open(now)
    }

    /// The open grants of these users at `now`, oldest request first, from memory.
    pub fn open_grants_of(&self, users: &[&str], now: DateTime<Utc>) -> Vec<Grant> {
        let mut open = self.active().open(now);
        open.retain(|g| users.contains(&g.user.as_str()));
        open
    }

    /// Whether the ledger holds any grant of `user`, open or not.
    pub fn has_grants(&self, user: &str) -> Result<bool> {
        Ok(self.grants()?.iter().any(|g| g.user == user))
    }

    /// The steps a user holds at `now` (an active grant of them), each with the latest end
    /// among its grants: all a decision needs, however many grants the user holds.
    pub fn held_steps(&self, user: &str, now: DateTime<Utc>) -> Vec<HeldStep> {
        self.active().held(user, now)
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
        self.active().own(user, contract, step, now)
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

    /// Every certificate minted, by serial.
    pub fn certs(&self) -> Result<Vec<CertRecord>> {
        all("certs", &self.certs)
    }

    /// The certificates minted from these grants, by serial.
    pub fn certs_of_grants(&self, grants: &[String]) -> Result<Vec<CertRecord>> {
        let mut certs = self.certs()?;
        certs.retain(|c| grants.contains(&c.grant));
        Ok(certs)
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
            .map(|k| Ok(key_u64(&k?)))
            .collect()
    }

    /// Every revocation, in order.
    pub fn revocations(&self) -> Result<Vec<Revocation>> {
        all("revocations", &self.revocations)
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionMeta>> {
        self.sessions
            .get(id.as_bytes())?
            .map(|b| decode("sessions", id.as_bytes(), &b))
            .transpose()
    }

    /// Up to `limit` grant ids (`grants`) or session ids starting with `prefix`: a walk of
    /// the keys after it, never the whole tree.
    pub fn ids_starting(&self, sessions: bool, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let tree = if sessions {
            &self.sessions
        } else {
            &self.grants
        };
        let mut ids = Vec::new();
        for kv in tree.scan_prefix(prefix.as_bytes()).take(limit) {
            let (k, _) = kv?;
            ids.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(ids)
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionMeta>> {
        let mut out: Vec<SessionMeta> = all("sessions", &self.sessions)?;
        super::by_start(&mut out);
        Ok(out)
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
pub(crate) fn commit_now(store: &SledLedger, change: Change) -> Vec<AuditRecord> {
    let on_disk = store.commit(&change, Utc::now()).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(on_disk)
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{Denied, Entry};

    fn open(path: &Path) -> SledLedger {
        std::fs::create_dir_all(path).unwrap();
        SledLedger::open(path, Arc::default()).unwrap()
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
            let store = open(&path);
            for c in [
                cert(3, "fp-a", "user"),
                cert(2, "fp-a", "user"),
                cert(4, "fp-a", "host"),
            ] {
                let change = Change {
                    certs: vec![c],
                    ..Change::default()
                };
                commit_now(&store, change);
            }
            assert_eq!(store.newest_cert_for("fp-a").map(|c| c.serial), Some(3));
            assert!(store.newest_cert_for("fp-b").is_none());
        }
        let store = open(&path);
        assert_eq!(
            store.newest_cert_for("fp-a").map(|c| c.serial),
            Some(3),
            "rebuilt at open"
        );
    }

    #[test]
    fn subscribers_see_committed_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("data"));
        let mut feed = store.feeds.subscribe_audit();
        let ev = |why: &str| {
            Entry::new(
                "alice",
                "x",
                Denied {
                    reason: why.into(),
                    extension: false,
                },
            )
        };
        commit_now(&store, Change::audit(vec![ev("one"), ev("two")]));
        commit_now(&store, Change::audit(vec![ev("three")]));
        let seen: Vec<(u64, String)> = std::iter::from_fn(|| feed.try_recv().ok())
            .map(|r| (r.seq, r.detail["reason"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, "one".to_string()),
                (2, "two".to_string()),
                (3, "three".to_string())
            ]
        );
    }
}
