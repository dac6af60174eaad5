//! Retention: when a session's recording may be deleted. A contract's `keep:` counts from
//! the session's end; a session whose review is still waiting keeps its recording past it,
//! so a reviewer always has something to look at. Pure: `now` is an argument.
//!
//! The metadata, the seal and the audit chain stay: a removed recording is one the chain
//! says was removed (`recording-removed`), so `audit verify` tells it from one deleted by hand.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::cert::KeyId;
use super::review;
use super::session::{RecordingSeal, SessionMeta, SessionState};

/// Why a recording stays, at some `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Its contract sets no `keep:` (or is gone): kept forever.
    Forever,
    /// Still being recorded.
    Live,
    /// Within `keep:`, until then.
    Until(DateTime<Utc>),
    /// Past `keep:` (since then), but its review is still waiting.
    AwaitingReview(DateTime<Utc>),
    /// Removed already.
    Removed,
}

/// What retention does with a session's recording at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Keep(Hold),
    /// Delete it: it has been past `keep:` since `due`, and nothing holds it.
    Remove {
        due: DateTime<Utc>,
    },
}

/// The contract a session ran under, read from its certificate's key id
/// (`ramp:USER:CONTRACT:STEP:GRANT`); `None` for a key id this CA did not write.
pub fn contract_of(s: &SessionMeta) -> Option<String> {
    KeyId::parse(&s.key_id).map(|k| k.contract)
}

/// What to do with `s`'s recording at `now` when its contract keeps recordings for `keep`
/// (`None`: forever).
pub fn decide(s: &SessionMeta, keep: Option<Duration>, now: DateTime<Utc>) -> Retention {
    if s.removed.is_some() {
        return Retention::Keep(Hold::Removed);
    }
    let Some(keep) = keep else {
        return Retention::Keep(Hold::Forever);
    };
    let end = match (s.state, s.end) {
        (SessionState::Live, _) | (_, None) => return Retention::Keep(Hold::Live),
        (_, Some(end)) => end,
    };
    let due = chrono::TimeDelta::from_std(keep)
        .ok()
        .and_then(|k| end.checked_add_signed(k));
    let Some(due) = due else {
        return Retention::Keep(Hold::Forever);
    };
    if now < due {
        return Retention::Keep(Hold::Until(due));
    }
    match review::state(s, now) {
        review::ReviewState::Pending(_)
        | review::ReviewState::Overdue(_)
        | review::ReviewState::Live => Retention::Keep(Hold::AwaitingReview(due)),
        review::ReviewState::NotNeeded | review::ReviewState::Done(_) => Retention::Remove { due },
    }
}

/// A removed recording, as its session's metadata keeps it (the `recording-removed`
/// audit record is the proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub at: DateTime<Utc>,
    /// The `recording-removed` record (its sequence number, set as it is committed).
    pub record: u64,
    /// The contract whose `keep:` removed it, and that `keep:` in seconds.
    pub contract: String,
    pub keep_secs: u64,
}

impl Removed {
    /// In words, for `sessions show` and refusals to play: when, by which rule, where
    /// the proof is.
    pub fn words(&self) -> String {
        format!(
            "removed by retention at {} (contract `{}` keeps recordings {} after a session ends; audit record {})",
            self.at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.contract,
            super::policy::format_duration(Duration::from_secs(self.keep_secs)),
            self.record
        )
    }
}

/// `recording-removed`: a session's recording deleted by retention (subject: the session;
/// actor: the service). Its seal stays in the chain with the session's end record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingRemoved {
    pub user: String,
    pub target: String,
    pub contract: String,
    /// The contract's `keep:` as written out (`30d`), and in seconds.
    pub keep: String,
    pub keep_secs: u64,
    /// When the session ended (`keep:` counts from there).
    pub ended: DateTime<Utc>,
    /// The review it had, as `ok by bob` (none when its step asks for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<String>,
    /// The seal of what was deleted.
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    /// The node that deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl RecordingRemoved {
    /// The record for removing `s`'s recording under `contract`'s `keep`, by `node`.
    pub fn of(s: &SessionMeta, contract: &str, keep: Duration, node: &str) -> RecordingRemoved {
        RecordingRemoved {
            user: s.user.clone(),
            target: s.target.clone(),
            contract: contract.to_string(),
            keep: super::policy::format_duration(keep),
            keep_secs: keep.as_secs(),
            ended: s.end.unwrap_or(s.start),
            reviewed: s.reviewed.as_ref().map(|r| {
                format!(
                    "{} by {}",
                    crate::domain::Vocabulary::label(r.verdict),
                    r.by
                )
            }),
            recording: s.recording.clone(),
            node: Some(node.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::review::{Review, ReviewDue, Verdict};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    /// A session that ended at 100 s, needing a review within an hour when `review`.
    fn session(review: bool) -> SessionMeta {
        SessionMeta {
            id: "s1".into(),
            user: "alice".into(),
            key_id: "ramp:alice:prod-db:operate:g1".into(),
            start: at(0),
            end: Some(at(100)),
            state: SessionState::Ended,
            review: review.then(|| ReviewDue {
                by: vec!["sre-lead".into()],
                within_secs: 3600,
            }),
            ..SessionMeta::default()
        }
    }

    fn reviewed(mut s: SessionMeta) -> SessionMeta {
        s.reviewed = Some(Review {
            by: "bob".into(),
            at: at(150),
            verdict: Verdict::Ok,
            note: "fine".into(),
        });
        s
    }

    fn check(s: &SessionMeta, keep: Option<u64>, now: i64, expected: Retention) {
        assert_eq!(
            decide(s, keep.map(Duration::from_secs), at(now)),
            expected,
            "keep {keep:?} at {now}"
        );
    }

    #[test]
    fn past_keep_and_reviewed_or_needing_none_it_goes() {
        let due = at(110);
        check(
            &reviewed(session(true)),
            Some(10),
            200,
            Retention::Remove { due },
        );
        check(&session(false), Some(10), 110, Retention::Remove { due });
        // A sign-off given to a session that needed none does not hold it either.
        check(
            &reviewed(session(false)),
            Some(10),
            200,
            Retention::Remove { due },
        );
    }

    #[test]
    fn an_unreviewed_session_keeps_its_recording_past_keep() {
        let hold = Retention::Keep(Hold::AwaitingReview(at(110)));
        check(&session(true), Some(10), 200, hold);
        check(&session(true), Some(10), 99_999, hold);
        let mut interrupted = session(true);
        interrupted.state = SessionState::Interrupted;
        check(&interrupted, Some(10), 200, hold);
    }

    #[test]
    fn within_keep_live_forever_and_removed_it_stays() {
        check(
            &reviewed(session(true)),
            Some(10),
            109,
            Retention::Keep(Hold::Until(at(110))),
        );
        check(
            &session(false),
            None,
            9_999_999,
            Retention::Keep(Hold::Forever),
        );
        let mut live = session(false);
        (live.state, live.end) = (SessionState::Live, None);
        check(&live, Some(1), 200, Retention::Keep(Hold::Live));
        let mut gone = session(false);
        gone.removed = Some(Removed {
            at: at(120),
            record: 9,
            contract: "prod-db".into(),
            keep_secs: 10,
        });
        check(&gone, Some(10), 200, Retention::Keep(Hold::Removed));
    }

    #[test]
    fn the_contract_comes_from_the_key_id() {
        assert_eq!(contract_of(&session(false)).as_deref(), Some("prod-db"));
        let mut other = session(false);
        other.key_id = "someone-elses".into();
        assert_eq!(contract_of(&other), None);
    }
}
