//! What webhook receivers get: one JSON body per event (or Slack's `{"text"}`), each event
//! one of a few topics.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Vocabulary;

/// What happened, as receivers subscribe to it (`events:` in the service config) and as a
/// body's `event` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    /// A request waiting for approval.
    Request,
    /// One approval of a request.
    Approve,
    /// A request denied by a person, withdrawn, or refused by the policy.
    Deny,
    /// A grant became active (on request or at its last approval).
    Grant,
    /// A grant of a break-glass step became active (instead of `grant`).
    BreakGlass,
    /// A revocation.
    Revoke,
    /// More time on an active grant: asked for (waiting for approvals) or given.
    Extend,
    /// The bastion ended a session: expiry, revocation, removal from the policies, full
    /// recording disk, shutdown, or a crash found at the next start.
    SessionCutOff,
    /// A signed checkpoint of the audit chain, carried whole.
    Checkpoint,
    /// A flag rule matched a line of a session, or refused its operation.
    RiskyCommand,
    /// A reviewer signed a session off with a concern.
    ReviewConcern,
    /// A session's review went past due (once per session).
    ReviewOverdue,
}

impl Vocabulary for Topic {
    const ALL: &'static [Topic] = &[
        Topic::Request,
        Topic::Approve,
        Topic::Deny,
        Topic::Grant,
        Topic::BreakGlass,
        Topic::Revoke,
        Topic::Extend,
        Topic::SessionCutOff,
        Topic::Checkpoint,
        Topic::RiskyCommand,
        Topic::ReviewConcern,
        Topic::ReviewOverdue,
    ];

    fn label(self) -> &'static str {
        match self {
            Topic::Request => "request",
            Topic::Approve => "approve",
            Topic::Extend => "extend",
            Topic::Deny => "deny",
            Topic::Grant => "grant",
            Topic::BreakGlass => "break-glass",
            Topic::Revoke => "revoke",
            Topic::SessionCutOff => "session-cut-off",
            Topic::Checkpoint => "checkpoint",
            Topic::RiskyCommand => "risky-command",
            Topic::ReviewConcern => "review-concern",
            Topic::ReviewOverdue => "review-overdue",
        }
    }
}

/// The plain JSON body: the audit record an event comes from, with what people need to read
/// it added to `detail`, and the line a person reads.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    pub actor: String,
    pub at: DateTime<Utc>,
    pub audit_seq: u64,
    pub detail: Value,
    /// The topic's label.
    pub event: &'static str,
    pub subject: String,
    pub text: String,
}

/// The session a `session-cut-off` event is about, added to its `detail`.
#[derive(Debug, Clone, Serialize)]
pub struct CutOffSession {
    pub client: String,
    pub end: Option<DateTime<Utc>>,
    pub id: String,
    pub kind: String,
    pub principal: String,
    pub start: DateTime<Utc>,
    pub target: String,
    pub user: String,
}

/// The `detail` of a `checkpoint` event: the checkpoint whole, and what it vouches for.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointDetail {
    pub checkpoint: String,
    pub hash: String,
    pub seq: u64,
    pub signer: String,
}

/// Slack's incoming-webhook body.
#[derive(Debug, Clone, Serialize)]
pub struct SlackBody<'a> {
    pub text: &'a str,
}

/// A value as JSON, its maps' keys in order.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("webhook bodies always serialise")
}
