//! Requests and grants as the ledger keeps them: plain data, no IO.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A request and, once approved, the grant it became (one record, one id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub user: String,
    pub contract: String,
    pub step: String,
    pub reason: Option<String>,
    /// How long the grant lasts once active, in seconds (already clamped by the decision).
    pub ttl_secs: u64,
    pub requested_at: DateTime<Utc>,
    pub status: Status,
    /// When the grant became active.
    pub start: Option<DateTime<Utc>>,
    /// When it stops (or stopped) being valid; no certificate outlives it.
    pub end: Option<DateTime<Utc>>,
    /// Roles whose holders may approve, and how many distinct approvers are needed.
    pub approvals_from: Vec<String>,
    pub approvals_needed: u32,
    pub approvals: Vec<Approval>,
    /// Who denied or revoked it, when and why.
    pub closed: Option<Closure>,
}

/// The stored status; `Expired` is derived from `end` and the clock, see [`Grant::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Active,
    Denied,
    Revoked,
}

/// The state a person sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Active,
    Expired,
    Denied,
    Revoked,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// A denial or revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

impl Grant {
    /// The state at `now`: an active grant past its end is expired.
    pub fn state(&self, now: DateTime<Utc>) -> State {
        match self.status {
            Status::Pending => State::Pending,
            Status::Denied => State::Denied,
            Status::Revoked => State::Revoked,
            Status::Active if self.end.is_some_and(|e| e <= now) => State::Expired,
            Status::Active => State::Active,
        }
    }

    /// Makes the grant active from `now` for its ttl.
    pub fn activate(&mut self, now: DateTime<Utc>) {
        self.status = Status::Active;
        self.start = Some(now);
        self.end = Some(now + chrono::Duration::seconds(self.ttl_secs as i64));
    }

    /// Names of the people who approved so far.
    pub fn approvers(&self) -> Vec<String> {
        self.approvals.iter().map(|a| a.by.clone()).collect()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Expired => "expired",
            State::Denied => "denied",
            State::Revoked => "revoked",
        };
        f.write_str(s)
    }
}
