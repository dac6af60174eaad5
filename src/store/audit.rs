//! The audit chain in the ledger: reading it, and checking it whole or from a checkpoint.

use chrono::{DateTime, Utc};

use super::seals::SealReport;
use super::{decode, key_u64, Result, Store, META_HEAD};
use crate::domain::audit::{chain_hash, AuditRecord, BadRecord, ChainWalk, Head};

/// The result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub records: u64,
    /// `None` when the whole chain is intact.
    pub first_bad: Option<BadRecord>,
    /// Recordings checked against their seals in the chain; `None` when not asked for.
    pub recordings: Option<SealReport>,
}

impl Store {
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
            let key_seq = key_u64(&k);
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
}
