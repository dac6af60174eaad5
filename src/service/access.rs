//! Who may do what: every role check the service makes, for the command line, the API and
//! the dashboard alike. Roles are looked up in the policies in force, so a reload takes
//! effect at once.

use super::{Result, Service, ServiceError};
use crate::domain::grant::{Grant, State};
use crate::domain::policy::{approval_refusal, Policies, ROLE_ADMIN, ROLE_AUDITOR};
use crate::domain::session::SessionMeta;

/// What reading the audit log or recordings is called in a refusal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reading {
    /// `audit list`, `audit verify`, checkpoints.
    AuditLog,
    /// The dashboard's audit page.
    AuditPage,
    /// Listing, showing, playing, exporting and searching recordings.
    Recordings,
    /// Following a live session on the dashboard.
    Follow,
    /// `report`: grants, sessions and reviews per contract and step.
    Report,
}

impl Reading {
    fn what(self) -> &'static str {
        match self {
            Reading::AuditLog => "reading the audit log",
            Reading::AuditPage => "the audit log",
            Reading::Recordings => "reading recordings",
            Reading::Follow => "following a session",
            Reading::Report => "the access report",
        }
    }
}

/// Whether `user` reviews: admins and auditors read the audit log and every recording.
pub(crate) fn is_reviewer(p: &Policies, user: &str) -> bool {
    p.has_role(user, ROLE_ADMIN) || p.has_role(user, ROLE_AUDITOR)
}

/// Whether `user` may see `g`: their own; everything for admins and auditors; pending
/// requests they could approve for approvers.
pub(crate) fn may_see(p: &Policies, user: &str, g: &Grant) -> bool {
    let waiting = g.state == State::Pending || g.extension.is_some();
    g.user == user
        || is_reviewer(p, user)
        || (waiting && g.approvals_from.iter().any(|r| p.has_role(user, r)))
}

/// Whether `who` may deny a request: its requester (withdrawing it), an admin, or someone
/// holding a role that may approve it.
pub(crate) fn may_deny(p: &Policies, who: &str, g: &Grant) -> bool {
    who == g.user
        || p.has_role(who, ROLE_ADMIN)
        || g.approvals_from.iter().any(|r| p.has_role(who, r))
}

/// Whether `who` may approve a request (see [`approval_refusal`] for why not).
pub(crate) fn may_approve(p: &Policies, who: &str, g: &Grant) -> bool {
    approval_refusal(p, &g.contract, &g.step, &g.user, who, &g.approvers()).is_none()
}

/// Whether `who` may end a live session: its own user, an admin, or someone holding a role
/// that may approve the session's step (they let it happen; they may stop it).
pub(crate) fn may_stop(
    p: &Policies,
    who: &str,
    session: &SessionMeta,
    grant: Option<&Grant>,
) -> bool {
    who == session.user
        || p.has_role(who, ROLE_ADMIN)
        || grant.is_some_and(|g| g.approvals_from.iter().any(|r| p.has_role(who, r)))
}

/// Whether `who` may revoke what belongs to `owner`: their own, or anything for admins.
pub(crate) fn may_revoke(p: &Policies, who: &str, owner: &str) -> bool {
    who == owner || p.has_role(who, ROLE_ADMIN)
}

impl Service {
    /// Refuses `who` unless they review (see [`is_reviewer`]).
    pub(crate) fn require_reviewer(&self, who: &str, reading: Reading) -> Result<()> {
        if is_reviewer(&self.policies(), who) {
            Ok(())
        } else {
            Err(ServiceError::Denied(format!(
                "{} takes ramp-admin or ramp-auditor",
                reading.what()
            )))
        }
    }

    /// Whose recordings `who` may read: everyone's for reviewers, else their own. A listing
    /// or search narrowed to someone else is refused, saying what it takes.
    pub(crate) fn recordings_of(
        &self,
        who: &str,
        filter: &mut crate::domain::session::SessionFilter,
        reading: Reading,
    ) -> Result<()> {
        if self.is_reviewer(who) {
            return Ok(());
        }
        match &filter.user {
            Some(u) if u != who => Err(self.not_theirs(u, reading)),
            _ => {
                filter.user = Some(who.to_string());
                Ok(())
            }
        }
    }

    /// Refuses `who` a session of `owner` unless it is their own or they review; the refusal
    /// does not say whose it is.
    pub(crate) fn require_own_or_reviewer(
        &self,
        who: &str,
        owner: &str,
        reading: Reading,
    ) -> Result<()> {
        if who == owner || self.is_reviewer(who) {
            Ok(())
        } else {
            Err(ServiceError::Denied(format!(
                "{} of someone else takes ramp-admin or ramp-auditor (anyone reads their own)",
                reading.what()
            )))
        }
    }

    fn not_theirs(&self, owner: &str, reading: Reading) -> ServiceError {
        ServiceError::Denied(format!(
            "{} of `{owner}` takes ramp-admin or ramp-auditor (anyone reads their own)",
            reading.what()
        ))
    }

    /// Whether `user` reviews (admins and auditors).
    pub fn is_reviewer(&self, user: &str) -> bool {
        is_reviewer(&self.policies(), user)
    }

    /// Refuses `who` unless they are an admin, saying what it takes.
    pub(crate) fn require_admin(&self, who: &str, doing: &str) -> Result<()> {
        if self.policies().has_role(who, ROLE_ADMIN) {
            Ok(())
        } else {
            Err(ServiceError::Denied(format!("{doing} takes ramp-admin")))
        }
    }
}
