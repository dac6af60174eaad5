//! What the dashboard asks: the live view as its user may see it (with what they may do
//! about each row), the Review page's queue, and the audit records of its logins.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::access::{is_reviewer, may_revoke};
use super::{Result, Service, ServiceError};
use crate::domain::audit::{DashboardLinked, DashboardLoggedIn, Entry};
use crate::domain::grant::{Grant, State};
use crate::domain::policy::ROLE_ADMIN;
use crate::domain::policy::{format_duration, Policies};
use crate::domain::review::{self, ReviewState};
use crate::domain::session::{SessionMeta, SessionState};
use crate::wire::dashboard::{
    self, ActiveRow, LiveRow, Me, PendingRow, Requestable, ReviewRow, StepChoice,
};
use crate::wire::grants::{Outcome, RequestBody};

/// The contracts `user` holds a requester role of, with their steps.
fn requestable(p: &Policies, user: &str) -> Vec<Requestable> {
    let roles = p.roles_of(user);
    p.contracts
        .values()
        .filter(|c| roles.iter().any(|r| c.requesters.contains(r)))
        .map(|c| Requestable {
            contract: c.name.clone(),
            description: c.description.clone(),
            reason_required: c.reason.required,
            reason_example: c.reason.example.clone(),
            steps: c
                .steps
                .iter()
                .map(|s| StepChoice {
                    name: s.name.clone(),
                    max_ttl: format_duration(s.max_ttl),
                    after: s.after.clone(),
                    approvals: s.approvals.as_ref().map_or(0, |a| a.count),
                    break_glass: s.break_glass,
                })
                .collect(),
        })
        .collect()
}

/// A browser session, as the live view names it.
#[derive(Debug, Clone)]
pub struct WebUser<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
    pub expires: DateTime<Utc>,
}

impl Service {
    /// Everything the live view shows, as `web.user` may see it: grants and requests, with
    /// what they may do about each, and the sessions they may watch: `live` (this node's
    /// recorder's) and, on a shared ledger with shared recordings, those live on other nodes
    /// (which a follower reads from their recordings as they are written).
    pub async fn live_view(
        &self,
        web: &WebUser<'_>,
        live: Vec<SessionMeta>,
        now: DateTime<Utc>,
    ) -> Result<dashboard::LiveView> {
        let user = web.user;
        let p = self.policies();
        let reviewer = is_reviewer(&p, user);
        let (mut active, mut pending) = (Vec::new(), Vec::new());
        let open = self.store.open_grants(now).await?;
        // The grant of each live session: its step, reason and end.
        let grants: HashMap<&str, &Grant> = open.iter().map(|g| (g.id.as_str(), g)).collect();
        for g in open.iter().filter(|g| super::access::may_see(&p, user, g)) {
            match g.state_at(now) {
                // A window approved ahead is listed with the grants, counting down to its start.
                State::Active | State::Scheduled => {
                    // An extension waiting for approvals is a request too.
                    if let Some(e) = &g.extension {
                        let already: Vec<String> =
                            e.approvals.iter().map(|a| a.by.clone()).collect();
                        let refusal = crate::domain::policy::approval_refusal(
                            &p,
                            &g.contract,
                            &g.step,
                            &g.user,
                            user,
                            &already,
                        );
                        pending.push(PendingRow {
                            can_approve: refusal.is_none(),
                            can_deny: super::access::may_deny(&p, user, g),
                            grant: self.view(&p, g, now),
                        });
                    }
                    active.push(ActiveRow {
                        can_revoke: may_revoke(&p, user, &g.user),
                        grant: self.view(&p, g, now),
                    });
                }
                State::Pending => {
                    let (can_approve, can_deny) = self.pending_rights(&p, user, g);
                    pending.push(PendingRow {
                        can_approve,
                        can_deny,
                        grant: self.view(&p, g, now),
                    });
                }
                _ => {}
            }
        }
        let mut live = live;
        if self.store.is_shared() && self.store.recordings_shared() {
            // Every node's live sessions, from the ledger (their metadata as of their
            // recorder's last flush); this node's own as its recorder has them now.
            let here: HashSet<String> = live.iter().map(|s| s.id.clone()).collect();
            let elsewhere = self.store.live_sessions().await?;
            live.extend(elsewhere.into_iter().filter(|s| !here.contains(&s.id)));
        }
        let mut live: Vec<SessionMeta> = live
            .into_iter()
            .filter(|s| s.state == SessionState::Live && (reviewer || s.user == user))
            .collect();
        live.sort_by_key(|s| s.start);
        let live = live
            .into_iter()
            .map(|s| {
                let grant = grants.get(s.grant.as_str()).copied();
                let step = grant.and_then(|g| p.contracts.get(&g.contract)?.step(&g.step));
                LiveRow {
                    break_glass: step.is_some_and(|st| st.break_glass),
                    can_end: super::access::may_stop(&p, user, &s, grant),
                    contract: grant.map(|g| g.contract.clone()),
                    ends: grant.and_then(|g| g.end),
                    reason: grant.and_then(|g| g.reason.clone()),
                    step: grant.map(|g| g.step.clone()),
                    session: s.into(),
                }
            })
            .collect();
        Ok(dashboard::LiveView {
            active,
            live,
            me: Me {
                admin: p.has_role(user, ROLE_ADMIN),
                csrf: web.csrf.to_string(),
                expires: web.expires,
                may_review: self.may_review_any(user, now),
                reviewer,
                roles: p.roles_of(user),
                user: user.to_string(),
            },
            now,
            pending,
            requestable: requestable(&p, user),
        })
    }

    /// The Review page's queue: [`Service::review_queue`] (the command line's), each entry
    /// with its grant's contract and step and when it is due. One read of the session
    /// metadata, and one of each grant the queue names.
    pub async fn review_page(&self, who: &str, now: DateTime<Utc>) -> Result<Vec<ReviewRow>> {
        let queue = self.review_queue(who, now).await?;
        let mut grants: HashMap<String, Option<Grant>> = HashMap::new();
        for s in &queue {
            if !grants.contains_key(&s.grant) {
                let g = self.store.grant(&s.grant).await?;
                grants.insert(s.grant.clone(), g);
            }
        }
        Ok(queue
            .into_iter()
            .map(|s| {
                let grant = grants.get(&s.grant).and_then(Option::as_ref);
                ReviewRow {
                    contract: grant.map(|g| g.contract.clone()),
                    step: grant.map(|g| g.step.clone()),
                    due: review::due(&s),
                    overdue: matches!(review::state(&s, now), ReviewState::Overdue(_)),
                    session: s.into(),
                }
            })
            .collect())
    }

    /// Files a request made on the page: as `ramp-ca request` does (no certificate is minted:
    /// `ramp-ca sign --grant ID` picks it up on the engineer's machine).
    pub async fn request_from_page(
        &self,
        user: &str,
        body: &RequestBody,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let key = self
            .policies()
            .users
            .get(user)
            .and_then(|u| u.keys.first().cloned())
            .ok_or_else(|| {
                ServiceError::Denied(format!("`{user}` has no registered key in people.yaml"))
            })?;
        let body = RequestBody {
            certify: false,
            ..body.clone()
        };
        self.request(user, &key, &body, now).await
    }

    /// Audits a one-time dashboard login link handed to `user`.
    pub async fn dashboard_linked(
        &self,
        user: &str,
        expires: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let entry = Entry::new(user, user, DashboardLinked { expires });
        self.write_audit(entry, now).await
    }

    /// Audits a browser session started from a link.
    pub async fn dashboard_logged_in(
        &self,
        user: &str,
        link_expires: DateTime<Utc>,
        session_expires: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let logged = DashboardLoggedIn {
            link_expires,
            session_expires,
        };
        let entry = Entry::new(user, user, logged);
        self.write_audit(entry, now).await
    }
}
