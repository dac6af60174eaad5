//! The audit chain in sled: reading it, walking it, and the records that end sessions.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{decode, key_u64, Result, SledLedger, META_HEAD};
use crate::domain::audit::{AuditRecord, Head};
use crate::store::chain::{AuditReport, Walk};
use crate::store::seals::is_end;

impl SledLedger {
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

    /// The head of the chain: its newest record's sequence number and hash.
    pub fn audit_head(&self) -> Result<Head> {
        Ok(self.stored_head()?.unwrap_or_else(Head::genesis))
    }

    fn stored_head(&self) -> Result<Option<Head>> {
        self.meta
            .get(META_HEAD)?
            .map(|b| decode("meta", META_HEAD, &b))
            .transpose()
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

    /// Feeds `walk` the stored records from its next one up to `upto`, until one breaks it.
    pub fn walk_chain(&self, mut walk: Walk, upto: u64) -> Result<Walk> {
        let from = walk.next_seq();
        if from > upto {
            return Ok(walk);
        }
        for kv in self.audit.range(from.to_be_bytes()..=upto.to_be_bytes()) {
            let (k, v) = kv?;
            let record = serde_json::from_slice(&v).map_err(|e| e.to_string());
            if !walk.feed(key_u64(&k), record) {
                break;
            }
        }
        Ok(walk)
    }

    /// Walks the whole chain and reports the first record that is missing, edited or out of
    /// place, or a head that does not match the last record.
    pub fn verify_audit(&self) -> Result<AuditReport> {
        // A commit landing mid-walk would look like a removed tail.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let walk = self.walk_chain(Walk::from(Head::genesis()), u64::MAX)?;
        // An unreadable head is as good as none.
        let head = self.stored_head().ok().flatten();
        Ok(walk.whole(head))
    }

    /// Every session-ending record in the chain, by session id, oldest first: one pass
    /// over the chain.
    pub fn session_ends(&self) -> Result<HashMap<String, Vec<AuditRecord>>> {
        let mut out: HashMap<String, Vec<AuditRecord>> = HashMap::new();
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let r: AuditRecord = decode("audit", &k, &v)?;
            if is_end(&r) {
                out.entry(r.subject.clone()).or_default().push(r);
            }
        }
        Ok(out)
    }
}
