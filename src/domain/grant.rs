//! Requests and grants, and how they change. Plain data and pure transitions: the clock is
//! an argument, nothing here reads or writes anything. The serde derives are the ledger's
//! record format (see [`crate::store`]); the HTTP and webhook formats are [`crate::wire`]'s.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::policy::Policies;
use super::Vocabulary;

/// How long a request waits for its approvals before it lapses (`expired`, never approved):
/// approvers' queues hold what is still wanted, not last week's incidents.
pub const REQUEST_LAPSE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The name the service acts under when nobody did (a grant closed at activation).
pub const SERVICE_ACTOR: &str = "ramp-ca";

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
    /// As recorded: pending, active, denied or revoked; never expired, which
    /// [`Grant::state_at`] derives from `end` and the clock.
    #[serde(rename = "status")]
    pub state: State,
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
    /// More time asked for while active, waiting for its approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    /// The start asked for (`--start`): the grant's window opens then, not when approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<DateTime<Utc>>,
}

/// An extension of an active grant waiting for approvals (`ramp-ca extend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// The end it would move to.
    pub end: DateTime<Utc>,
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub approvals_needed: u32,
    pub approvals: Vec<Approval>,
}

/// Where a grant stands. A grant records pending, active, denied or revoked; scheduled is an
/// active grant before its start and expired one past its end, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Scheduled,
    Active,
    Expired,
    Denied,
    Revoked,
}

impl Vocabulary for State {
    const ALL: &'static [State] = &[
        State::Pending,
        State::Scheduled,
        State::Active,
        State::Expired,
        State::Denied,
        State::Revoked,
    ];

    fn label(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Scheduled => "scheduled",
            State::Active => "active",
            State::Expired => "expired",
            State::Denied => "denied",
            State::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
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

/// What a new request asks for, once the policy has decided the step, the ttl and who must
/// approve.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    pub id: String,
    pub user: &'a str,
    pub contract: &'a str,
    pub step: String,
    /// Blank reasons are no reason.
    pub reason: Option<&'a str>,
    pub ttl_secs: u64,
    pub approvals_from: Vec<String>,
    pub approvals_needed: u32,
    /// When the window opens, if later than at once (`--start`).
    pub start: Option<DateTime<Utc>>,
}

impl Grant {
    /// A new request at `now`, active at once when it needs no approval.
    pub fn requested(asked: Asked<'_>, now: DateTime<Utc>) -> Grant {
        let mut grant = Grant {
            id: asked.id,
            user: asked.user.to_string(),
            contract: asked.contract.to_string(),
            step: asked.step,
            reason: asked
                .reason
                .filter(|r| !r.trim().is_empty())
                .map(String::from),
            ttl_secs: asked.ttl_secs,
            requested_at: now,
            state: State::Pending,
            start: None,
            end: None,
            approvals_from: asked.approvals_from,
            approvals_needed: asked.approvals_needed,
            approvals: Vec::new(),
            closed: None,
            extension: None,
            scheduled: asked.start.filter(|s| *s > now),
        };
        if grant.approvals_needed == 0 {
            grant.activate(now);
        }
        grant
    }

    /// The state at `now`: an active grant before its start is scheduled, past its end
    /// expired; a request still waiting for approvals when it lapses is expired too.
    pub fn state_at(&self, now: DateTime<Utc>) -> State {
        match self.state {
            State::Active if self.end.is_some_and(|e| e <= now) => State::Expired,
            // Only a window asked for ahead waits for its start: a grant activated by another
            // node a moment after this `now` was read is active, not scheduled.
            State::Active
                if self.scheduled.is_some_and(|s| s > now)
                    && self.start.is_some_and(|s| s > now) =>
            {
                State::Scheduled
            }
            State::Pending if self.lapses_at() <= now => State::Expired,
            recorded => recorded,
        }
    }

    /// When a request still waiting for approvals lapses: [`REQUEST_LAPSE`] after it was
    /// made, or, for a window asked for ahead, when that window would have ended.
    pub fn lapses_at(&self) -> DateTime<Utc> {
        let lapse = chrono::Duration::seconds(REQUEST_LAPSE.as_secs() as i64);
        match self.scheduled {
            Some(start) => (start + chrono::Duration::seconds(self.ttl_secs as i64))
                .max(self.requested_at + lapse),
            None => self.requested_at + lapse,
        }
    }

    /// Approved and not yet ended at `now`: active, or scheduled to start later. What a
    /// certificate may be minted from (valid from the start); a step climbing from this one
    /// stands on it only while it is active (see [`dependents`]).
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        matches!(self.state_at(now), State::Active | State::Scheduled)
    }

    /// Active at `now`: what a certificate, a login and a live session need.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == State::Active
    }

    /// Pending, scheduled or active at `now`: a request still open, or a grant still held.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        matches!(
            self.state_at(now),
            State::Active | State::Scheduled | State::Pending
        )
    }

    /// When the window opens if the grant were approved at `now`: its scheduled start, or
    /// `now` once that has passed.
    pub fn opens_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.scheduled.map_or(now, |s| s.max(now))
    }

    /// Makes the grant active for its ttl from `now`, or from its scheduled start when that
    /// is later (approved ahead of its window).
    pub fn activate(&mut self, now: DateTime<Utc>) {
        let start = self.opens_at(now);
        self.state = State::Active;
        self.start = Some(start);
        self.end = Some(start + chrono::Duration::seconds(self.ttl_secs as i64));
    }

    /// Records one approval; true when it was the last one needed.
    pub fn approve(&mut self, by: &str, now: DateTime<Utc>) -> bool {
        self.approvals.push(Approval {
            by: by.to_string(),
            at: now,
        });
        self.approvals.len() as u32 >= self.approvals_needed
    }

    /// Ends the grant for good (`Denied` or `Revoked`), saying who did and why.
    pub fn close(&mut self, state: State, by: &str, now: DateTime<Utc>, reason: &str) {
        self.state = state;
        self.closed = Some(Closure {
            by: by.to_string(),
            at: now,
            reason: reason.to_string(),
        });
    }

    /// Moves an active grant's end to `end` (an extension granted); a pending extension is
    /// settled by it.
    pub fn extend_to(&mut self, end: DateTime<Utc>) {
        self.end = Some(end);
        self.extension = None;
    }

    /// Names of the people who approved so far.
    pub fn approvers(&self) -> Vec<String> {
        self.approvals.iter().map(|a| a.by.clone()).collect()
    }

    /// `contract/step`, as messages name what a grant is of.
    pub fn what(&self) -> String {
        format!("{}/{}", self.contract, self.step)
    }
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeTarget {
    Serial(u64),
    Grant(String),
    User(String),
    /// A live session someone ended: no certificate or grant changes, but every node's
    /// bastion hears of it as of any revocation and ends the session where it runs.
    Session(String),
}

impl RevokeTarget {
    /// The audit record's subject: `serial:N`, `grant:ID` or `user:NAME`.
    pub fn subject(&self) -> String {
        match self {
            RevokeTarget::Serial(s) => format!("serial:{s}"),
            RevokeTarget::Grant(g) => format!("grant:{g}"),
            RevokeTarget::User(u) => format!("user:{u}"),
            RevokeTarget::Session(id) => format!("session:{id}"),
        }
    }
}

/// One revocation as someone made it, with the certificates and grants it covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub target: RevokeTarget,
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub serials: Vec<u64>,
    pub grants: Vec<String>,
}

/// What ending some grants does to the grants that climbed from them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fallout {
    /// Open grants left standing on nothing: they end with the grants that ended.
    pub closed: Vec<Grant>,
    /// Active grants whose end moves earlier, with their new end.
    pub shortened: Vec<Grant>,
}

/// What ending `ended` does to the grants that climbed from them. A step with `after: X` is
/// held only while a grant of X is active (a pending request holds nothing, nor a window of
/// X not yet open), from its own window's start on, and never past the latest end among
/// those: revoking one of two `observe` grants moves an `operate` grant's end back to the
/// other's. Transitive.
pub fn dependents(p: &Policies, grants: &[Grant], ended: &[Grant], now: DateTime<Utc>) -> Fallout {
    let mut gone: HashSet<String> = ended.iter().map(|g| g.id.clone()).collect();
    // Open grants of the people concerned (a step climbs only from its own user's grants), as
    // they will stand, ends possibly moved earlier.
    let users: HashSet<&str> = ended.iter().map(|g| g.user.as_str()).collect();
    let mut open: Vec<Grant> = grants
        .iter()
        .filter(|g| users.contains(g.user.as_str()) && g.is_open(now))
        .cloned()
        .collect();
    let mut closed = Vec::new();
    let mut moved: HashSet<String> = HashSet::new();
    loop {
        let mut changed = false;
        for i in 0..open.len() {
            let g = &open[i];
            if gone.contains(&g.id) {
                continue;
            }
            let Some(after) = p
                .contracts
                .get(&g.contract)
                .and_then(|c| c.step(&g.step))
                .and_then(|s| s.after.as_deref())
            else {
                continue;
            };
            // What holds it up is open when it is: a window ahead holds nothing before that.
            let at = g.start.unwrap_or_else(|| g.opens_at(now)).max(now);
            let held_until = open
                .iter()
                .filter(|o| {
                    o.user == g.user
                        && o.contract == g.contract
                        && o.step == after
                        && o.is_active(at)
                        && !gone.contains(&o.id)
                })
                .filter_map(|o| o.end)
                .max();
            match held_until {
                None => {
                    gone.insert(g.id.clone());
                    closed.push(g.clone());
                    changed = true;
                }
                Some(until) if g.state == State::Active && g.end.is_some_and(|e| e > until) => {
                    open[i].end = Some(until);
                    moved.insert(open[i].id.clone());
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if !changed {
            break;
        }
    }
    let shortened = open
        .into_iter()
        .filter(|g| moved.contains(&g.id) && !gone.contains(&g.id))
        .collect();
    Fallout { closed, shortened }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
    }

    fn asked(needed: u32) -> Asked<'static> {
        Asked {
            id: "g1".into(),
            user: "alice",
            contract: "prod-db",
            step: "observe".into(),
            reason: Some("  "),
            ttl_secs: 60,
            approvals_from: vec!["sre-lead".into()],
            approvals_needed: needed,
            start: None,
        }
    }

    #[test]
    fn a_grant_goes_from_request_to_expiry_and_closes_with_who_and_why() {
        let g = Grant::requested(asked(0), t(0));
        assert_eq!(g.reason, None, "a blank reason is no reason");
        assert_eq!(
            (g.state_at(t(59)), g.state_at(t(60))),
            (State::Active, State::Expired)
        );
        let mut p = Grant::requested(asked(2), t(0));
        assert_eq!(p.state_at(t(1000)), State::Pending);
        assert!(!p.approve("bob", t(1)));
        assert!(p.approve("carol", t(2)));
        assert_eq!(p.approvers(), ["bob", "carol"]);
        p.close(State::Denied, "carol", t(3), "no");
        assert_eq!(p.state_at(t(3)), State::Denied);
        assert_eq!(p.closed.unwrap().reason, "no");
        for &s in State::ALL {
            assert_eq!(State::from_label(s.label()), Some(s));
        }
    }

    /// Regression: a node whose `now` was read a moment before another node activated a
    /// grant found it "scheduled, not pending" (nodes::approvals_racing_on_two_nodes_count_once).
    #[test]
    fn only_a_window_asked_for_ahead_is_scheduled() {
        let g = Grant::requested(asked(0), t(1));
        assert_eq!(
            g.state_at(t(0)),
            State::Active,
            "activated just after this now"
        );
        let ahead = Grant::requested(
            Asked {
                start: Some(t(100)),
                ..asked(0)
            },
            t(0),
        );
        assert_eq!(
            (ahead.state_at(t(99)), ahead.state_at(t(100))),
            (State::Scheduled, State::Active)
        );
    }
}
