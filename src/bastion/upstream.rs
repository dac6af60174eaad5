//! The hop: the bastion's own SSH connection to a target, with a fresh key and a node-ca
//! certificate for the one principal, expiring with the user's certificate, after checking
//! the target's host key (host-ca certificate or the key pinned in hosts.yaml).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Algorithm, Fingerprint, HashAlg, PrivateKey};
use russh::keys::PublicKeyOrCertificate;

use crate::domain::login::Login;
use crate::domain::policy::Host;
use crate::service::Service;

/// How long connecting and authenticating to a target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ciphers for the hop, best first. AES-GCM comes first: with AES-NI it costs a fraction of
/// ChaCha20-Poly1305, and the bastion pays for every byte twice (client leg and hop).
const HOP_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

/// An authenticated connection to a target.
pub struct Upstream {
    pub handle: client::Handle<TargetCheck>,
}

/// Checks the target's host key; remembers why it refused, for the error message.
pub struct TargetCheck {
    host: Host,
    host_ca: Fingerprint,
    /// Revoked serials from the ledger (`ramp-ca revoke --serial` works for host certificates).
    revoked: Vec<u64>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl TargetCheck {
    fn verdict(&self, key: &PublicKeyOrCertificate) -> Result<(), String> {
        let host = &self.host;
        match (key, &host.host_key) {
            (PublicKeyOrCertificate::PublicKey { key, .. }, Some(pinned)) => {
                if key.key_data() == pinned.key_data() {
                    Ok(())
                } else {
                    Err(format!(
                        "host key of {} changed: it presented {}, hosts.yaml pins {}",
                        host.name,
                        key.fingerprint(HashAlg::Sha256),
                        pinned.fingerprint(HashAlg::Sha256)
                    ))
                }
            }
            (PublicKeyOrCertificate::Certificate(cert), Some(pinned)) => {
                if cert.public_key() == pinned.key_data() {
                    Ok(())
                } else {
                    Err(format!("host key of {} does not match the key pinned in hosts.yaml", host.name))
                }
            }
            (PublicKeyOrCertificate::PublicKey { key, .. }, None) => Err(format!(
                "{} presented a plain host key ({}) but hosts.yaml pins none: sign it with `ramp-ca sign-host` or pin it",
                host.name,
                key.fingerprint(HashAlg::Sha256)
            )),
            (PublicKeyOrCertificate::Certificate(cert), None) => {
                let now = chrono::Utc::now().timestamp().max(0) as u64;
                let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
                let address_host = host.address_host();
                if cert.cert_type() != CertType::Host {
                    Err(format!("{} presented a user certificate as its host key", host.name))
                } else if ca_fp != self.host_ca {
                    Err(format!("{}'s host certificate is signed by an unknown CA ({ca_fp})", host.name))
                } else if cert.verify_signature().is_err() {
                    Err(format!("{}'s host certificate has a bad signature", host.name))
                } else if self.revoked.contains(&cert.serial()) {
                    Err(format!("{}'s host certificate (serial {}) is revoked", host.name, cert.serial()))
                } else if now < cert.valid_after() || now >= cert.valid_before() {
                    Err(format!("{}'s host certificate is outside its validity window", host.name))
                } else if !cert
                    .valid_principals()
                    .iter()
                    .any(|p| p == &host.name || p == address_host)
                {
                    Err(format!("{}'s host certificate is not valid for the name {}", host.name, host.name))
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl client::Handler for TargetCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.verdict(key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

/// Connects to the login's target as its principal. Errors are sentences for the user.
pub async fn connect(
    login: &Login,
    service: &Service,
    host_ca: Fingerprint,
) -> Result<Upstream, String> {
    let host = &login.target;
    let key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| e.to_string())?;
    let cert = service
        .hop_certificate(login, key.public_key(), chrono::Utc::now())
        .map_err(|e| e.to_string())?;
    let refusal = Arc::new(Mutex::new(None));
    let check = TargetCheck {
        host: host.clone(),
        host_ca,
        revoked: service
            .revoked_serials()
            .await
            .map_err(|e| format!("cannot read revocations: {e}"))?,
        refusal: refusal.clone(),
    };
    let config = Arc::new(client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // Messages russh queues per channel before its connection loop waits (default 100):
        // the read-ahead empties it at once, so a few messages do (see proxy::RUSSH_CHANNEL_QUEUE).
        channel_buffer_size: super::proxy::RUSSH_CHANNEL_QUEUE,
        maximum_packet_size: 32768,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        preferred: russh::Preferred {
            // A target without a pinned key must prove itself with a host-ca certificate.
            host_key_certificates: if host.host_key.is_none() {
                std::borrow::Cow::Owned(vec![
                    Algorithm::Ed25519,
                    Algorithm::Ecdsa {
                        curve: russh::keys::ssh_key::EcdsaCurve::NistP256,
                    },
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha512),
                    },
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha256),
                    },
                ])
            } else {
                std::borrow::Cow::Borrowed(&[])
            },
            kex: std::borrow::Cow::Borrowed(super::KEX_ORDER),
            cipher: std::borrow::Cow::Borrowed(HOP_CIPHERS),
            ..russh::Preferred::default()
        },
        ..client::Config::default()
    });
    let unreachable = |e: String| format!("cannot reach {} at {}: {e}", host.name, host.address);
    let mut handle = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect(config, host.address.as_str(), check),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
    .map_err(
        |e| match refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(why) => format!("refusing to connect: {why}"),
            None => unreachable(e.to_string()),
        },
    )?;
    let auth = tokio::time::timeout(
        CONNECT_TIMEOUT,
        handle.authenticate_openssh_cert(login.principal.clone(), Arc::new(key), cert),
    )
    .await
    .map_err(|_| unreachable("authentication timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    if !auth.success() {
        return Err(format!(
            "{} refused the bastion's certificate for `{}` (does it trust node-ca, and is `{}` an account there?)",
            host.name, login.principal, login.principal
        ));
    }
    Ok(Upstream { handle })
}
