//! Ending a live session on request: on-call ends what should not go on, without revoking
//! the grant. The order is a revocation naming the session (no certificate or grant changes),
//! so every node's bastion hears of it the way it hears of revocations (at once in-process,
//! by NOTIFY across nodes) and ends the session where it runs; its `session-stop` record says
//! who and why.

use chrono::{DateTime, Duration, Utc};

use super::access::may_stop;
use super::{Result, Service, ServiceError};
use crate::domain::audit::{Entry, SessionStopped};
use crate::domain::grant::{Revocation, RevokeTarget};
use crate::domain::session::SessionState;
use crate::shown::shown;
use crate::store::Change;

/// How long an order to end a session is acted on: a session is ended within a second of the
/// order on the node that runs it, or that node is gone (its sessions are interrupted).
const ORDERS_KEPT: i64 = 10 * 60;

/// Longest reason given for ending a session.
pub const MAX_REASON: usize = 500;

/// An order to end a session, as the bastion acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOrder {
    pub session: String,
    /// What the person in the session reads.
    pub told: String,
}

impl Service {
    /// Ends live session `id` saying `reason`: for an admin, someone holding a role that may
    /// approve the session's step, or the session's own user. Audited as `session-stop`.
    pub async fn stop_session(
        &self,
        who: &str,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Revocation> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ServiceError::BadRequest(
                "ending a session takes a reason (--reason TEXT)".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON {
            return Err(ServiceError::BadRequest(format!(
                "the reason is longer than {MAX_REASON} characters"
            )));
        }
        let meta = self.store.session(id).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("no recorded session with id `{}`", shown(id)))
        })?;
        let grant = self.store.grant(&meta.grant).await?;
        if !may_stop(&self.policies(), who, &meta, grant.as_ref()) {
            return Err(ServiceError::Denied(format!(
                "session `{id}` belongs to `{}`; ending it takes ramp-admin, a role that may \
                 approve its step, or being its user",
                meta.user
            )));
        }
        if meta.state != SessionState::Live {
            return Err(ServiceError::Conflict(format!(
                "session `{id}` is not live (it is {})",
                meta.state
            )));
        }
        let revocation = Revocation {
            target: RevokeTarget::Session(id.to_string()),
            by: who.to_string(),
            at: now,
            reason: reason.to_string(),
            serials: Vec::new(),
            grants: Vec::new(),
        };
        let stopped = SessionStopped {
            user: meta.user.clone(),
            target: meta.target.clone(),
            reason: reason.to_string(),
        };
        let change = Change {
            revocation: Some(revocation.clone()),
            entries: vec![Entry::new(who, id, stopped)],
            ..Change::default()
        };
        self.store.commit(change, now).await?;
        Ok(revocation)
    }

    /// The orders to end sessions given in the last minutes, for the bastion to act on.
    pub async fn stop_orders(&self, now: DateTime<Utc>) -> Result<Vec<StopOrder>> {
        let since = now - Duration::seconds(ORDERS_KEPT);
        let orders = self.store.revocations().await?.into_iter().filter_map(|r| {
            let RevokeTarget::Session(session) = r.target else {
                return None;
            };
            (r.at >= since).then(|| StopOrder {
                session,
                told: format!("{} ended this session: {}", r.by, shown(&r.reason)),
            })
        });
        Ok(orders.collect())
    }
}
