//! The audit chain checked, whichever engine keeps it: a walk along the stored records
//! (each engine feeds it its records in order) and the verdicts on the whole chain and on
//! the chain running on from a checkpoint. What a well-formed next record is stays
//! [`ChainWalk`]'s to say.

use super::{Ledger, Result, SealReport};
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

/// A walk along the stored records, stopping at the first that is missing, unreadable or
/// does not follow.
#[derive(Debug)]
pub struct Walk {
    walk: ChainWalk,
    bad: Option<BadRecord>,
}

impl Walk {
    /// A walk that starts after `at` (genesis for the whole chain, or a checkpoint).
    pub fn from(at: Head) -> Walk {
        Walk {
            walk: ChainWalk::from(at),
            bad: None,
        }
    }

    /// The sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.walk.next_seq()
    }

    /// Whether the walk stopped at a bad record.
    pub fn stopped(&self) -> bool {
        self.bad.is_some()
    }

    /// Takes the next stored record: the key it is stored under, and the record (or why it
    /// cannot be read). False once the walk has stopped.
    pub fn feed(&mut self, key: u64, record: std::result::Result<AuditRecord, String>) -> bool {
        if self.bad.is_some() {
            return false;
        }
        let expected = self.walk.next_seq();
        let bad = if key != expected {
            Some(BadRecord {
                seq: expected,
                reason: format!("record {expected} is missing (next stored is {key})"),
            })
        } else {
            match record {
                Ok(r) => self.walk.step(&r).err(),
                Err(e) => Some(BadRecord {
                    seq: expected,
                    reason: format!("record {expected} is unreadable: {e}"),
                }),
            }
        };
        self.bad = bad;
        self.bad.is_none()
    }

    /// The verdict on the whole chain, walked from genesis, against the stored head.
    pub fn whole(self, head: Option<Head>) -> AuditReport {
        let bad = |b: BadRecord| AuditReport {
            records: b.seq.saturating_sub(1),
            first_bad: Some(b),
            recordings: None,
        };
        if let Some(b) = self.bad {
            return bad(b);
        }
        let Head {
            seq: count,
            hash: prev,
        } = self.walk.at().clone();
        let at_end = |reason: String| {
            bad(BadRecord {
                seq: count + 1,
                reason,
            })
        };
        match head {
            Some(h) if h.seq != count || h.hash != prev => at_end(format!(
                "the log ends at record {count} but {} were written; the newest were removed or altered",
                h.seq
            )),
            None if count > 0 => at_end("the chain head is missing".into()),
            _ => AuditReport {
                records: count,
                first_bad: None,
                recordings: None,
            },
        }
    }

    /// The verdict on the chain walked on from a checkpoint up to `head`.
    fn extends(self, head: Head) -> std::result::Result<Head, BadRecord> {
        if let Some(b) = self.bad {
            return Err(b);
        }
        if self.walk.at() != &head {
            let seq = self.walk.at().seq;
            return Err(BadRecord {
                seq: seq + 1,
                reason: format!(
                    "the log ends at record {seq} but {} were written; the newest were removed or altered",
                    head.seq
                ),
            });
        }
        Ok(head)
    }
}

impl Ledger {
    /// Whether the chain still holds `from` (a point a checkpoint signed) and runs on from
    /// it, record by record, to its head; returns the head, or the first record that breaks.
    /// Reads only the records from `from` on, without holding up commits.
    pub async fn audit_extends(&self, from: &Head) -> Result<std::result::Result<Head, BadRecord>> {
        let head = self.audit_head().await?;
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
            let kept = self.audit_record(from.seq).await?;
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
        let walk = self.walk_chain(Walk::from(from.clone()), head.seq).await?;
        Ok(walk.extends(head))
    }
}
