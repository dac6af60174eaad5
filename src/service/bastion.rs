//! What the bastion asks the ledger: whether a certificate may log in where it asks to,
//! whether a live login still may, the hop's own certificate, and the audit records of
//! logins, refusals and refused forwards.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PrivateKey, PublicKey};

use super::{Result, Service};
use crate::domain::audit::{Entry, ForwardRefused, LoggedIn, LoginRefused};
use crate::domain::cert::{self, CertError, KeyId, UserCert, Window};
use crate::domain::login::{self, Login, Refusal};
use crate::domain::policy::CertOptions;
use crate::install::keys;

/// A login attempt that was refused, as far as the audit record goes.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The login name asked for (`PRINCIPAL@TARGET`).
    pub login_name: &'a str,
    pub peer: SocketAddr,
    /// The certificate offered, if one was.
    pub cert: Option<&'a Certificate>,
    /// Whose registered or certified key it was, when this CA knows it.
    pub owner: Option<&'a str>,
}

impl Service {
    /// The bastion's SSH host key, and its host certificate when there is one.
    pub fn bastion_identity(&self) -> (PrivateKey, Option<Certificate>) {
        let path = keys::cert_path(&self.dir.join("keys").join(keys::BASTION_HOST));
        (
            self.keys.bastion_host.clone(),
            keys::read_certificate(&path).ok(),
        )
    }

    /// The only CA whose user certificates log in.
    pub fn user_ca(&self) -> Fingerprint {
        self.keys.user_ca.public_key().fingerprint(HashAlg::Sha256)
    }

    /// The CA whose host certificates targets present.
    pub fn host_ca(&self) -> Fingerprint {
        self.keys.host_ca.public_key().fingerprint(HashAlg::Sha256)
    }

    /// Every check of a certificate offered as `login_name` from `client`, in order (see
    /// [`crate::domain::login`]); the ledger says whether its serial is known and not
    /// revoked, and which grant it is of. The first failure is the refusal.
    ///
    /// A certificate of ours refused only for where it asks to go (a principal, a target or a
    /// grant it does not hold) stands in for a sibling: another certificate minted for the same
    /// key from an active grant of the same person that covers the login (see
    /// [`Service::sibling_login`]).
    pub async fn check_login(
        &self,
        cert: &Certificate,
        login_name: &str,
        client: SocketAddr,
        now: DateTime<Utc>,
    ) -> std::result::Result<Login, Refusal> {
        match self.check_offered(cert, login_name, client, now).await {
            Err(refusal) if refusal.a_sibling_may_cover() => {
                match self.sibling_login(cert, login_name, client, now).await {
                    Some(login) => Ok(login),
                    None => Err(refusal),
                }
            }
            checked => checked,
        }
    }

    /// The checks of the offered certificate itself.
    async fn check_offered(
        &self,
        cert: &Certificate,
        login_name: &str,
        client: SocketAddr,
        now: DateTime<Utc>,
    ) -> std::result::Result<Login, Refusal> {
        let ledger = |e: crate::store::StoreError| {
            self.note_ledger(Some(&e));
            Refusal::Ledger(e.outage().unwrap_or_else(|| e.to_string()))
        };
        if let Some(why) = self.ledger_down() {
            // Known down: refuse at once rather than wait out a connect timeout per login.
            return Err(Refusal::Ledger(why));
        }
        let presented = login::presented(&self.user_ca(), cert, login_name, client.ip(), now)?;
        let key_id = presented.key_id.to_string();
        match self.store.cert(presented.serial).await.map_err(ledger)? {
            Some(r) if r.key_id == key_id => {}
            _ => {
                return Err(Refusal::UnknownSerial {
                    serial: presented.serial,
                    key_id,
                })
            }
        }
        if self
            .store
            .is_revoked(presented.serial)
            .await
            .map_err(ledger)?
        {
            return Err(Refusal::Revoked(presented.serial));
        }
        let grant_id = &presented.key_id.grant;
        let grant = self
            .store
            .grant(grant_id)
            .await
            .map_err(ledger)?
            .ok_or_else(|| Refusal::NoGrant(grant_id.clone()))?;
        login::granted(&self.policies(), cert, client.ip(), presented, grant, now)
    }

    /// The login a sibling certificate would make. OpenSSH offers an agent's certificates one
    /// after the other, each refusal costing one of the connection's few attempts, and the
    /// bastion cannot tell them apart before the signature (the offer carries only the key): so
    /// the first certificate of ours that proves the key is enough, and the ledger names the
    /// certificate minted for that key that covers the login. Nothing is widened: the sibling
    /// passes every check it would have passed when offered itself (its grant active and
    /// covering the target, its holder entitled, the principal its own, its serial unrevoked,
    /// now inside its window, the client inside its step's source addresses), and the login
    /// carries its serial, window and options.
    pub(super) async fn sibling_login(
        &self,
        cert: &Certificate,
        login_name: &str,
        client: SocketAddr,
        now: DateTime<Utc>,
    ) -> Option<Login> {
        let secs = now.timestamp().max(0) as u64;
        let principal = cert.valid_principals().first()?;
        // The offered certificate is sound and ours, whatever it covers.
        cert::verify_user_cert(cert, std::slice::from_ref(&self.user_ca()), principal, secs)
            .ok()?;
        let key_id = KeyId::parse(cert.key_id())?;
        if login_name.chars().any(crate::shown::is_control) {
            return None;
        }
        let (asked, target_name) = login::parse_login_name(login_name);
        let policies = self.policies();
        let target = policies.hosts.get(target_name)?;
        let fingerprint = cert::fingerprint(&PublicKey::from(cert.public_key().clone()));
        let grants: Vec<_> = self
            .store
            .open_grants(now)
            .await
            .ok()?
            .into_iter()
            .filter(|g| g.user == key_id.user && g.id != key_id.grant)
            .filter(|g| login::still_valid(g, now).is_ok())
            .filter(|g| login::still_entitled(&policies, &g.user, &g.contract).is_ok())
            .filter(|g| {
                let contract = policies.contracts.get(&g.contract);
                contract.is_some_and(|c| c.targets.matches(target))
            })
            .collect();
        if grants.is_empty() {
            return None;
        }
        let ids: Vec<String> = grants.iter().map(|g| g.id.clone()).collect();
        let mut certs = self.store.certs_of_grants(&ids).await.ok()?;
        certs.retain(|c| {
            c.kind == "user"
                && c.fingerprint == fingerprint
                && (c.valid_after..c.valid_before).contains(&secs)
                && asked.is_none_or(|p| c.principals.iter().any(|q| q == p))
        });
        certs.sort_by_key(|c| std::cmp::Reverse(c.serial));
        for c in certs {
            if self.store.is_revoked(c.serial).await.unwrap_or(true) {
                continue;
            }
            let Some(grant) = grants.iter().find(|g| g.id == c.grant) else {
                continue;
            };
            let step = policies
                .contracts
                .get(&grant.contract)
                .and_then(|k| k.step(&grant.step));
            let Some(options) = step.map(|s| s.options.clone()) else {
                continue;
            };
            let from_inside = options.source_address.is_empty()
                || options
                    .source_address
                    .iter()
                    .any(|n| n.contains(&client.ip()));
            if !from_inside {
                continue;
            }
            let principal = match asked {
                Some(p) => p.to_string(),
                None => c.principals.first()?.clone(),
            };
            tracing::info!(offered = cert.serial(), used = c.serial, grant = %grant.id, "a sibling certificate covers the login");
            return Some(Login {
                user: grant.user.clone(),
                grant: grant.clone(),
                serial: c.serial,
                key_id: c.key_id.clone(),
                principal,
                target: target.clone(),
                valid_after: c.valid_after,
                valid_before: c.valid_before,
                options,
                client: client.ip().to_string(),
            });
        }
        None
    }

    /// What a refused login tells the client, when the attempt proved a key this CA knows:
    /// a certificate user-ca signed (its key id names the person) or a registered or
    /// certified key (`owner`). `None` for anyone else, who learns nothing.
    pub fn refusal_notice(&self, attempt: Attempt<'_>, refusal: &Refusal) -> Option<String> {
        let ours = attempt
            .cert
            .filter(|c| c.signature_key().fingerprint(HashAlg::Sha256) == self.user_ca())
            .and_then(|c| KeyId::parse(c.key_id()).map(|k| k.user));
        let user = ours.or(attempt.owner.map(String::from))?;
        let notice = crate::domain::notice::refusal_notice;
        Some(notice(&self.policies(), &user, attempt.login_name, refusal))
    }

    /// Whether a live login still stands at `now`: its grant active, its serial not
    /// revoked, its holder still entitled. `None` when it does; else why it ended. A ledger
    /// that cannot be read ends nothing (the next re-check asks again).
    pub async fn recheck(&self, l: &Login, now: DateTime<Utc>) -> Option<String> {
        match self.store.grant(&l.grant.id).await {
            Ok(Some(g)) if login::still_valid(&g, now).is_ok() => {}
            // Who revoked it and why, as the revocation recorded them.
            Ok(Some(g)) => {
                return Some(match (&g.closed, g.end) {
                    (Some(c), _) => format!(
                        "{} revoked the grant: {}",
                        crate::shown::shown(&c.by),
                        crate::shown::shown(&c.reason)
                    ),
                    // Ended before the certificate did: its end moved earlier with the
                    // grant it climbed from.
                    (None, Some(end)) if end <= now => format!(
                        "the grant ended at {}, cut short with the grant it climbed from",
                        end.format("%H:%M:%S UTC")
                    ),
                    (None, _) => format!("the grant is {}", g.state_at(now)),
                });
            }
            Ok(None) => return Some("the grant is no longer in the ledger".into()),
            Err(e) => tracing::warn!(error = %e, "cannot re-check a live login's grant"),
        }
        // Revoking the grant revokes its serials too; a serial alone says so.
        if self.store.is_revoked(l.serial).await.unwrap_or(false) {
            return Some(format!("certificate serial {} was revoked", l.serial));
        }
        login::still_entitled(&self.policies(), &l.user, &l.grant.contract)
            .err()
            .map(|why| why.to_string())
    }

    /// When a live login's grant now ends, in unix seconds, when an extension moved it past
    /// the certificate's end (`ramp-ca extend`): sessions run on to it. `None` otherwise, or
    /// when the ledger cannot say.
    pub async fn extended_until(&self, l: &Login, now: DateTime<Utc>) -> Option<u64> {
        let g = self.store.grant(&l.grant.id).await.ok().flatten()?;
        let end = g.end.filter(|_| g.is_active(now))?.timestamp().max(0) as u64;
        (end > l.valid_before).then_some(end)
    }

    /// Audits a login.
    pub async fn logged_in(&self, l: &Login, now: DateTime<Utc>) -> Result<()> {
        let logged = LoggedIn {
            principal: l.principal.clone(),
            grant: l.grant.id.clone(),
            serial: l.serial,
            client: l.client.clone(),
            node: Some(self.node.clone()),
        };
        let entry = Entry::new(&l.user, &l.target.name, logged);
        self.write_audit(entry, now).await
    }

    /// Counts a refused login, and audits it when it concerns someone this CA knows: a
    /// certificate user-ca signed, or a registered or certified key. Anonymous junk is only
    /// counted (and logged by the bastion), so strangers cannot flood the chain or put names
    /// in it.
    pub async fn login_refused(
        &self,
        attempt: Attempt<'_>,
        refusal: &Refusal,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.metrics.login_refused(refusal.label());
        let ours = attempt
            .cert
            .filter(|c| c.signature_key().fingerprint(HashAlg::Sha256) == self.user_ca());
        if ours.is_none() && attempt.owner.is_none() {
            return Ok(());
        }
        let actor = ours
            .and_then(|c| KeyId::parse(c.key_id()).map(|k| k.user))
            .or(attempt.owner.map(String::from))
            .unwrap_or_else(|| "unknown".into());
        let refused = LoginRefused {
            reason: refusal.to_string(),
            client: attempt.peer.to_string(),
            serial: attempt.cert.map(|c| c.serial()),
            key_id: attempt.cert.map(|c| c.key_id().to_string()),
        };
        let entry = Entry::new(&actor, attempt.login_name, refused);
        self.write_audit(entry, now).await
    }

    /// Why a connection that only managed to offer a plain key got nowhere, and whose key it
    /// is when this CA knows it (registered in people.yaml, or certified before). The SSH
    /// layer refuses expired, not-yet-valid and badly signed certificates before
    /// [`Service::check_login`] sees them, so the ledger's newest certificate for the key
    /// tells the likely story.
    pub async fn unusable_key(
        &self,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> (Refusal, Option<String>) {
        let fp = cert::fingerprint(key);
        // One keyed read at most (from memory on sled): anyone may offer a plain key.
        let newest = self.store.newest_cert_for(&fp).await.ok().flatten();
        let owner = self
            .key_owner(key)
            .or_else(|| newest.as_ref().map(|c| c.user.clone()));
        let secs = now.timestamp().max(0) as u64;
        let why = match &newest {
            Some(c) if secs >= c.valid_before => Refusal::KeyExpired {
                key: fp,
                serial: c.serial,
                until: DateTime::<Utc>::from_timestamp(c.valid_before as i64, 0)
                    .map_or_else(String::new, |t| t.to_rfc3339()),
            },
            Some(c) if secs < c.valid_after => Refusal::KeyNotYetValid {
                key: fp,
                serial: c.serial,
            },
            _ => Refusal::PlainKey(fp),
        };
        (why, owner)
    }

    /// Audits a port forward the certificate does not permit.
    pub async fn forward_refused(
        &self,
        user: &str,
        dest: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let refused = ForwardRefused {
            reason: reason.to_string(),
        };
        let entry = Entry::new(user, dest, refused);
        self.write_audit(entry, now).await
    }

    /// The bastion's certificate for its own hop to a login's target: for a fresh `key`,
    /// signed by node-ca (which targets trust), for the one principal, carrying the user's
    /// serial and key id (so the target's log names the person and a KRL entry for the
    /// user's serial stops the hop too), expiring with the user's certificate, with the
    /// user's options but the source address (the hop comes from the bastion).
    pub fn hop_certificate(
        &self,
        l: &Login,
        key: &PublicKey,
        now: DateTime<Utc>,
    ) -> std::result::Result<Certificate, CertError> {
        let principals = [l.principal.clone()];
        let spec = UserCert {
            key,
            serial: l.serial,
            key_id: l.key_id.clone(),
            principals: &principals,
            window: Window::backdated(now, l.valid_before),
            options: &CertOptions {
                source_address: Vec::new(),
                ..l.options.clone()
            },
        };
        cert::mint_user_cert(&self.keys.node_ca, &spec, &mut rand::rng())
    }

    /// Every revoked serial: host certificates too (`ramp-ca revoke --serial`).
    pub async fn revoked_serials(&self) -> Result<Vec<u64>> {
        Ok(self.store.revoked_serials().await?)
    }
}
