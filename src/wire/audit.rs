//! The audit chain on the wire: its records, its verdict, its checkpoints.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::audit::AuditRecord as Record;

/// One audit record as `GET /v1/audit` sends it: every field the chain hashes, so a client
/// checks the chain itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: Value,
    pub prev: String,
    pub hash: String,
}

/// Moves every field of an audit record across; written once for both directions.
macro_rules! record_fields {
    ($from:expr, $to:ident) => {{
        let r = $from;
        $to {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            detail: r.detail,
            prev: r.prev,
            hash: r.hash,
        }
    }};
}

impl From<Record> for AuditRecord {
    fn from(r: Record) -> AuditRecord {
        record_fields!(r, AuditRecord)
    }
}

impl From<AuditRecord> for Record {
    fn from(r: AuditRecord) -> Record {
        record_fields!(r, Record)
    }
}

/// `GET /v1/audit` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    /// Seconds back from now.
    pub since: Option<i64>,
    /// Records 1 to this one, instead of `since` (what a client checks checkpoints against).
    pub upto: Option<u64>,
}

/// `GET /v1/audit/verify` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VerifyQuery {
    /// Compare recording seals with the chain but do not read the recording files.
    #[serde(default)]
    pub skip_recordings: bool,
}

/// The answer to `GET /v1/audit/verify`.
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

/// Recordings checked against their seals in the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealReport {
    /// Finished sessions whose seals were checked.
    pub sessions: u64,
    /// Whether the files were read and hashed too (not with `--skip-recordings`).
    pub files: bool,
    /// Every recording that does not match, in the order of the sessions.
    pub bad: Vec<BadRecording>,
    /// Of the sessions checked, those whose recording retention removed, each with its
    /// `recording-removed` record in the chain.
    #[serde(default)]
    pub removed: u64,
    /// Of the sessions checked, those another node recorded on its own disk (recordings not
    /// shared): their seals checked against the chain, their files read by `audit verify`
    /// on that node.
    #[serde(default)]
    pub elsewhere: u64,
}

/// A recording that does not match its seal, or a session the chain and the ledger
/// disagree about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecording {
    pub session: String,
    pub reason: String,
}

/// The answer to `GET /v1/audit/checkpoint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub at: DateTime<Utc>,
    /// The checkpoint's text, as a file holds it.
    pub checkpoint: String,
    pub hash: String,
    pub seq: u64,
    /// The signing key's fingerprint.
    pub signer: String,
    /// The signing key, an OpenSSH public key line.
    pub signer_key: String,
}

/// The answer to `GET /v1/audit/signer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignerBody {
    pub fingerprint: String,
    /// An OpenSSH public key line.
    pub signer_key: String,
}
