//! The dashboard's bodies: its live state, login links, recordings, playback frames, the
//! review queue and the audit page, as the page's script reads them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::audit::{AuditRecord, AuditReport};
use super::grants::GrantView;
use super::sessions::{Hit, Session};

/// The answer to `POST /v1/dashboard/link`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkBody {
    pub expires: DateTime<Utc>,
    /// `/ui/login?token=...`.
    pub path: String,
    /// The whole link, when the service knows its public address.
    pub url: Option<String>,
}

/// `GET /ui/login` query.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginQuery {
    pub token: String,
}

/// Everything the live view shows, as its user may see it (`/ui/api/state`, and each
/// `state` event of `/ui/api/stream`).
#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    pub active: Vec<ActiveRow>,
    pub live: Vec<LiveRow>,
    pub me: Me,
    pub now: DateTime<Utc>,
    pub pending: Vec<PendingRow>,
    /// What this user may ask for, for the request form.
    pub requestable: Vec<Requestable>,
}

/// A contract this user may request, as the request form offers it.
#[derive(Debug, Clone, Serialize)]
pub struct Requestable {
    pub contract: String,
    pub description: String,
    /// Whether a reason is required, and an example of its form.
    pub reason_required: bool,
    pub reason_example: Option<String>,
    pub steps: Vec<StepChoice>,
}

/// One step of a [`Requestable`] contract.
#[derive(Debug, Clone, Serialize)]
pub struct StepChoice {
    pub name: String,
    /// Like `30m`.
    pub max_ttl: String,
    /// The step it climbs from, held first.
    pub after: Option<String>,
    pub approvals: u32,
    pub break_glass: bool,
}

/// Who the page belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    pub admin: bool,
    /// The token every change must carry in `x-ramp-csrf`.
    pub csrf: String,
    pub expires: DateTime<Utc>,
    /// Holds a role some step's review names: the Review page is for them.
    pub may_review: bool,
    pub reviewer: bool,
    pub roles: Vec<String>,
    pub user: String,
}

/// An active grant, and whether this user may revoke it.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveRow {
    pub can_revoke: bool,
    pub grant: GrantView,
}

/// A pending request, and what this user may do about it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingRow {
    pub can_approve: bool,
    pub can_deny: bool,
    pub grant: GrantView,
}

/// A live session, its grant's step, reason and end, and whether this user may end it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRow {
    pub break_glass: bool,
    pub can_end: bool,
    pub contract: Option<String>,
    pub ends: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub session: Session,
    pub step: Option<String>,
}

/// `GET /ui/api/recordings` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RecordingsQuery {
    pub user: Option<String>,
    pub target: Option<String>,
    /// Seconds back.
    pub since: Option<i64>,
    /// Text that must appear in the recording (input, output or exec command).
    pub text: Option<String>,
    /// Match `text` regardless of case.
    #[serde(default)]
    pub ignore_case: bool,
    /// `text` is a regular expression.
    #[serde(default)]
    pub regex: bool,
}

/// One row of the recordings list.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingRow {
    #[serde(flatten)]
    pub session: Session,
    /// Lines that matched `text` and where, when searching.
    pub hits: Vec<Hit>,
    /// Why the recording could not be searched (changed, truncated, missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// The answer to `GET /ui/api/recordings/{id}/playback`.
#[derive(Debug, Clone, Serialize)]
pub struct PlaybackBody {
    pub playback: Playback,
    pub session: Session,
    /// Its command timeline, as `sessions show ID --commands --json` has it (that type's
    /// JSON is already the wire's, like a flag's).
    pub timeline: Vec<crate::recordings::timeline::Entry>,
}

/// One entry of the Review page's queue (`GET /ui/api/reviews`): the session, its grant's
/// contract and step, and when its review is due.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewRow {
    #[serde(flatten)]
    pub session: Session,
    /// None when its grant is no longer in the ledger.
    pub contract: Option<String>,
    pub step: Option<String>,
    pub due: Option<DateTime<Utc>>,
    /// Past `due`.
    pub overdue: bool,
}

/// One step of the screen: the rows that changed at `t` (ms since the session started).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Frame {
    pub t: u64,
    /// `[columns, rows]` when the terminal was resized (every row follows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<(u16, u16)>,
    /// `[row, html]` for each changed row.
    pub rows: Vec<(u16, String)>,
    /// `[row, column]` of the cursor, or null when hidden.
    pub cursor: Option<(u16, u16)>,
}

/// A whole recording as frames.
#[derive(Debug, Clone, Serialize)]
pub struct Playback {
    pub cols: u16,
    pub rows: u16,
    pub duration_ms: u64,
    /// Frames closer together than this were merged.
    pub step_ms: u64,
    pub frames: Vec<Frame>,
    /// The frames stop before the recording does (it changed the screen too much to hold).
    pub truncated: bool,
}

/// `GET /ui/api/audit` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    /// Seconds back (default a day).
    pub since: Option<i64>,
    pub limit: Option<usize>,
}

/// The answer to `GET /ui/api/audit`: the records, newest first, and the chain's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub verify: AuditReport,
}
