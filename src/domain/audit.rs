//! The audit chain and what goes into it. Every audited action is an [`Action`] with typed
//! details; its label (the record's `action`) and the JSON of its details (the record's
//! `detail`) are made here and nowhere else, and read back here (webhooks). A record carries
//! the SHA-256 of the one before it ([`chain_hash`]); [`ChainWalk`] is the one place that
//! says what a well-formed next record is.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::retention::RecordingRemoved;
use super::review::{ReviewOverdue, SessionFlagged, SessionReviewed};
use super::session::{RecordingSeal, SessionFilter};
use super::Vocabulary;

/// The hash before the first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the hash-chained audit log, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// Who did it (a user name, or `ramp-ca` for the service itself).
    pub actor: String,
    /// What happened: an [`Action`]'s label.
    pub action: String,
    /// What it happened to (a grant id, a serial, a host).
    pub subject: String,
    /// The action's details.
    pub detail: Value,
    /// Hex SHA-256 of the previous record (zeros for the first).
    pub prev: String,
    /// Hex SHA-256 over `prev` and this record's fields.
    pub hash: String,
}

impl AuditRecord {
    /// What kind of action the record is, when this version knows it.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_label(&self.action)
    }

    /// The record's action with its details, when this version can read them.
    pub fn typed(&self) -> Option<Action> {
        Action::parse(self.kind()?, &self.detail)
    }
}

/// An audited action before it is chained: who, what, to what.
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor: String,
    pub subject: String,
    pub action: Action,
}

impl Entry {
    pub fn new(actor: &str, subject: &str, action: impl Into<Action>) -> Entry {
        Entry {
            actor: actor.into(),
            subject: subject.into(),
            action: action.into(),
        }
    }

    /// The record this entry becomes as record `seq` after `prev`, at `at`.
    pub fn chain(&self, prev: &Head, at: DateTime<Utc>) -> AuditRecord {
        let mut r = AuditRecord {
            seq: prev.seq + 1,
            at,
            actor: self.actor.clone(),
            action: self.action.kind().label().to_string(),
            subject: self.subject.clone(),
            detail: self.action.detail(),
            prev: prev.hash.clone(),
            hash: String::new(),
        };
        r.hash = chain_hash(&r);
        r
    }
}

/// Declares the audited actions: each variant with its detail type and its label, once.
macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident($detail:ident) = $label:literal,)*) => {
        /// Every audited action with its details.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Action {
            $($(#[$doc])* $variant($detail),)*
        }

        /// What an audited action is, without its details.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($(#[$doc])* $variant,)*
        }

        impl Vocabulary for Kind {
            const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The label records, listings and filters use (`request`, `session-end`...).
            fn label(self) -> &'static str {
                match self {
                    $(Kind::$variant => $label,)*
                }
            }
        }

        impl Action {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Action::$variant(_) => Kind::$variant,)*
                }
            }

            /// The record's `detail`: the details as JSON.
            pub fn detail(&self) -> Value {
                match self {
                    $(Action::$variant(d) => to_json(d),)*
                }
            }

            /// Reads the details of a record of `kind` back; `None` when they do not fit.
            pub fn parse(kind: Kind, detail: &Value) -> Option<Action> {
                match kind {
                    $(Kind::$variant => from_json(detail).map(Action::$variant),)*
                }
            }
        }

        $(impl From<$detail> for Action {
            fn from(d: $detail) -> Action {
                Action::$variant(d)
            }
        })*
    };
}

actions! {
    /// A request for a step (granted, pending or answered from one held).
    Request(Requested) = "request",
    /// A request the policy refused.
    RequestDenied(RequestDenied) = "request-denied",
    /// A grant became active.
    Grant(Granted) = "grant",
    /// One approval.
    Approve(Approved) = "approve",
    /// More time on an active grant: asked for (pending approvals) or given.
    Extend(Extended) = "extend",
    /// An approval refused (not an approver, one's own request...).
    ApproveRefused(ApprovalRefused) = "approve-refused",
    /// A request denied, withdrawn, or closed at activation.
    Deny(Denied) = "deny",
    /// A user certificate minted.
    Issue(Issued) = "issue",
    /// A revocation.
    Revoke(Revoked) = "revoke",
    /// A host certificate minted.
    SignHost(HostSigned) = "sign-host",
    /// Recorded sessions listed.
    SessionsList(SessionsListed) = "sessions-list",
    /// A recording read (shown, played, exported, followed).
    SessionRead(SessionRead) = "session-read",
    /// Recordings searched.
    SessionsGrep(SessionsSearched) = "sessions-grep",
    /// A login through the bastion.
    Login(LoggedIn) = "login",
    /// A login the bastion refused.
    LoginRefused(LoginRefused) = "login-refused",
    /// A port forward the certificate does not permit.
    ForwardRefused(ForwardRefused) = "forward-refused",
    /// A recorded session started.
    SessionStart(SessionStarted) = "session-start",
    /// A session the bastion ended, with its recording's seal.
    SessionEnd(SessionEnded) = "session-end",
    /// A live session a person ended (on-call, an approver, an admin, its own user).
    SessionStop(SessionStopped) = "session-stop",
    /// A session a crash interrupted (found at the next start), with its recording's seal.
    SessionInterrupted(SessionInterrupted) = "session-interrupted",
    /// A one-time dashboard login link handed out.
    DashboardLink(DashboardLinked) = "dashboard-link",
    /// A browser session started from a link.
    DashboardLogin(DashboardLoggedIn) = "dashboard-login",
    /// A flag rule matched a line of a session (or refused its operation).
    SessionFlag(SessionFlagged) = "session-flag",
    /// A reviewer signed a session off (ok or concern).
    SessionReview(SessionReviewed) = "session-review",
    /// A session's review went past due (once per session).
    ReviewOverdue(ReviewOverdue) = "review-overdue",
    /// A session's recording deleted by retention (its contract's `keep:`).
    RecordingRemoved(RecordingRemoved) = "recording-removed",
}

impl Kind {
    /// The actions that end a session and carry its recording's seal.
    pub fn ends_session(self) -> bool {
        matches!(self, Kind::SessionEnd | Kind::SessionInterrupted)
    }
}

fn to_json<T: Serialize>(detail: &T) -> Value {
    serde_json::to_value(detail).expect("audit details always serialise")
}

fn from_json<T: DeserializeOwned>(detail: &Value) -> Option<T> {
    serde_json::from_value(detail.clone()).ok()
}

/// `request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    pub contract: String,
    pub step: String,
    pub ttl_secs: u64,
    pub reason: Option<String>,
    pub needs_approvals: u32,
    /// The start asked for (`--start`), for a window that opens later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
}

/// `request-denied`: what was asked, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDenied {
    pub contract: String,
    pub step: Option<String>,
    pub ttl: Option<String>,
    pub reason: Option<String>,
    pub denied: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// `grant`: until when; who approved, when it took approvals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Granted {
    pub end: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// The `approvals.auto` rule that approved it at once, with its conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_rule: Option<String>,
    /// The node (`serve --node`) that wrote it; absent in records from before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `extend`: the end it moves from and to, and why; `pending` while it waits for approvals,
/// else who approved it (or which rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extended {
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_rule: Option<String>,
}

/// `approve`: how many approvals of how many needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approved {
    pub approvals: u64,
    pub needed: u32,
    /// The approval is of an extension of an active grant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extension: bool,
}

/// `deny`: why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denied {
    pub reason: String,
    /// What was denied is an extension of an active grant (which stays as it was).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extension: bool,
}

/// `approve-refused`: why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRefused {
    pub reason: String,
}

/// `forward-refused`: why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardRefused {
    pub reason: String,
}

/// `issue`: the certificate minted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    pub grant: String,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// The certified key's fingerprint.
    pub key: String,
}

/// `revoke`: what it covered, and the grants whose end moved earlier with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub reason: String,
    pub serials: Vec<u64>,
    pub grants: Vec<String>,
    pub shortened: Vec<Shortened>,
}

/// A grant whose end a revocation moved earlier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shortened {
    pub grant: String,
    pub end: Option<DateTime<Utc>>,
}

/// `sign-host`: the host certificate minted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSigned {
    pub serial: u64,
    pub principals: Vec<String>,
    pub key: String,
    pub valid_before: u64,
}

/// `sessions-list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsListed {
    pub filter: SessionFilter,
    pub count: u64,
}

/// `session-read`: why, and whose session on which target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRead {
    pub purpose: String,
    pub user: String,
    pub target: String,
}

/// `sessions-grep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsSearched {
    pub pattern: String,
    pub filter: SessionFilter,
    pub hits: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regex: bool,
    /// Recordings that could not be read, by session id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

/// `login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub principal: String,
    pub grant: String,
    pub serial: u64,
    pub client: String,
    /// The node (`serve --node`) that wrote it; absent in records from before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `login-refused`: why, from where, with which certificate (if one was offered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginRefused {
    pub reason: String,
    pub client: String,
    pub serial: Option<u64>,
    pub key_id: Option<String>,
}

/// `session-start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub target: String,
    pub principal: String,
    pub kind: String,
    pub command: Option<String>,
    pub grant: String,
    pub serial: u64,
    pub client: String,
    /// The node (`serve --node`) that wrote it; absent in records from before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `session-end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnded {
    #[serde(default)]
    pub exit_status: Option<u32>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    /// The node (`serve --node`) that wrote it; absent in records from before node names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `session-stop`: whose session, where, and why it was ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStopped {
    pub user: String,
    pub target: String,
    pub reason: String,
}

/// `session-interrupted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInterrupted {
    pub target: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    /// The node that found it interrupted and ended it: the session's own at its restart,
    /// or another once the session's node's lease lapsed; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why, when another node ended it (its node's lease lapsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// `dashboard-link`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardLinked {
    pub expires: DateTime<Utc>,
}

/// `dashboard-login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardLoggedIn {
    pub link_expires: DateTime<Utc>,
    pub session_expires: DateTime<Utc>,
}

/// The seal a session-ending record carries; `None` for any other record, and for records
/// written before seals were audited.
pub fn seal_in(r: &AuditRecord) -> Option<RecordingSeal> {
    if !r.kind()?.ends_session() {
        return None;
    }
    serde_json::from_value(r.detail.get("recording")?.clone()).ok()
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

/// A point of the chain: a record's sequence number and hash. The chain's head is kept in
/// the ledger, so removing the newest records is noticed too; a checkpoint signs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// Before the first record.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: ZERO_HASH.into(),
        }
    }
}

/// The first record where the chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub seq: u64,
    pub reason: String,
}

/// Follows the chain record by record from a known point, checking every link: the one
/// place that says what a well-formed next record is (the ledger's own verification, the
/// checkpoint writer's and an auditor's client all walk with it).
#[derive(Debug, Clone)]
pub struct ChainWalk {
    at: Head,
}

impl ChainWalk {
    pub fn from(at: Head) -> ChainWalk {
        ChainWalk { at }
    }

    /// Where the walk stands: the last record checked.
    pub fn at(&self) -> &Head {
        &self.at
    }

    /// The sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.at.seq + 1
    }

    /// Checks that `r` is the next record, links to the last one and hashes to its hash.
    pub fn step(&mut self, r: &AuditRecord) -> Result<(), BadRecord> {
        let expected = self.next_seq();
        let bad = |reason: String| BadRecord {
            seq: expected,
            reason,
        };
        if r.seq != expected {
            return Err(bad(format!("record {expected} claims sequence {}", r.seq)));
        }
        if r.prev != self.at.hash {
            return Err(bad(format!(
                "record {expected} does not link to record {}",
                expected - 1
            )));
        }
        if chain_hash(r) != r.hash {
            return Err(bad(format!(
                "record {expected} was altered (its hash does not match its contents)"
            )));
        }
        self.at = Head {
            seq: r.seq,
            hash: r.hash.clone(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_one_label_and_its_details_read_back() {
        let mut labels: Vec<&str> = Kind::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Kind::ALL.len());
        let revoke = Action::Revoke(Revoked {
            reason: "INC-1".into(),
            serials: vec![3, 4],
            grants: vec!["g1".into()],
            shortened: vec![Shortened {
                grant: "g2".into(),
                end: None,
            }],
        });
        let entry = Entry::new("carol", "grant:g1", revoke.clone());
        let r = entry.chain(&Head::genesis(), DateTime::UNIX_EPOCH);
        assert_eq!((r.seq, r.action.as_str()), (1, "revoke"));
        assert_eq!(
            r.detail,
            serde_json::json!({"reason": "INC-1", "serials": [3, 4], "grants": ["g1"],
                "shortened": [{"grant": "g2", "end": null}]})
        );
        assert_eq!(r.typed(), Some(revoke));
        let mut walk = ChainWalk::from(Head::genesis());
        assert_eq!(walk.step(&r), Ok(()));
        let granted = Granted {
            end: None,
            approvers: None,
            by_rule: None,
            node: None,
        };
        assert_eq!(
            Action::from(granted).detail(),
            serde_json::json!({"end": null})
        );
    }
}
