//! Recorded sessions on the wire: their metadata, their events, searches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::label;
// Flags and reviews are small value types whose JSON is already the wire's, like the seal.
use crate::domain::flags::Flag;
use crate::domain::retention::Removed;
use crate::domain::review::{Review, ReviewDue};
use crate::domain::session::{self, RecordingSeal, SessionMeta, SessionState};

/// One recorded session's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub grant: String,
    pub serial: u64,
    pub key_id: String,
    pub principal: String,
    pub target: String,
    pub client: String,
    pub kind: String,
    pub command: Option<String>,
    pub term: Option<String>,
    pub cols: u32,
    pub rows: u32,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    #[serde(with = "label")]
    pub state: SessionState,
    pub exit_status: Option<u32>,
    pub end_reason: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub files: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_in: Option<u64>,
    /// The node whose bastion ran it; absent for sessions from before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Lines flag rules matched, with their offsets into the recording.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// The review its step asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewDue>,
    /// The sign-off, once given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<Review>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue_announced: bool,
    /// Its recording was deleted by retention: when, by which contract's `keep:`, and the
    /// audit record that says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removed>,
}

/// Moves every field across; written once for both directions.
macro_rules! session_fields {
    ($from:expr, $to:ident) => {{
        let m = $from;
        $to {
            id: m.id,
            user: m.user,
            grant: m.grant,
            serial: m.serial,
            key_id: m.key_id,
            principal: m.principal,
            target: m.target,
            client: m.client,
            kind: m.kind,
            command: m.command,
            term: m.term,
            cols: m.cols,
            rows: m.rows,
            start: m.start,
            end: m.end,
            state: m.state,
            exit_status: m.exit_status,
            end_reason: m.end_reason,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            files: m.files,
            env: m.env,
            recording: m.recording,
            sealed_in: m.sealed_in,
            node: m.node,
            flags: m.flags,
            review: m.review,
            reviewed: m.reviewed,
            overdue_announced: m.overdue_announced,
            removed: m.removed,
        }
    }};
}

impl From<SessionMeta> for Session {
    fn from(m: SessionMeta) -> Session {
        session_fields!(m, Session)
    }
}

impl From<Session> for SessionMeta {
    fn from(s: Session) -> SessionMeta {
        session_fields!(s, SessionMeta)
    }
}

/// Which sessions a listing (`GET /v1/sessions` query) or search covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    /// Only sessions started this many seconds ago or later.
    pub since: Option<i64>,
    /// Only sessions with flags.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
    /// Only sessions waiting for review.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreviewed: bool,
    /// Only sessions whose review is overdue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue: bool,
}

/// Moves every filter field across; written once for both directions.
macro_rules! filter_fields {
    ($from:expr, $to:path) => {{
        let f = $from;
        $to {
            user: f.user,
            target: f.target,
            since: f.since,
            flagged: f.flagged,
            unreviewed: f.unreviewed,
            overdue: f.overdue,
        }
    }};
}

impl From<SessionFilter> for session::SessionFilter {
    fn from(f: SessionFilter) -> session::SessionFilter {
        filter_fields!(f, session::SessionFilter)
    }
}

impl From<session::SessionFilter> for SessionFilter {
    fn from(f: session::SessionFilter) -> SessionFilter {
        filter_fields!(f, SessionFilter)
    }
}

/// `POST /v1/sessions/{id}/review`: a reviewer's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub verdict: crate::domain::review::Verdict,
    pub note: String,
}

/// `POST /v1/sessions/grep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepBody {
    pub pattern: String,
    #[serde(default, flatten)]
    pub filter: SessionFilter,
    /// Match regardless of case.
    #[serde(default)]
    pub ignore_case: bool,
    /// `pattern` is a regular expression (Rust `regex` syntax).
    #[serde(default)]
    pub regex: bool,
}

/// The answer to `POST /v1/sessions/grep`: the hits in the recordings that could be read,
/// and those that could not, each with why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Grepped {
    pub hits: Vec<Hit>,
    pub damaged: Vec<Damaged>,
    /// Sessions the search covered whose recordings retention removed (not searched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// A recording a search could not read (changed, truncated, missing), and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Damaged {
    pub session: String,
    pub error: String,
}

/// `GET /v1/sessions/{id}` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionQuery {
    /// Why the recording is read (show, play, export), for the audit log.
    pub purpose: Option<String>,
}

/// The answer to `GET /v1/sessions/{id}`: the metadata, and the events in the recording
/// encoding, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionBody {
    pub events: String,
    pub session: Session,
}

/// One match of a search: which session, when, and the line of text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub session: String,
    /// Milliseconds since the session started.
    pub at_ms: u64,
    pub line: String,
    /// `output`, `input` (typed) or `command` (an exec session's command line).
    #[serde(default = "output")]
    pub stream: String,
}

fn output() -> String {
    "output".into()
}
