//! Host certificates: for targets (`sign-host`, admins only) and the bastion's own, each
//! with a ledger serial and its audit record; and setting an installation up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::{PrivateKey, PublicKey};

use super::{Result, Service, ServiceError, HOST_CERT_TTL};
use crate::domain::audit::{Entry, HostSigned};
use crate::domain::cert::{self, CertError, CertKind, CertRecord, Minted, Window};
use crate::domain::grant::SERVICE_ACTOR;
use crate::domain::policy;
use crate::install::init::{self, Initialised};
use crate::install::keys::{self, Keys};
use crate::store::{Change, Ledger, Location};
use crate::wire::grants::SignHostBody;

/// A host certificate to mint.
struct HostCert<'a> {
    key: &'a PublicKey,
    name: &'a str,
    principals: Vec<String>,
    ttl: Duration,
    /// Who asked for it.
    actor: &'a str,
}

/// Mints a host certificate with a ledger serial and commits it with its audit record;
/// returns its line once that is on disk. `sign-host` and the bastion's own certificate
/// both come through here.
async fn issue_host_cert(
    store: &Ledger,
    host_ca: &PrivateKey,
    asked: HostCert<'_>,
    now: DateTime<Utc>,
) -> Result<String> {
    let serial = store.next_serial().await?;
    let window = Window::host(now, asked.ttl);
    let key_id = cert::host_key_id(asked.name);
    let minted = cert::mint_host_cert(
        host_ca,
        asked.key,
        serial,
        &key_id,
        &asked.principals,
        window,
        &mut rand::rng(),
    )?;
    let record = CertRecord::new(
        Minted {
            kind: CertKind::Host,
            serial,
            key_id: &key_id,
            user: asked.actor,
            grant: "",
            principals: &asked.principals,
            window,
            key: asked.key,
        },
        now,
    );
    let signed = HostSigned {
        serial,
        principals: record.principals.clone(),
        key: record.fingerprint.clone(),
        valid_before: window.before,
    };
    let change = Change {
        entries: vec![Entry::new(asked.actor, asked.name, signed)],
        certs: vec![record],
        ..Change::default()
    };
    store.commit(change, now).await?;
    Ok(minted.to_openssh().map_err(CertError::from)?)
}

/// Signs the bastion's host key with host-ca unless a certificate valid for another 30 days
/// is there and this ledger recorded it; returns where it wrote one. A certificate the
/// ledger never recorded (signed by `init` into the embedded ledger before the node served
/// from PostgreSQL, or kept from a ledger since replaced) would share its serial with one
/// this ledger hands out, so a KRL entry for either would revoke both.
async fn ensure_bastion_cert(
    dir: &Path,
    keys: &Keys,
    store: &Ledger,
    now: DateTime<Utc>,
) -> std::result::Result<Option<PathBuf>, crate::Error> {
    let path = match init::bastion_cert_due(dir, keys, now) {
        Some(path) => path,
        None => {
            let path = keys::cert_path(&dir.join("keys").join(keys::BASTION_HOST));
            let cert = keys::read_certificate(&path)?;
            let recorded = store
                .cert(cert.serial())
                .await
                .map_err(ServiceError::from)?
                .is_some_and(|r| {
                    r.key_id == cert.key_id()
                        && r.valid_before == cert.valid_before()
                        && r.fingerprint == cert::fingerprint(keys.bastion_host.public_key())
                });
            if recorded {
                return Ok(None);
            }
            path
        }
    };
    let asked = HostCert {
        key: keys.bastion_host.public_key(),
        name: "bastion",
        principals: init::bastion_principals(),
        ttl: init::BASTION_CERT_TTL,
        actor: SERVICE_ACTOR,
    };
    let line = issue_host_cert(store, &keys.host_ca, asked, now).await?;
    keys::write_line(&path, &line)?;
    Ok(Some(path))
}

/// `ramp-ca init`: creates what is missing under `dir` (see [`init::init`]), and the
/// bastion's host certificate; returns what it created. Needs no valid policies.
pub async fn initialise(
    dir: &Path,
    demo: bool,
    now: DateTime<Utc>,
) -> std::result::Result<(Initialised, Option<PathBuf>), crate::Error> {
    let done = init::init(dir, demo)?;
    let keys = Keys::load(&dir.join("keys"))?;
    let store = Ledger::open(&dir.join("data"), &Location::Embedded)
        .await
        .map_err(ServiceError::from)?;
    let cert = ensure_bastion_cert(dir, &keys, &store, now).await?;
    store.on_disk().await.map_err(ServiceError::from)?;
    Ok((done, cert))
}

impl Service {
    /// The bastion's host certificate, renewed when it is missing or about to expire.
    pub async fn ensure_bastion_cert(
        &self,
        now: DateTime<Utc>,
    ) -> std::result::Result<Option<PathBuf>, crate::Error> {
        ensure_bastion_cert(&self.dir, &self.keys, &self.store, now).await
    }

    /// A host certificate for a target (or any host name an admin vouches for).
    pub async fn sign_host(
        &self,
        who: &str,
        body: &SignHostBody,
        now: DateTime<Utc>,
    ) -> Result<String> {
        self.require_admin(who, "signing host certificates")?;
        if !policy::valid_name(&body.name) {
            return Err(ServiceError::BadRequest(format!(
                "bad host name `{}`",
                body.name
            )));
        }
        let key = keys::parse_public(&body.public_key).map_err(|e| {
            ServiceError::BadRequest(format!("--pubkey is not an OpenSSH public key: {e}"))
        })?;
        let ttl = match body.ttl.as_deref() {
            Some(t) => policy::parse_duration(t)
                .ok_or_else(|| ServiceError::BadRequest(format!("bad ttl `{t}`")))?,
            None => HOST_CERT_TTL,
        };
        let mut principals = vec![body.name.clone()];
        if let Some(h) = self.policies().hosts.get(&body.name) {
            let host = h.address_host();
            if host != body.name {
                principals.push(host.to_string());
            }
        }
        let asked = HostCert {
            key: &key,
            name: &body.name,
            principals,
            ttl,
            actor: who,
        };
        let cert = issue_host_cert(&self.store, &self.keys.host_ca, asked, now).await?;
        self.metrics.certificate_issued(true);
        Ok(cert)
    }
}
