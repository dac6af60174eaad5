//! After a session: the review its step asks for (who, by when), where a session stands in
//! the review queue at `now`, who may sign it off, and the audited actions of flags and
//! reviews. Pure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::policy::{ReviewRule, ROLE_ADMIN, ROLE_AUDITOR};
use super::session::{SessionMeta, SessionState};
use super::Vocabulary;

/// The review a session needs, fixed when it starts (a later policy change does not move
/// the goalposts of sessions already run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDue {
    /// Roles whose holders may sign it off.
    pub by: Vec<String>,
    /// Seconds after the session's end it is due.
    pub within_secs: u64,
}

impl From<ReviewRule> for ReviewDue {
    fn from(r: ReviewRule) -> ReviewDue {
        ReviewDue {
            by: r.by,
            within_secs: r.within.as_secs(),
        }
    }
}

/// A reviewer's word on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing wrong.
    Ok,
    /// Something to follow up: announced (`review-concern`).
    Concern,
}

impl Vocabulary for Verdict {
    const ALL: &'static [Verdict] = &[Verdict::Ok, Verdict::Concern];

    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Concern => "concern",
        }
    }
}

/// A sign-off, as the session's metadata keeps it (the audit record is the proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub by: String,
    pub at: DateTime<Utc>,
    pub verdict: Verdict,
    pub note: String,
}

/// Where a session stands in review at some `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewState {
    /// Its step asks for none, and nobody gave one.
    NotNeeded,
    /// Needs one, but is still live.
    Live,
    /// Waiting for a review due then.
    Pending(DateTime<Utc>),
    /// Past its due time without a review.
    Overdue(DateTime<Utc>),
    Done(Verdict),
}

impl ReviewState {
    /// Still waiting for a review (pending or overdue).
    pub fn waiting(self) -> bool {
        matches!(self, ReviewState::Pending(_) | ReviewState::Overdue(_))
    }

    /// The due time of a waiting review.
    pub fn due(self) -> Option<DateTime<Utc>> {
        match self {
            ReviewState::Pending(d) | ReviewState::Overdue(d) => Some(d),
            _ => None,
        }
    }
}

/// When `s`'s review is due: its end plus the step's time; `None` while it is live or when
/// it needs none.
pub fn due(s: &SessionMeta) -> Option<DateTime<Utc>> {
    let need = s.review.as_ref()?;
    let end = s.end.filter(|_| s.state != SessionState::Live)?;
    let within = chrono::TimeDelta::try_seconds(need.within_secs as i64)?;
    end.checked_add_signed(within)
}

/// Where `s` stands in review at `now`.
pub fn state(s: &SessionMeta, now: DateTime<Utc>) -> ReviewState {
    if let Some(r) = &s.reviewed {
        return ReviewState::Done(r.verdict);
    }
    if s.review.is_none() {
        return ReviewState::NotNeeded;
    }
    match due(s) {
        None => ReviewState::Live,
        Some(d) if now > d => ReviewState::Overdue(d),
        Some(d) => ReviewState::Pending(d),
    }
}

/// Whether a person holding `roles` may review `s`: someone other than its user, holding a
/// role its review names (an auditor or admin when it needs none).
pub fn may_review(s: &SessionMeta, who: &str, roles: &[String]) -> bool {
    let by: &[String] = s.review.as_ref().map(|r| r.by.as_slice()).unwrap_or(&[]);
    s.user != who
        && roles.iter().any(|r| {
            by.contains(r) || (s.review.is_none() && (r == ROLE_AUDITOR || r == ROLE_ADMIN))
        })
}

/// Why `who` may not sign `s` off now; `None` when they may.
pub fn refusal(s: &SessionMeta, who: &str, roles: &[String]) -> Option<String> {
    if s.user == who {
        return Some(format!(
            "session {} is your own: someone else must review it",
            s.id
        ));
    }
    if s.state == SessionState::Live {
        return Some(format!(
            "session {} is still live: review it once it has ended",
            s.id
        ));
    }
    if let Some(r) = &s.reviewed {
        return Some(format!(
            "session {} was reviewed already by {} at {} ({})",
            s.id,
            r.by,
            r.at.format("%Y-%m-%d %H:%M UTC"),
            r.verdict.label()
        ));
    }
    if !may_review(s, who, roles) {
        let by = match &s.review {
            Some(r) => r.by.join(" or "),
            None => format!("{ROLE_AUDITOR} or {ROLE_ADMIN}"),
        };
        return Some(format!(
            "session {} is reviewed by holders of {by}; you hold none",
            s.id
        ));
    }
    None
}

/// The review queue of someone holding `roles`: sessions waiting for their review, the one
/// due first first.
pub fn queue<'a>(
    sessions: &'a [SessionMeta],
    who: &str,
    roles: &[String],
    now: DateTime<Utc>,
) -> Vec<&'a SessionMeta> {
    let mut out: Vec<&SessionMeta> = sessions
        .iter()
        .filter(|s| s.review.is_some() && state(s, now).waiting() && may_review(s, who, roles))
        .collect();
    out.sort_by_key(|s| (due(s), s.start));
    out
}

/// `session-flag`: a rule matched a line of a session (subject: the session).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionFlagged {
    pub target: String,
    #[serde(flatten)]
    pub flag: super::flags::Flag,
}

/// `session-review`: a reviewer's verdict (subject: the session; actor: the reviewer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReviewed {
    pub user: String,
    pub target: String,
    pub verdict: Verdict,
    pub note: String,
    /// The review was due then (none when the session needed none).
    pub due: Option<DateTime<Utc>>,
    pub flags: usize,
}

/// `review-overdue`: a session's review is past due (announced once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewOverdue {
    pub user: String,
    pub target: String,
    pub due: DateTime<Utc>,
    pub by: Vec<String>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap()
    }

    fn session(id: &str, user: &str, end: Option<u32>) -> SessionMeta {
        SessionMeta {
            id: id.into(),
            user: user.into(),
            start: at(0),
            end: end.map(at),
            state: if end.is_some() {
                SessionState::Ended
            } else {
                SessionState::Live
            },
            review: Some(ReviewDue {
                by: vec!["sre-lead".into()],
                within_secs: 3600,
            }),
            ..SessionMeta::default()
        }
    }

    #[test]
    fn due_pending_overdue_done() {
        let check = |s: &SessionMeta, now: u32, expected: ReviewState| {
            assert_eq!(state(s, at(now)), expected, "{} at {now}h", s.id)
        };
        let s = session("s1", "alice", Some(2));
        check(&s, 2, ReviewState::Pending(at(3)));
        check(&s, 3, ReviewState::Pending(at(3)));
        check(&s, 4, ReviewState::Overdue(at(3)));
        check(&session("s2", "alice", None), 4, ReviewState::Live);
        let mut done = s.clone();
        done.reviewed = Some(Review {
            by: "bob".into(),
            at: at(5),
            verdict: Verdict::Concern,
            note: "why".into(),
        });
        check(&done, 9, ReviewState::Done(Verdict::Concern));
        let mut none = s;
        none.review = None;
        check(&none, 9, ReviewState::NotNeeded);
    }

    #[test]
    fn who_may_sign_off() {
        let lead = vec!["sre-lead".to_string()];
        let s = session("s1", "alice", Some(2));
        assert_eq!(refusal(&s, "bob", &lead), None);
        let own = refusal(&s, "alice", &lead).unwrap();
        assert!(own.contains("your own"), "{own}");
        let live = refusal(&session("s2", "carol", None), "bob", &lead).unwrap();
        assert!(live.contains("still live"), "{live}");
        let sre = refusal(&s, "dave", &["sre".into()]).unwrap();
        assert!(sre.contains("holders of sre-lead"), "{sre}");
        let mut unasked = s.clone();
        unasked.review = None;
        assert_eq!(refusal(&unasked, "eve", &[ROLE_AUDITOR.into()]), None);
        assert!(refusal(&unasked, "bob", &lead).is_some());
    }

    #[test]
    fn the_queue_is_oldest_due_first_and_only_what_one_may_review() {
        let lead = vec!["sre-lead".to_string()];
        let sessions = vec![
            session("late", "alice", Some(5)),
            session("early", "alice", Some(1)),
            session("live", "alice", None),
            session("mine", "bob", Some(0)),
        ];
        let q: Vec<&str> = queue(&sessions, "bob", &lead, at(3))
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(q, ["early", "late"]);
    }
}
