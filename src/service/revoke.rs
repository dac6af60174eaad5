//! Revocation: of a certificate, a grant (and its certificates) or everything a user holds,
//! with the grants that climbed from what ended; and the KRL that ships it to targets.

use chrono::{DateTime, Utc};

use super::access::may_revoke;
use super::{Result, Service, ServiceError};
use crate::domain::audit::{Entry, Revoked, Shortened};
use crate::domain::grant::{dependents, Grant, Revocation, RevokeTarget, State};
use crate::domain::session::{SessionMeta, SessionState};
use crate::store::{Change, GrantChanges};
use crate::wire::grants::RevokeBody;

/// What a revocation reaches beyond what it names: the grants it ends (the one named, or a
/// user's, and those that climbed from them), the grants whose end moves earlier, and the live
/// sessions it cuts. Shown before confirming (`revoke --dry-run`, the dashboard) and after.
#[derive(Debug, Clone, Default)]
pub struct Cascade {
    pub ended: Vec<Grant>,
    pub shortened: Vec<Grant>,
    pub sessions: Vec<SessionMeta>,
}

impl From<&Cascade> for crate::wire::grants::Cascade {
    fn from(c: &Cascade) -> Self {
        use crate::wire::grants::{GrantBrief, SessionBrief};
        crate::wire::grants::Cascade {
            ended: c.ended.iter().map(GrantBrief::from).collect(),
            shortened: c.shortened.iter().map(GrantBrief::from).collect(),
            sessions: c
                .sessions
                .iter()
                .map(|s| SessionBrief {
                    id: s.id.clone(),
                    user: s.user.clone(),
                    principal: s.principal.clone(),
                    target: s.target.clone(),
                })
                .collect(),
        }
    }
}

impl Service {
    /// Revokes by serial, grant or user. Admins revoke anything; others only their own.
    pub async fn revoke(
        &self,
        who: &str,
        body: &RevokeBody,
        now: DateTime<Utc>,
    ) -> Result<Revocation> {
        Ok(self.revoke_cascading(who, body, false, now).await?.0)
    }

    /// [`Service::revoke`], with what it reached; with `dry_run`, what it would reach, and
    /// nothing changes.
    pub async fn revoke_cascading(
        &self,
        who: &str,
        body: &RevokeBody,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<(Revocation, Cascade)> {
        let mut tx = self.grant_changes().await?;
        let out = self.revoke_locked(&mut tx, who, body, dry_run, now).await;
        let (revocation, mut cascade) = Service::settle(tx, out).await?;
        // The live sessions on what ended; their bastions cut them at the revocation news.
        let cut = |s: &SessionMeta| {
            s.state == SessionState::Live
                && (revocation.grants.contains(&s.grant) || revocation.serials.contains(&s.serial))
        };
        cascade.sessions = self
            .store
            .live_sessions()
            .await?
            .into_iter()
            .filter(cut)
            .collect();
        Ok((revocation, cascade))
    }

    async fn revoke_locked(
        &self,
        tx: &mut GrantChanges<'_>,
        who: &str,
        body: &RevokeBody,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<(Revocation, Cascade)> {
        let p = self.policies();
        let target = match (body.serial, &body.grant, &body.user) {
            (Some(s), None, None) => RevokeTarget::Serial(s),
            (None, Some(g), None) => RevokeTarget::Grant(g.clone()),
            (None, None, Some(u)) => RevokeTarget::User(u.clone()),
            _ => {
                return Err(ServiceError::BadRequest(
                    "revoke exactly one of --serial, --grant or --user".into(),
                ))
            }
        };
        let (mut serials, hit): (Vec<u64>, Vec<Grant>) = match &target {
            RevokeTarget::Serial(s) => {
                let c = tx.cert(*s).await?.ok_or_else(|| {
                    ServiceError::NotFound(format!("no certificate with serial {s} in the ledger"))
                })?;
                if !may_revoke(&p, who, &c.user) {
                    return Err(ServiceError::Denied(format!(
                        "serial {s} belongs to `{}`; only ramp-admin may revoke it",
                        c.user
                    )));
                }
                (vec![*s], Vec::new())
            }
            RevokeTarget::Grant(id) => {
                let g = tx
                    .grant(id)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound(format!("no grant with id `{id}`")))?;
                if !may_revoke(&p, who, &g.user) {
                    return Err(ServiceError::Denied(format!(
                        "grant `{id}` belongs to `{}`; only ramp-admin may revoke it",
                        g.user
                    )));
                }
                (Vec::new(), vec![g])
            }
            RevokeTarget::User(u) => {
                if !may_revoke(&p, who, u) {
                    return Err(ServiceError::Denied(
                        "only ramp-admin may revoke another user".into(),
                    ));
                }
                if !p.users.contains_key(u) && !tx.has_grants(u).await? {
                    return Err(ServiceError::NotFound(format!(
                        "no user `{u}` in people.yaml or the ledger"
                    )));
                }
                // What is open is all a revocation changes.
                (Vec::new(), tx.open_grants_of(&[u.as_str()], now).await?)
            }
            RevokeTarget::Session(_) => unreachable!("revoke never names a session"),
        };
        // A step climbs only from its own user's grants: theirs are all the fallout needs.
        let users: Vec<&str> = hit.iter().map(|g| g.user.as_str()).collect();
        let theirs = tx.open_grants_of(&users, now).await?;
        let fallout = dependents(&p, &theirs, &hit, now);
        let mut hit = hit;
        hit.extend(fallout.closed);
        // A revoked grant takes every certificate minted from it along.
        let ids: Vec<String> = hit.iter().map(|g| g.id.clone()).collect();
        serials.extend(tx.certs_of_grants(&ids).await?.iter().map(|c| c.serial));
        serials.sort_unstable();
        serials.dedup();
        let reason = body.reason.clone().unwrap_or_else(|| "revoked".into());
        hit.retain(|g| g.is_open(now));
        for g in &mut hit {
            g.close(State::Revoked, who, now, &reason);
        }
        let revocation = Revocation {
            target: target.clone(),
            by: who.to_string(),
            at: now,
            reason: reason.clone(),
            serials: serials.clone(),
            grants: hit.iter().map(|g| g.id.clone()).collect(),
        };
        let revoked = Revoked {
            reason,
            serials,
            grants: revocation.grants.clone(),
            shortened: fallout
                .shortened
                .iter()
                .map(|g| Shortened {
                    grant: g.id.clone(),
                    end: g.end,
                })
                .collect(),
        };
        let cascade = Cascade {
            ended: hit.clone(),
            shortened: fallout.shortened.clone(),
            sessions: Vec::new(),
        };
        if dry_run {
            return Ok((revocation, cascade));
        }
        let mut written = hit;
        written.extend(fallout.shortened);
        let change = Change {
            grants: written,
            revocation: Some(revocation.clone()),
            entries: vec![Entry::new(who, &target.subject(), revoked)],
            ..Change::default()
        };
        tx.commit(change, now).await?;
        self.metrics.revocation();
        Ok((revocation, cascade))
    }

    /// An OpenSSH KRL of every revoked certificate (see
    /// [`crate::domain::krl::of_revocations`]).
    pub async fn krl(&self) -> Result<Vec<u8>> {
        let serials = self.store.revoked_serials().await?;
        let revocations = self.store.revocations().await?;
        let cas = [
            self.keys.user_ca.public_key(),
            self.keys.node_ca.public_key(),
            self.keys.host_ca.public_key(),
        ];
        Ok(crate::domain::krl::of_revocations(
            &cas,
            &serials,
            &revocations,
        ))
    }
}
