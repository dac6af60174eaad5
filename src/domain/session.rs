//! A recorded session (one channel through the bastion) as data: its metadata, its state,
//! the seal of its finished recording, and the filter listings and searches use. How its
//! events are encoded, written, exported and searched is [`crate::recordings`]' job. The
//! serde derives are the ledger's record format; the HTTP format is [`crate::wire`]'s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Vocabulary;

/// The terminal size a client asked for, where zero (what `ssh -tt` from a script often
/// reports) means the usual 80x24.
pub fn terminal_size(cols: u32, rows: u32) -> (u32, u32) {
    (
        if cols == 0 { 80 } else { cols },
        if rows == 0 { 24 } else { rows },
    )
}

/// `now - secs`, saturating at the earliest time instead of overflowing on absurd input.
pub fn seconds_before(now: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    chrono::TimeDelta::try_seconds(secs.max(0))
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Why a session a crash interrupted ended, as its metadata and its webhook say.
pub const INTERRUPTED_REASON: &str =
    "the bastion stopped without ending the session (crash or kill -9)";

/// Why another node ended a session whose node's lease lapsed.
pub fn lapsed_reason(node: &str, lease_secs: u64) -> String {
    format!("node `{node}` stopped renewing its lease (more than {lease_secs} s): it crashed, was killed or lost the ledger; the session is kept up to its last flush")
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Running now (or the daemon died while it ran and has not restarted yet).
    #[default]
    Live,
    Ended,
    /// The daemon stopped without ending it (kill -9, power loss): everything up to the
    /// last flush is there.
    Interrupted,
}

impl Vocabulary for SessionState {
    const ALL: &'static [SessionState] = &[
        SessionState::Live,
        SessionState::Ended,
        SessionState::Interrupted,
    ];

    fn label(self) -> &'static str {
        match self {
            SessionState::Live => "live",
            SessionState::Ended => "ended",
            SessionState::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything known about one recorded session (one channel through the bastion). The
/// default is a live session where nothing happened yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: String,
    pub user: String,
    pub grant: String,
    pub serial: u64,
    pub key_id: String,
    /// The account on the target.
    pub principal: String,
    pub target: String,
    /// Address of the engineer's client.
    pub client: String,
    /// `shell`, `exec`, `subsystem`, or `direct-tcpip`.
    pub kind: String,
    /// The command (exec), subsystem name, or `host:port` (direct-tcpip).
    pub command: Option<String>,
    pub term: Option<String>,
    /// Terminal size at the start (80x24 when no pty was asked for).
    pub cols: u32,
    pub rows: u32,
    pub start: DateTime<Utc>,
    /// Set when the session ends; for an interrupted one, the time of its last flush.
    pub end: Option<DateTime<Utc>>,
    pub state: SessionState,
    pub exit_status: Option<u32>,
    /// Why it ended, when the bastion ended it (expiry, revocation, shutdown).
    pub end_reason: Option<String>,
    /// Bytes from the client to the target.
    pub bytes_in: u64,
    /// Bytes from the target to the client.
    pub bytes_out: u64,
    /// Files an sftp or scp session touched, as `op path`.
    pub files: Vec<String>,
    /// Environment variables the client passed to the target, as `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Length and hash of the recording file, set when the session ends or is found
    /// interrupted.
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    /// The audit record that ended the session and carries the same seal, so a read checks
    /// the two against each other without scanning the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_in: Option<u64>,
    /// The node (`serve --node`) whose bastion runs or ran it; `None` in records from
    /// before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Lines the contract's flag rules matched (at most [`super::flags::MAX_FLAGS`]): the
    /// markers playback jumps to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<super::flags::Flag>,
    /// The review its step asks for, fixed at its start; `None`: none asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<super::review::ReviewDue>,
    /// The sign-off, once given (the `session-review` audit record is the proof).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<super::review::Review>,
    /// Its overdue review was announced (`review-overdue`, once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue_announced: bool,
    /// Its recording was deleted by retention (`keep:`); the seal stays, and the
    /// `recording-removed` record it names is the proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<super::retention::Removed>,
}

impl SessionMeta {
    /// The terminal size at the start, zero read as the default (older recordings kept 0x0).
    pub fn size(&self) -> (u32, u32) {
        terminal_size(self.cols, self.rows)
    }

    /// Still being written: nothing to check it against yet.
    pub fn unsealed_live(&self) -> bool {
        self.state == SessionState::Live && self.sealed_in.is_none()
    }
}

/// What a finished recording must be: its event bytes and their BLAKE3 hash (hex; `b3sum`
/// of the file without its header line). BLAKE3 rather than SHA-256 because every recorded
/// byte is hashed on the bastion: SHA-256 was 19% of its CPU in a bulk transfer. It is part
/// of the audit record that ends a session, so its JSON is part of what the chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSeal {
    pub bytes: u64,
    pub blake3: String,
}

/// Which sessions a listing or search covers; every field narrows it. Audited with the
/// listing, so its JSON is part of what the chain hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    /// Only sessions started this many seconds ago or later.
    pub since: Option<i64>,
    /// Only sessions with flags.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
    /// Only sessions waiting for a review (pending or overdue).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreviewed: bool,
    /// Only sessions whose review is overdue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue: bool,
}

impl SessionFilter {
    pub fn matches(&self, s: &SessionMeta, now: DateTime<Utc>) -> bool {
        self.user.as_ref().is_none_or(|u| &s.user == u)
            && self.target.as_ref().is_none_or(|t| &s.target == t)
            && self
                .since
                .is_none_or(|secs| s.start >= seconds_before(now, secs))
            && (!self.flagged || !s.flags.is_empty())
            && (!self.unreviewed || super::review::state(s, now).waiting())
            && (!self.overdue
                || matches!(
                    super::review::state(s, now),
                    super::review::ReviewState::Overdue(_)
                ))
    }
}
