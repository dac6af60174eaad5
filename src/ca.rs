//! Certificates: grant + key + now -> OpenSSH certificate, and the checks a verifier makes.
//!
//! Pure: the clock and the RNG are arguments.

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PrivateKey, PublicKey};

use crate::grant::Grant;
use crate::policy::{CertOptions, Step};

/// Certificates start this far in the past, for clients whose clocks run slow.
pub const BACKDATE_SECS: i64 = 60;

/// Errors minting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the grant is not active at this time")]
    NotActive,
    #[error(
        "refusing to mint a certificate with no principals (it would be valid for every user)"
    )]
    NoPrincipals,
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] russh::keys::ssh_key::Error),
}

/// Everything that goes into a user certificate.
#[derive(Debug, Clone)]
pub struct UserCert<'a> {
    /// The key the certificate is for.
    pub key: &'a PublicKey,
    pub serial: u64,
    pub key_id: String,
    pub principals: &'a [String],
    pub valid_after: u64,
    pub valid_before: u64,
    pub options: &'a CertOptions,
}

/// The key id that names the person and the approval in a target's own sshd log.
pub fn key_id(grant: &Grant) -> String {
    format!(
        "ramp:{}:{}:{}:{}",
        grant.user, grant.contract, grant.step, grant.id
    )
}

/// The certificate a grant allows at `now`: backdated 60 s, never past the grant's end
/// nor `now + step.max_ttl`.
pub fn user_cert_for<'a>(
    grant: &Grant,
    step: &'a Step,
    key: &'a PublicKey,
    serial: u64,
    now: DateTime<Utc>,
) -> Result<UserCert<'a>, CaError> {
    let end = match (grant.state(now), grant.end) {
        (crate::grant::State::Active, Some(end)) => end,
        _ => return Err(CaError::NotActive),
    };
    let step_end = now + chrono::Duration::seconds(step.max_ttl.as_secs() as i64);
    let valid_before = end.min(step_end).timestamp();
    let valid_after = (now.timestamp() - BACKDATE_SECS).max(0);
    Ok(UserCert {
        key,
        serial,
        key_id: key_id(grant),
        principals: &step.principals,
        valid_after: valid_after as u64,
        valid_before: valid_before as u64,
        options: &step.options,
    })
}

/// Signs a user certificate with the user CA.
pub fn mint_user_cert(
    ca: &PrivateKey,
    spec: &UserCert<'_>,
    rng: &mut impl rand::CryptoRng,
) -> Result<Certificate, CaError> {
    if spec.principals.is_empty() || spec.principals.iter().any(|p| p.is_empty()) {
        return Err(CaError::NoPrincipals);
    }
    let mut b = Builder::new_with_random_nonce(
        rng,
        spec.key.key_data().clone(),
        spec.valid_after,
        spec.valid_before,
    )?;
    b.serial(spec.serial)?
        .cert_type(CertType::User)?
        .key_id(spec.key_id.clone())?
        .comment(spec.key_id.clone())?;
    for p in spec.principals {
        b.valid_principal(p.clone())?;
    }
    let o = spec.options;
    if let Some(cmd) = &o.force_command {
        b.critical_option("force-command", cmd.clone())?;
    }
    if !o.source_address.is_empty() {
        let nets: Vec<String> = o.source_address.iter().map(|n| n.to_string()).collect();
        b.critical_option("source-address", nets.join(","))?;
    }
    for (ext, on) in [
        ("permit-X11-forwarding", o.x11_forwarding),
        ("permit-agent-forwarding", o.agent_forwarding),
        ("permit-port-forwarding", o.port_forwarding),
        ("permit-pty", o.pty),
        ("permit-user-rc", o.user_rc),
    ] {
        if on {
            b.extension(ext, "")?;
        }
    }
    Ok(b.sign(ca)?)
}

/// Signs a host certificate for a target or the bastion.
pub fn mint_host_cert(
    ca: &PrivateKey,
    key: &PublicKey,
    serial: u64,
    key_id: &str,
    principals: &[String],
    window: (u64, u64),
    rng: &mut impl rand::CryptoRng,
) -> Result<Certificate, CaError> {
    if principals.is_empty() {
        return Err(CaError::NoPrincipals);
    }
    let mut b = Builder::new_with_random_nonce(rng, key.key_data().clone(), window.0, window.1)?;
    b.serial(serial)?
        .cert_type(CertType::Host)?
        .key_id(key_id)?;
    for p in principals {
        b.valid_principal(p.clone())?;
    }
    Ok(b.sign(ca)?)
}

/// Why a user certificate is refused; `None` from [`verify_user_cert`] means it is good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a user certificate")]
    NotUserCert,
    #[error("signed by an untrusted CA ({0})")]
    UntrustedCa(String),
    #[error("bad certificate signature")]
    BadSignature,
    #[error("certificate is not valid yet (valid after {0})")]
    NotYetValid(u64),
    #[error("certificate expired (valid before {0})")]
    Expired(u64),
    #[error("certificate has no principals")]
    NoPrincipals,
    #[error("principal `{0}` is not in the certificate")]
    WrongPrincipal(String),
    #[error("unknown critical option `{0}`")]
    UnknownCriticalOption(String),
    #[error("the certificate's key is itself a certificate or the CA key")]
    Nested,
}

impl Refusal {
    /// A short, stable label for metrics (`ramp_logins_refused_total{reason=...}`).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotUserCert => "not-user-cert",
            Refusal::UntrustedCa(_) => "unknown-ca",
            Refusal::BadSignature => "bad-signature",
            Refusal::NotYetValid(_) => "not-yet-valid",
            Refusal::Expired(_) => "expired",
            Refusal::NoPrincipals | Refusal::WrongPrincipal(_) => "principal",
            Refusal::UnknownCriticalOption(_) => "critical-option",
            Refusal::Nested => "bad-certificate",
        }
    }
}

/// The checks OpenSSH makes of a user certificate, made explicit so the bastion can log which failed.
pub fn verify_user_cert(
    cert: &Certificate,
    trusted: &[Fingerprint],
    principal: &str,
    now: u64,
) -> Result<(), Refusal> {
    if cert.cert_type() != CertType::User {
        return Err(Refusal::NotUserCert);
    }
    let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
    if !trusted.contains(&ca_fp) {
        return Err(Refusal::UntrustedCa(ca_fp.to_string()));
    }
    if cert.public_key() == cert.signature_key() {
        return Err(Refusal::Nested);
    }
    cert.verify_signature().map_err(|_| Refusal::BadSignature)?;
    if now < cert.valid_after() {
        return Err(Refusal::NotYetValid(cert.valid_after()));
    }
    if now >= cert.valid_before() {
        return Err(Refusal::Expired(cert.valid_before()));
    }
    if cert.valid_principals().is_empty() {
        return Err(Refusal::NoPrincipals);
    }
    if !cert.valid_principals().iter().any(|p| p == principal) {
        return Err(Refusal::WrongPrincipal(principal.to_string()));
    }
    if let Some(opt) = cert
        .critical_options()
        .keys()
        .find(|k| !matches!(k.as_str(), "force-command" | "source-address"))
    {
        return Err(Refusal::UnknownCriticalOption(opt.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use russh::keys::ssh_key::Algorithm;

    use super::*;
    use crate::grant::Status;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn grant(now: DateTime<Utc>, ttl: u64) -> Grant {
        let mut g = Grant {
            id: "g1".into(),
            user: "alice".into(),
            contract: "prod-db".into(),
            step: "observe".into(),
            reason: None,
            ttl_secs: ttl,
            requested_at: now,
            status: Status::Pending,
            start: None,
            end: None,
            approvals_from: vec![],
            approvals_needed: 0,
            approvals: vec![],
            closed: None,
        };
        g.activate(now);
        g
    }

    fn step(max_ttl: u64, principals: &[&str]) -> Step {
        Step {
            name: "observe".into(),
            after: None,
            principals: principals.iter().map(|s| s.to_string()).collect(),
            max_ttl: Duration::from_secs(max_ttl),
            approvals: None,
            options: CertOptions {
                source_address: vec!["10.0.0.0/8".parse().unwrap()],
                ..CertOptions::default()
            },
            break_glass: false,
        }
    }

    #[test]
    fn window_is_backdated_and_never_past_the_grant() {
        let t0 = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let user = key();
        let g = grant(t0, 600);
        let s = step(3600, &["readonly"]);
        let later = t0 + chrono::Duration::seconds(100);
        let spec = user_cert_for(&g, &s, user.public_key(), 7, later).unwrap();
        assert_eq!(spec.valid_after, 1_800_000_040);
        assert_eq!(spec.valid_before, 1_800_000_600, "ends with the grant");
        let s = step(60, &["readonly"]);
        let spec = user_cert_for(&g, &s, user.public_key(), 7, later).unwrap();
        assert_eq!(
            spec.valid_before, 1_800_000_160,
            "ends at now + step max_ttl"
        );
        assert_eq!(spec.key_id, "ramp:alice:prod-db:observe:g1");
        let gone = t0 + chrono::Duration::seconds(600);
        assert!(matches!(
            user_cert_for(&g, &s, user.public_key(), 7, gone),
            Err(CaError::NotActive)
        ));
    }

    #[test]
    fn minted_certificate_verifies_only_as_granted() {
        let (ca, user, other_ca) = (key(), key(), key());
        let s = step(3600, &["readonly", "dbadmin"]);
        let spec = UserCert {
            key: user.public_key(),
            serial: 42,
            key_id: "ramp:alice:prod-db:observe:g1".into(),
            principals: &s.principals,
            valid_after: 1000,
            valid_before: 2000,
            options: &s.options,
        };
        let cert = mint_user_cert(&ca, &spec, &mut rand::rng()).unwrap();
        assert_eq!(cert.serial(), 42);
        assert_eq!(
            cert.critical_options().get("source-address").unwrap(),
            "10.0.0.0/8"
        );
        assert!(cert.extensions().contains_key("permit-pty"));
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        let trusted = [ca.public_key().fingerprint(HashAlg::Sha256)];
        let check = |principal: &str, now: u64| verify_user_cert(&cert, &trusted, principal, now);
        assert_eq!(check("readonly", 1500), Ok(()));
        assert_eq!(check("dbadmin", 1000), Ok(()));
        assert_eq!(
            check("root", 1500),
            Err(Refusal::WrongPrincipal("root".into()))
        );
        assert_eq!(check("readonly", 999), Err(Refusal::NotYetValid(1000)));
        assert_eq!(check("readonly", 2000), Err(Refusal::Expired(2000)));
        let other = [other_ca.public_key().fingerprint(HashAlg::Sha256)];
        assert!(matches!(
            verify_user_cert(&cert, &other, "readonly", 1500),
            Err(Refusal::UntrustedCa(_))
        ));
        let none: Vec<String> = vec![];
        let empty = UserCert {
            principals: &none,
            ..spec
        };
        assert!(matches!(
            mint_user_cert(&ca, &empty, &mut rand::rng()),
            Err(CaError::NoPrincipals)
        ));
    }
}
