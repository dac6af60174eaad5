//! After a session: its flags audited as they come, the review its step asks for, the
//! queue, sign-off, and overdue reviews announced once.
//!
//! Review state lives in each session's metadata (what it needs, fixed at its start; its
//! sign-off, written in the same commit as the `session-review` record that proves it), so
//! the queue reads the sessions, never the audit chain: one read of the session metadata
//! per call, like `sessions list`.

use chrono::{DateTime, Utc};

use super::{Result, Service, ServiceError};
use crate::domain::audit::Entry;
use crate::domain::flags::Flag;
use crate::domain::grant::{Grant, SERVICE_ACTOR};
use crate::domain::policy::FlagRule;
use crate::domain::review::{
    self, Review, ReviewDue, ReviewOverdue, ReviewState, SessionFlagged, SessionReviewed, Verdict,
};
use crate::domain::session::SessionMeta;
use crate::store::Change;

/// The longest note a verdict may carry.
pub const MAX_NOTE: usize = 2000;

/// Where the review queue stands, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReviewCounts {
    pub pending: usize,
    pub overdue: usize,
}

impl Service {
    /// The auditors' report over the `since_secs` before `now` (admins and auditors): one
    /// read of the grants and one of the session metadata.
    pub async fn report(
        &self,
        who: &str,
        since_secs: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::domain::report::Row>> {
        self.require_reviewer(who, super::access::Reading::Report)?;
        let grants = self.store.grants().await?;
        let sessions = self.store.sessions().await?;
        let since = crate::domain::session::seconds_before(now, since_secs);
        Ok(crate::domain::report::report(
            &grants, &sessions, since, now,
        ))
    }

    /// The flag rules of `grant`'s contract, for the bastion to run over its sessions.
    pub fn flag_rules(&self, grant: &Grant) -> Vec<FlagRule> {
        self.policies()
            .contracts
            .get(&grant.contract)
            .map(|c| c.flags.clone())
            .unwrap_or_default()
    }

    /// The review sessions under `grant` need, as its step says now.
    pub fn review_due(&self, grant: &Grant) -> Option<ReviewDue> {
        let by_people = !grant.approvals.is_empty();
        self.step_of(grant)?.review_of(by_people).map(Into::into)
    }

    /// Audits flags raised in live sessions (`session-flag`, one record each, in one
    /// commit); the notifier announces them (`risky-command`).
    pub async fn session_flags(
        &self,
        flags: Vec<(SessionMeta, Flag)>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        let entries = flags
            .into_iter()
            .map(|(s, flag)| {
                let target = s.target.clone();
                Entry::new(&s.user, &s.id, SessionFlagged { target, flag })
            })
            .collect();
        self.commit(Change::audit(entries), now).await?;
        Ok(())
    }

    /// Roles `who` holds at `now` (people.yaml's, and on call).
    fn roles_at(&self, who: &str, now: DateTime<Utc>) -> Vec<String> {
        self.policies().roles_at(who, now)
    }

    /// What `who` may review, the one due first first.
    pub async fn review_queue(&self, who: &str, now: DateTime<Utc>) -> Result<Vec<SessionMeta>> {
        let roles = self.roles_at(who, now);
        let sessions = self.store.sessions().await?;
        Ok(review::queue(&sessions, who, &roles, now)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Whether `who` holds, at `now`, a role some step's review names (see
    /// [`crate::domain::policy::Policies::reviews_any`]): the dashboard's Review page is for them.
    pub fn may_review_any(&self, who: &str, now: DateTime<Utc>) -> bool {
        self.policies().reviews_any(&self.roles_at(who, now))
    }

    /// Whether `who` may read session `s` at `now` to review it.
    pub(crate) fn may_review(&self, who: &str, s: &SessionMeta, now: DateTime<Utc>) -> bool {
        review::may_review(s, who, &self.roles_at(who, now))
    }

    /// Records `who`'s verdict on session `id` (`session-review`, with the sign-off in its
    /// metadata, in one commit). Refused for one's own session, a live one, one reviewed
    /// already, or without a role its review names.
    pub async fn review(
        &self,
        who: &str,
        id: &str,
        verdict: Verdict,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<SessionMeta> {
        let note = note.trim();
        if note.is_empty() {
            return Err(ServiceError::BadRequest(
                "a verdict needs a note saying what you looked at (--note TEXT)".into(),
            ));
        }
        if note.chars().count() > MAX_NOTE {
            return Err(ServiceError::BadRequest(format!(
                "the note is longer than {MAX_NOTE} characters"
            )));
        }
        // Under the ledger's lock, read inside it: retention removing this session's
        // recording at the same moment must not have its mark written over.
        // (Two reviewers at once: the second reads the first's verdict and is refused.)
        let mut tx = self.store.grant_changes().await?;
        let found = tx.session(id).await?;
        let refused = match &found {
            None => Some(ServiceError::NotFound(format!(
                "no recorded session with id `{}` (see `ramp-ca sessions review` for the queue)",
                crate::shown::shown(id)
            ))),
            Some(s) => review::refusal(s, who, &self.roles_at(who, now)).map(ServiceError::Denied),
        };
        let (Some(mut s), None) = (found, refused.as_ref()) else {
            tx.finish().await?;
            return Err(refused.expect("a refusal"));
        };
        let reviewed = SessionReviewed {
            user: s.user.clone(),
            target: s.target.clone(),
            verdict,
            note: note.to_string(),
            due: review::due(&s),
            flags: s.flags.len(),
        };
        s.reviewed = Some(Review {
            by: who.to_string(),
            at: now,
            verdict,
            note: note.to_string(),
        });
        let change = Change {
            sessions: vec![s.clone()],
            entries: vec![Entry::new(who, id, reviewed)],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        tx.finish().await?;
        Ok(s)
    }

    /// Announces each review that went past due, once (`review-overdue`, with the session's
    /// metadata marked in the same commit), and counts the queue for `/metrics`. One read of
    /// the session metadata; those to announce are read again under the ledger's lock, so
    /// a sign-off meanwhile is not written over and two nodes checking at once announce
    /// each once.
    pub async fn check_reviews(&self, now: DateTime<Utc>) -> Result<ReviewCounts> {
        let mut counts = ReviewCounts::default();
        let mut due_now = Vec::new();
        for s in self.store.sessions().await? {
            match review::state(&s, now) {
                ReviewState::Pending(_) => counts.pending += 1,
                ReviewState::Overdue(_) => {
                    counts.pending += 1;
                    counts.overdue += 1;
                    if !s.overdue_announced {
                        due_now.push(s.id);
                    }
                }
                _ => {}
            }
        }
        self.metrics.set_reviews(counts.pending, counts.overdue);
        if due_now.is_empty() {
            return Ok(counts);
        }
        let mut change = Change::default();
        let mut tx = self.store.grant_changes().await?;
        for id in due_now {
            let Some(mut s) = tx.session(&id).await? else {
                continue;
            };
            let ReviewState::Overdue(due) = review::state(&s, now) else {
                continue;
            };
            if s.overdue_announced {
                continue;
            }
            let overdue = ReviewOverdue {
                user: s.user.clone(),
                target: s.target.clone(),
                due,
                by: s.review.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
            };
            change
                .entries
                .push(Entry::new(SERVICE_ACTOR, &s.id, overdue));
            s.overdue_announced = true;
            change.sessions.push(s);
        }
        if !change.entries.is_empty() {
            tx.commit(change, now).await?;
        }
        tx.finish().await?;
        Ok(counts)
    }
}
