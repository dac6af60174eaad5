//! The open grants (pending or active) in memory: each request is decided on the steps its
//! user holds, and the dashboard lists what is open many times a second; neither may grow
//! with the ledger, nor the first with how many grants the user holds (an automation may
//! hold thousands).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::grant::{Grant, State};
use crate::store::HeldStep;

type StepKey = (String, String);
/// The active grants of one step, ordered by end: `(end, grant id)`.
type Ends = BTreeSet<(DateTime<Utc>, String)>;

#[derive(Default)]
pub struct ActiveIndex {
    /// user -> (contract, step) -> (end, grant id) of each active grant.
    by_step: HashMap<String, HashMap<StepKey, Ends>>,
    /// grant id -> where it sits in `by_step`.
    placed: HashMap<String, (String, StepKey, DateTime<Utc>)>,
    /// Pending and active grants (active ones may have expired since).
    open: HashMap<String, Grant>,
}

impl ActiveIndex {
    /// Takes a grant out of `by_step`.
    fn unplace(&mut self, id: &str) {
        if let Some((user, key, end)) = self.placed.remove(id) {
            if let Some(steps) = self.by_step.get_mut(&user) {
                if let Some(set) = steps.get_mut(&key) {
                    set.remove(&(end, id.to_string()));
                    if set.is_empty() {
                        steps.remove(&key);
                    }
                }
                if steps.is_empty() {
                    self.by_step.remove(&user);
                }
            }
        }
    }

    /// Records a grant as written: indexed while open, dropped otherwise.
    pub fn put(&mut self, g: &Grant) {
        if matches!(g.state, State::Pending | State::Active) {
            self.open.insert(g.id.clone(), g.clone());
        } else {
            self.open.remove(&g.id);
        }
        self.unplace(&g.id);
        if let (State::Active, Some(end)) = (g.state, g.end) {
            let key = (g.contract.clone(), g.step.clone());
            self.by_step
                .entry(g.user.clone())
                .or_default()
                .entry(key.clone())
                .or_default()
                .insert((end, g.id.clone()));
            self.placed.insert(g.id.clone(), (g.user.clone(), key, end));
        }
    }

    /// The grants pending or active at `now`, oldest request first; forgets expired ones
    /// (and requests that lapsed).
    pub fn open(&mut self, now: DateTime<Utc>) -> Vec<Grant> {
        let expired: Vec<String> = self
            .open
            .values()
            .filter(|g| g.state_at(now) == State::Expired)
            .map(|g| g.id.clone())
            .collect();
        for id in expired {
            self.open.remove(&id);
            self.unplace(&id);
        }
        let mut out: Vec<Grant> = self.open.values().cloned().collect();
        out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        out
    }

    /// The user's own open grant of one step: the active grant that ends last, else the
    /// oldest pending request for it (a request for a window that opens later is neither).
    pub fn own(
        &mut self,
        user: &str,
        contract: &str,
        step: &str,
        now: DateTime<Utc>,
    ) -> Option<Grant> {
        let key = (contract.to_string(), step.to_string());
        let active = self
            .by_step
            .get(user)
            .and_then(|steps| steps.get(&key))
            .and_then(|set| {
                set.iter()
                    .rev()
                    .filter_map(|(_, id)| self.open.get(id))
                    .find(|g| g.is_active(now))
            });
        if let Some(g) = active {
            return Some(g.clone());
        }
        self.open
            .values()
            .filter(|g| {
                g.state_at(now) == State::Pending
                    && g.opens_at(now) == now
                    && g.user == user
                    && g.contract == contract
                    && g.step == step
            })
            .min_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)))
            .cloned()
    }

    /// The steps `user` holds at `now` (grants whose window has opened), each with its latest
    /// end; forgets what has expired.
    pub fn held(&mut self, user: &str, now: DateTime<Utc>) -> Vec<HeldStep> {
        let Some(steps) = self.by_step.get_mut(user) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((contract, step), set) in steps.iter_mut() {
            while set.first().is_some_and(|(end, _)| *end <= now) {
                if let Some((_, id)) = set.pop_first() {
                    self.placed.remove(&id);
                }
            }
            // A window approved ahead holds nothing before it opens.
            let open = &self.open;
            let opened = |id: &String| {
                open.get(id)
                    .is_none_or(|g| g.state_at(now) != State::Scheduled)
            };
            if let Some((end, _)) = set.iter().rev().find(|(_, id)| opened(id)) {
                out.push(HeldStep {
                    contract: contract.clone(),
                    step: step.clone(),
                    end: *end,
                });
            }
        }
        steps.retain(|_, set| !set.is_empty());
        if steps.is_empty() {
            self.by_step.remove(user);
        }
        out.sort_by(|a, b| (&a.contract, &a.step).cmp(&(&b.contract, &b.step)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, step: &str, state: State, end_in: i64, now: DateTime<Utc>) -> Grant {
        Grant {
            id: id.into(),
            user: "alice".into(),
            contract: "prod-db".into(),
            step: step.into(),
            reason: None,
            ttl_secs: 60,
            requested_at: now,
            state,
            start: Some(now),
            end: Some(now + chrono::Duration::seconds(end_in)),
            approvals_from: vec![],
            approvals_needed: 0,
            approvals: vec![],
            closed: None,
            extension: None,
            scheduled: None,
        }
    }

    #[test]
    fn held_steps_follow_writes_and_time() {
        let now = Utc::now();
        let mut index = ActiveIndex::default();
        index.put(&grant("a", "observe", State::Active, 60, now));
        index.put(&grant("b", "observe", State::Active, 600, now));
        index.put(&grant("c", "operate", State::Pending, 600, now));
        let held = index.held("alice", now);
        assert_eq!(held.len(), 1, "pending is not held: {held:?}");
        assert_eq!(
            held[0].end,
            now + chrono::Duration::seconds(600),
            "latest end"
        );

        // Revoking the later grant leaves the earlier one.
        index.put(&grant("b", "observe", State::Revoked, 600, now));
        assert_eq!(
            index.held("alice", now)[0].end,
            now + chrono::Duration::seconds(60)
        );
        // Time passes: nothing is held, and the expired grant is forgotten.
        assert!(index
            .held("alice", now + chrono::Duration::seconds(61))
            .is_empty());
        assert!(index.placed.is_empty() && index.by_step.is_empty());
        // Listing forgets expired grants everywhere, even for a user who never asks again.
        index.put(&grant("d", "observe", State::Active, 5, now));
        index.open(now + chrono::Duration::seconds(6));
        assert!(index.placed.is_empty() && index.by_step.is_empty());
        let open: Vec<String> = index
            .open(now + chrono::Duration::seconds(61))
            .into_iter()
            .map(|g| g.id)
            .collect();
        assert_eq!(open, vec!["c".to_string()], "only the pending one is left");
        assert!(index.held("bob", now).is_empty());
    }
}
