//! Requests, grants, certificates and revocations on the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::label;
use crate::domain::grant::{self, State};

/// `POST /v1/requests`: ask for a step, and optionally a certificate for the signing key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub contract: String,
    #[serde(default)]
    pub step: Option<String>,
    /// Like `30m`; defaults to the step's max_ttl.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Mint a certificate for the signing key right away when granted.
    #[serde(default)]
    pub certify: bool,
    /// A window that opens later: RFC 3339, or `+2h` from now (at most 30 days ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// `POST /v1/grants/{id}/extend`: more time on an active grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// Like `30m`: added to the grant's end.
    pub ttl: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Mint a fresh certificate for the signing key when the extension is given at once.
    #[serde(default)]
    pub certify: bool,
}

/// A reason alone: `POST /v1/grants/{id}/deny`, and the dashboard's deny and revoke.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: String,
}

/// `POST /v1/revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    pub serial: Option<u64>,
    pub grant: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Only say what the revocation would reach; nothing changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// What a revocation reaches beyond what it names (see `service::Cascade`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cascade {
    /// Grants it ends: the one named (or a user's), and those that climbed from them.
    pub ended: Vec<GrantBrief>,
    /// Grants that stay, their end moved to what still holds them.
    pub shortened: Vec<GrantBrief>,
    /// Live sessions it cuts.
    pub sessions: Vec<SessionBrief>,
}

/// A grant, as a cascade names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantBrief {
    pub id: String,
    pub user: String,
    pub contract: String,
    pub step: String,
    pub end: Option<DateTime<Utc>>,
}

/// A live session, as a cascade names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionBrief {
    pub id: String,
    pub user: String,
    pub principal: String,
    pub target: String,
}

impl From<&grant::Grant> for GrantBrief {
    fn from(g: &grant::Grant) -> GrantBrief {
        GrantBrief {
            id: g.id.clone(),
            user: g.user.clone(),
            contract: g.contract.clone(),
            step: g.step.clone(),
            end: g.end,
        }
    }
}

/// `POST /v1/hosts/sign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignHostBody {
    pub name: String,
    pub public_key: String,
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The answer to `POST /v1/hosts/sign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostCertificate {
    /// The certificate line.
    pub certificate: String,
}

/// `GET /v1/grants` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub all: bool,
}

/// `GET /v1/grants/{id}` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantQuery {
    /// Seconds to wait while the grant is pending (long-poll), capped by the service.
    #[serde(default)]
    pub wait: u64,
    /// Wait while the grant's extension is pending instead (`extend --wait`).
    #[serde(default)]
    pub extension: bool,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    /// The signing key's fingerprint.
    pub key: String,
    pub roles: Vec<String>,
    pub user: String,
}

/// A request or grant as bodies and webhooks carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub user: String,
    pub contract: String,
    pub step: String,
    pub reason: Option<String>,
    pub ttl_secs: u64,
    pub requested_at: DateTime<Utc>,
    /// Where it stands: as recorded in bodies and webhooks (never `expired`), and as of now
    /// in a [`GrantView`] (an active grant past its end is `expired`). Older answers called
    /// it `status`.
    #[serde(with = "label", alias = "status")]
    pub state: State,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub approvals_from: Vec<String>,
    pub approvals_needed: u32,
    pub approvals: Vec<Approval>,
    pub closed: Option<Closure>,
    /// More time asked for, waiting for approvals (`ramp-ca extend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    /// The start asked for (`--start`): the window opens then, not at approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<DateTime<Utc>>,
}

/// A pending extension: the end it would move to, why, and its approvals so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extension {
    pub end: DateTime<Utc>,
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub approvals_needed: u32,
    pub approvals: Vec<Approval>,
}

/// One approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Who denied or revoked a grant, when and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closure {
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

impl From<&grant::Grant> for Grant {
    fn from(g: &grant::Grant) -> Grant {
        Grant {
            id: g.id.clone(),
            user: g.user.clone(),
            contract: g.contract.clone(),
            step: g.step.clone(),
            reason: g.reason.clone(),
            ttl_secs: g.ttl_secs,
            requested_at: g.requested_at,
            state: g.state,
            start: g.start,
            scheduled: g.scheduled,
            end: g.end,
            approvals_from: g.approvals_from.clone(),
            approvals_needed: g.approvals_needed,
            approvals: g
                .approvals
                .iter()
                .map(|a| Approval {
                    by: a.by.clone(),
                    at: a.at,
                })
                .collect(),
            closed: g.closed.as_ref().map(|c| Closure {
                by: c.by.clone(),
                at: c.at,
                reason: c.reason.clone(),
            }),
            extension: g.extension.as_ref().map(|e| Extension {
                end: e.end,
                reason: e.reason.clone(),
                requested_at: e.requested_at,
                approvals_needed: e.approvals_needed,
                approvals: e
                    .approvals
                    .iter()
                    .map(|a| Approval {
                        by: a.by.clone(),
                        at: a.at,
                    })
                    .collect(),
            }),
        }
    }
}

/// A grant as shown to people: the record plus its state now and what it allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantView {
    /// The grant, its `state` as of now.
    #[serde(flatten)]
    pub grant: Grant,
    pub principals: Vec<String>,
    pub targets: Vec<String>,
    /// The step is break-glass (its grants are announced as such).
    #[serde(default)]
    pub break_glass: bool,
    /// What the step's certificates allow beyond a plain login (`CertOptions::describe`).
    #[serde(default)]
    pub options: Vec<String>,
}

/// What a request, approval or certificate call returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub grant: GrantView,
    /// The certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA...`), when one was minted.
    pub certificate: Option<String>,
    pub serial: Option<u64>,
    /// Why the policy decided as it did.
    pub reasons: Vec<String>,
    /// The answer comes from a grant or request the caller already had: nothing new was
    /// filed (the last reason says which).
    #[serde(default)]
    pub existing: bool,
}

/// What a revocation names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeTarget {
    Serial(u64),
    Grant(String),
    User(String),
    Session(String),
}

/// The answer to `POST /v1/revoke`: what it covered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    pub target: RevokeTarget,
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub serials: Vec<u64>,
    pub grants: Vec<String>,
    /// What it reached (or, with `dry_run`, would reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<Cascade>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl From<grant::Revocation> for Revocation {
    fn from(r: grant::Revocation) -> Revocation {
        Revocation {
            target: match r.target {
                grant::RevokeTarget::Serial(s) => RevokeTarget::Serial(s),
                grant::RevokeTarget::Grant(g) => RevokeTarget::Grant(g),
                grant::RevokeTarget::User(u) => RevokeTarget::User(u),
                grant::RevokeTarget::Session(id) => RevokeTarget::Session(id),
            },
            by: r.by,
            at: r.at,
            reason: r.reason,
            serials: r.serials,
            grants: r.grants,
            cascade: None,
            dry_run: false,
        }
    }
}
