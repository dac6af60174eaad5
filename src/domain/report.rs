//! The auditors' report (`ramp-ca report --since 30d`): per contract and step, the grants
//! that became active in the period, who approved them, their sessions, flags, and reviews
//! done, late and missing. Pure: the grants and sessions are given, and `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::grant::Grant;
use super::review::{self, ReviewState};
use super::session::SessionMeta;

/// One contract and step over the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub contract: String,
    pub step: String,
    /// Grants that became active in the period.
    pub grants: u64,
    /// Everyone who approved one of them.
    pub approvers: Vec<String>,
    /// Sessions started in the period under grants of this step.
    pub sessions: u64,
    pub flags: u64,
    /// Operations refused by a rule.
    pub blocked: u64,
    /// Sessions that need a review.
    pub reviews_needed: u64,
    /// Reviewed by their due time.
    pub reviewed: u64,
    /// Reviewed after their due time.
    pub late: u64,
    /// Past due and not reviewed.
    pub missing: u64,
    /// Not reviewed yet, not due yet (or still live).
    pub pending: u64,
}

/// Rows by contract and step, with the approvers seen so far.
type Rows = BTreeMap<(String, String), (Row, BTreeSet<String>)>;

/// `g`'s contract and step's row.
fn row<'a>(rows: &'a mut Rows, g: &Grant) -> &'a mut (Row, BTreeSet<String>) {
    rows.entry((g.contract.clone(), g.step.clone()))
        .or_insert_with(|| {
            let r = Row {
                contract: g.contract.clone(),
                step: g.step.clone(),
                ..Row::default()
            };
            (r, BTreeSet::new())
        })
}

/// The report for [`since`, `now`], sorted by contract and step.
pub fn report(
    grants: &[Grant],
    sessions: &[SessionMeta],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Row> {
    let by_id: HashMap<&str, &Grant> = grants.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut rows: Rows = BTreeMap::new();
    // A window approved ahead and closed before its start never became active.
    let opened = |g: &Grant| {
        g.start
            .is_some_and(|s| s >= since && s <= now && g.closed.as_ref().is_none_or(|c| c.at > s))
    };
    for g in grants.iter().filter(|g| opened(g)) {
        let (r, approvers) = row(&mut rows, g);
        r.grants += 1;
        approvers.extend(g.approvals.iter().map(|a| a.by.clone()));
    }
    for s in sessions
        .iter()
        .filter(|s| s.start >= since && s.start <= now)
    {
        let Some(g) = by_id.get(s.grant.as_str()) else {
            continue;
        };
        let (r, _) = row(&mut rows, g);
        r.sessions += 1;
        r.flags += s.flags.len() as u64;
        r.blocked += s.flags.iter().filter(|f| f.blocked).count() as u64;
        if s.review.is_none() {
            continue;
        }
        r.reviews_needed += 1;
        match review::state(s, now) {
            ReviewState::Done(_) => {
                let on_time = match (&s.reviewed, review::due(s)) {
                    (Some(done), Some(due)) => done.at <= due,
                    _ => true,
                };
                if on_time {
                    r.reviewed += 1;
                } else {
                    r.late += 1;
                }
            }
            ReviewState::Overdue(_) => r.missing += 1,
            _ => r.pending += 1,
        }
    }
    rows.into_values()
        .map(|(mut r, approvers)| {
            r.approvers = approvers.into_iter().collect();
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::grant::{Approval, State};
    use crate::domain::review::{Review, ReviewDue, Verdict};
    use crate::domain::session::SessionState;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap()
    }

    fn grant(id: &str, step: &str, start: u32, approver: Option<&str>) -> Grant {
        Grant {
            id: id.into(),
            user: "alice".into(),
            contract: "prod-db".into(),
            step: step.into(),
            reason: None,
            ttl_secs: 3600,
            requested_at: at(start),
            state: State::Active,
            start: Some(at(start)),
            end: Some(at(start + 1)),
            approvals_from: vec![],
            approvals_needed: 0,
            approvals: approver
                .map(|by| {
                    vec![Approval {
                        by: by.into(),
                        at: at(start),
                    }]
                })
                .unwrap_or_default(),
            closed: None,
            extension: None,
            scheduled: None,
        }
    }

    fn session(grant: &str, end: u32, reviewed_at: Option<u32>) -> SessionMeta {
        SessionMeta {
            grant: grant.into(),
            start: at(end),
            end: Some(at(end)),
            state: SessionState::Ended,
            review: Some(ReviewDue {
                by: vec!["sre-lead".into()],
                within_secs: 3600,
            }),
            reviewed: reviewed_at.map(|h| Review {
                by: "bob".into(),
                at: at(h),
                verdict: Verdict::Ok,
                note: "ok".into(),
            }),
            ..SessionMeta::default()
        }
    }

    #[test]
    fn reviews_done_late_missing_and_pending_per_step() {
        let grants = [
            grant("g0", "operate", 0, Some("carol")),
            grant("g1", "operate", 2, Some("bob")),
            grant("g2", "observe", 3, None),
        ];
        let sessions = [
            session("g1", 2, Some(3)),
            session("g1", 3, Some(6)),
            session("g1", 4, None),
            session("g1", 9, None),
            SessionMeta {
                review: None,
                ..session("g2", 3, None)
            },
        ];
        let rows = report(&grants, &sessions, at(1), at(9));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].step.as_str(), rows[0].grants, rows[0].sessions),
            ("observe", 1, 1)
        );
        assert_eq!(rows[0].reviews_needed, 0);
        let op = &rows[1];
        assert_eq!(
            (op.grants, op.approvers.clone()),
            (1, vec!["bob".to_string()])
        );
        assert_eq!(
            (op.sessions, op.reviewed, op.late, op.missing, op.pending),
            (4, 1, 1, 1, 1)
        );
    }

    /// Regression: a window approved ahead and revoked before it opened was counted as a
    /// grant that became active once its start passed.
    #[test]
    fn a_window_revoked_before_it_opened_never_became_active() {
        let mut ahead = grant("g0", "observe", 5, None);
        ahead.state = State::Revoked;
        ahead.closed = Some(crate::domain::grant::Closure {
            by: "carol".into(),
            at: at(2),
            reason: "not tonight".into(),
        });
        let mut cut = grant("g1", "observe", 3, None);
        cut.state = State::Revoked;
        cut.closed = Some(crate::domain::grant::Closure {
            by: "carol".into(),
            at: at(4),
            reason: "done".into(),
        });
        let rows = report(&[ahead, cut], &[], at(1), at(9));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].grants, 1, "only the one revoked after it opened");
    }
}
