//! The service's rules with a real ledger in a temporary directory and a fixed `now`: the
//! fast tier (no sshd, no browser, no binary), beside the end-to-end tests in `tests/it`.

mod audit;
mod dashboard;
mod extend;
mod grants;
mod hosts;
mod login;
mod retention;
mod review;
mod revoke;
mod schedule;
mod sessions;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::PublicKey;

use super::{Result, Service};
use crate::domain::grant::{Grant, State};
use crate::store::Change;
use crate::wire::grants::{Outcome, RequestBody, RevokeBody};

/// An installation made by `init` (the example policies, alice sre, bob sre-lead +
/// ramp-auditor, carol sre-lead + ramp-admin) and its service.
struct Fixture {
    dir: tempfile::TempDir,
    service: Arc<Service>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    crate::install::init::init(dir.path(), true).unwrap();
    let service = Service::open(dir.path(), &crate::store::Location::Embedded, "n1");
    let service = Arc::new(service.await.unwrap());
    Fixture { dir, service }
}

impl Fixture {
    fn key(&self, user: &str) -> PublicKey {
        let path = self.dir.path().join(format!("demo/{user}/id_ed25519.pub"));
        crate::install::keys::read_public(&path).unwrap()
    }

    /// `user` asks for `step` of prod-db (certifying their demo key when `certify`).
    async fn ask(
        &self,
        user: &str,
        step: &str,
        certify: bool,
        now: DateTime<Utc>,
    ) -> Result<Outcome> {
        let body = RequestBody {
            contract: "prod-db".into(),
            step: Some(step.into()),
            ttl: None,
            reason: Some("INC-1".into()),
            certify,
            start: None,
        };
        self.service
            .request(user, &self.key(user), &body, now)
            .await
    }

    /// alice asks for `step` of prod-db for `ttl`; granted or pending.
    async fn ask_for(&self, step: &str, ttl: &str, now: DateTime<Utc>) -> Outcome {
        let body = RequestBody {
            contract: "prod-db".into(),
            step: Some(step.into()),
            ttl: Some(ttl.into()),
            reason: Some("INC-1".into()),
            certify: false,
            start: None,
        };
        self.service
            .request("alice", &self.key("alice"), &body, now)
            .await
            .unwrap()
    }

    /// The id of a grant alice holds (or asked for) of `step`, made at `now`.
    async fn grant_of(&self, step: &str, now: DateTime<Utc>) -> String {
        let out = self.ask("alice", step, false, now).await.unwrap();
        out.grant.grant.id
    }

    async fn state(&self, id: &str, now: DateTime<Utc>) -> State {
        self.service
            .grant("carol", id, now)
            .await
            .unwrap()
            .grant
            .state
    }

    /// A grant as the ledger holds it.
    async fn stored(&self, id: &str) -> Grant {
        self.service.store.grant(id).await.unwrap().unwrap()
    }

    /// Writes grants into the ledger as they are, as an older version could have left them.
    async fn plant(&self, grants: Vec<Grant>, now: DateTime<Utc>) {
        let change = Change {
            grants,
            ..Change::default()
        };
        self.service.commit(change, now).await.unwrap();
    }

    /// The audit records with `action`, oldest first.
    async fn audited(&self, action: &str) -> Vec<crate::domain::audit::AuditRecord> {
        let all = self
            .service
            .store
            .audit_since(DateTime::<Utc>::MIN_UTC)
            .await;
        all.unwrap()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn revoke_grant(id: &str) -> RevokeBody {
    RevokeBody {
        grant: Some(id.into()),
        ..RevokeBody::default()
    }
}
