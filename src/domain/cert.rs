//! Certificates: grant + key + now -> OpenSSH certificate, and what a certificate says read
//! back. The one place for the key id format, the certificate options as OpenSSH extensions
//! and critical options, and the validity window. Pure: the clock and the RNG are arguments.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use super::grant::Grant;
use super::login::Refusal;
use super::policy::{parse_cidr, CertOptions, Step};
use super::Vocabulary;

/// Certificates start this far in the past, for clients whose clocks run slow.
pub const BACKDATE_SECS: i64 = 60;

/// The critical option that replaces whatever command the client asks for.
pub const FORCE_COMMAND: &str = "force-command";
/// The critical option that lists the networks a certificate may be used from.
pub const SOURCE_ADDRESS: &str = "source-address";

/// Where an extension's flag lives in [`CertOptions`].
type Flag = fn(&mut CertOptions) -> &mut bool;

/// The extensions a step may permit, each with the option it stands for: one table that
/// minting writes from and reading a certificate back reads with.
const EXTENSIONS: [(&str, Flag); 5] = [
    ("permit-X11-forwarding", |o| &mut o.x11_forwarding),
    ("permit-agent-forwarding", |o| &mut o.agent_forwarding),
    ("permit-port-forwarding", |o| &mut o.port_forwarding),
    ("permit-pty", |o| &mut o.pty),
    ("permit-user-rc", |o| &mut o.user_rc),
];

/// Errors minting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the grant is not active at this time")]
    NotActive,
    #[error(
        "refusing to mint a certificate with no principals (it would be valid for every user)"
    )]
    NoPrincipals,
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] russh::keys::ssh_key::Error),
}

/// A user certificate's key id, `ramp:<user>:<contract>:<step>:<grant-id>`, so a target's
/// own sshd log names the person and the approval. The bastion's hop certificates carry the
/// user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    pub user: String,
    pub contract: String,
    pub step: String,
    pub grant: String,
}

impl KeyId {
    /// The key id of certificates minted from `grant`.
    pub fn of(grant: &Grant) -> KeyId {
        KeyId {
            user: grant.user.clone(),
            contract: grant.contract.clone(),
            step: grant.step.clone(),
            grant: grant.id.clone(),
        }
    }

    /// Reads a key id this CA wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<KeyId> {
        let parts: Vec<&str> = text.split(':').collect();
        let ["ramp", user, contract, step, grant] = parts[..] else {
            return None;
        };
        Some(KeyId {
            user: user.into(),
            contract: contract.into(),
            step: step.into(),
            grant: grant.into(),
        })
    }

    /// Whether the key id names this grant.
    pub fn names(&self, grant: &Grant) -> bool {
        *self == KeyId::of(grant)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ramp:{}:{}:{}:{}",
            self.user, self.contract, self.step, self.grant
        )
    }
}

/// The key id of a host certificate.
pub fn host_key_id(name: &str) -> String {
    format!("ramp-host:{name}")
}

/// What a certificate is for, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    User,
    Host,
}

impl Vocabulary for CertKind {
    const ALL: &'static [CertKind] = &[CertKind::User, CertKind::Host];

    fn label(self) -> &'static str {
        match self {
            CertKind::User => "user",
            CertKind::Host => "host",
        }
    }
}

/// A certificate the CA minted, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: u64,
    pub key_id: String,
    /// `user` or `host` ([`CertKind`]).
    pub kind: String,
    /// Whose it is: the grant's holder, or who signed a host certificate.
    pub user: String,
    /// The grant it was minted from; empty for host certificates.
    pub grant: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// SHA-256 fingerprint of the certified key.
    pub fingerprint: String,
    pub issued_at: DateTime<Utc>,
}

/// What a [`CertRecord`] is made of, beyond the certificate's spec.
pub struct Minted<'a> {
    pub kind: CertKind,
    pub serial: u64,
    pub key_id: &'a str,
    pub user: &'a str,
    pub grant: &'a str,
    pub principals: &'a [String],
    pub window: Window,
    pub key: &'a PublicKey,
}

impl CertRecord {
    /// The ledger's record of a certificate minted at `now`.
    pub fn new(m: Minted<'_>, now: DateTime<Utc>) -> CertRecord {
        CertRecord {
            serial: m.serial,
            key_id: m.key_id.to_string(),
            kind: m.kind.label().to_string(),
            user: m.user.to_string(),
            grant: m.grant.to_string(),
            principals: m.principals.to_vec(),
            valid_after: m.window.after,
            valid_before: m.window.before,
            fingerprint: fingerprint(m.key),
            issued_at: now,
        }
    }

    pub fn is(&self, kind: CertKind) -> bool {
        self.kind == kind.label()
    }
}

/// `SHA256:...` of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// When a certificate is valid, in unix seconds: from `after` until before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub after: u64,
    pub before: u64,
}

impl Window {
    /// From [`BACKDATE_SECS`] before `now` until `before`.
    pub fn backdated(now: DateTime<Utc>, before: u64) -> Window {
        Window {
            after: (now.timestamp() - BACKDATE_SECS).max(0) as u64,
            before,
        }
    }

    /// A user certificate from a grant ending at `grant_end`: never past the grant's end
    /// nor `now + step max_ttl`.
    pub fn user(grant_end: DateTime<Utc>, step: &Step, now: DateTime<Utc>) -> Window {
        let step_end = now + chrono::Duration::seconds(step.max_ttl.as_secs() as i64);
        Window::backdated(now, grant_end.min(step_end).timestamp() as u64)
    }

    /// A host certificate lasting `ttl` from `now`.
    pub fn host(now: DateTime<Utc>, ttl: std::time::Duration) -> Window {
        let w = Window::backdated(now, 0);
        let before = w
            .after
            .saturating_add(BACKDATE_SECS as u64)
            .saturating_add(ttl.as_secs())
            .min(i64::MAX as u64);
        Window { before, ..w }
    }
}

/// Everything that goes into a user certificate.
#[derive(Debug, Clone)]
pub struct UserCert<'a> {
    /// The key the certificate is for.
    pub key: &'a PublicKey,
    pub serial: u64,
    pub key_id: String,
    pub principals: &'a [String],
    pub window: Window,
    pub options: &'a CertOptions,
}

/// The certificate a grant allows at `now` (see [`Window::user`]).
pub fn user_cert_for<'a>(
    grant: &Grant,
    step: &'a Step,
    key: &'a PublicKey,
    serial: u64,
    now: DateTime<Utc>,
) -> Result<UserCert<'a>, CertError> {
    let end = match (grant.is_held(now), grant.end) {
        (true, Some(end)) => end,
        _ => return Err(CertError::NotActive),
    };
    // A grant approved ahead of its window: valid from its start.
    let from = grant.start.map_or(now, |s| s.max(now));
    Ok(UserCert {
        key,
        serial,
        key_id: KeyId::of(grant).to_string(),
        principals: &step.principals,
        window: Window::user(end, step, from),
        options: &step.options,
    })
}

/// Signs a user certificate with the user CA (or, for the hop, the node CA).
pub fn mint_user_cert(
    ca: &PrivateKey,
    spec: &UserCert<'_>,
    rng: &mut impl rand::CryptoRng,
) -> Result<Certificate, CertError> {
    if spec.principals.is_empty() || spec.principals.iter().any(|p| p.is_empty()) {
        return Err(CertError::NoPrincipals);
    }
    let mut b = Builder::new_with_random_nonce(
        rng,
        spec.key.key_data().clone(),
        spec.window.after,
        spec.window.before,
    )?;
    b.serial(spec.serial)?
        .cert_type(CertType::User)?
        .key_id(spec.key_id.clone())?
        .comment(spec.key_id.clone())?;
    for p in spec.principals {
        b.valid_principal(p.clone())?;
    }
    let mut o = spec.options.clone();
    if let Some(cmd) = &o.force_command {
        b.critical_option(FORCE_COMMAND, cmd.clone())?;
    }
    if !o.source_address.is_empty() {
        let nets: Vec<String> = o.source_address.iter().map(|n| n.to_string()).collect();
        b.critical_option(SOURCE_ADDRESS, nets.join(","))?;
    }
    for (ext, field) in EXTENSIONS {
        if *field(&mut o) {
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
    window: Window,
    rng: &mut impl rand::CryptoRng,
) -> Result<Certificate, CertError> {
    if principals.is_empty() {
        return Err(CertError::NoPrincipals);
    }
    let mut b =
        Builder::new_with_random_nonce(rng, key.key_data().clone(), window.after, window.before)?;
    b.serial(serial)?
        .cert_type(CertType::Host)?
        .key_id(key_id)?;
    for p in principals {
        b.valid_principal(p.clone())?;
    }
    Ok(b.sign(ca)?)
}

/// The certificate's `source-address` list as written, each entry with the network it
/// names (`Err` with the entry when it names none); `None` when it has no such option.
pub fn source_addresses(cert: &Certificate) -> Option<(&str, Vec<Result<IpNet, &str>>)> {
    let list = cert.critical_options().get(SOURCE_ADDRESS)?;
    let nets = list
        .split(',')
        .map(|c| parse_cidr(c.trim()).ok_or(c))
        .collect();
    Some((list.as_str(), nets))
}

/// Whether `client` may use the certificate, by its `source-address` option.
pub fn check_source(cert: &Certificate, client: IpAddr) -> Result<(), Refusal> {
    let Some((list, nets)) = source_addresses(cert) else {
        return Ok(());
    };
    let nets = nets
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|c| Refusal::BadSourceAddress(c.to_string()))?;
    if nets.iter().any(|net| net.contains(&client)) {
        Ok(())
    } else {
        Err(Refusal::SourceAddress {
            client,
            list: list.to_string(),
        })
    }
}

/// What a certificate permits, read back from its extensions and critical options: what
/// the bastion enforces and passes on to its hop.
pub fn options_of(cert: &Certificate) -> CertOptions {
    let mut o = CertOptions {
        source_address: source_addresses(cert)
            .map(|(_, nets)| nets.into_iter().filter_map(Result::ok).collect())
            .unwrap_or_default(),
        force_command: cert.critical_options().get(FORCE_COMMAND).cloned(),
        ..CertOptions::default()
    };
    for (ext, field) in EXTENSIONS {
        *field(&mut o) = cert.extensions().contains_key(ext);
    }
    o
}

/// The checks OpenSSH makes of a user certificate, made explicit so the bastion can log
/// which failed.
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
        .find(|k| !matches!(k.as_str(), FORCE_COMMAND | SOURCE_ADDRESS))
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
    use crate::domain::grant::{Asked, Grant};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn grant(now: DateTime<Utc>, ttl: u64) -> Grant {
        let asked = Asked {
            id: "g1".into(),
            user: "alice",
            contract: "prod-db",
            step: "observe".into(),
            reason: None,
            ttl_secs: ttl,
            approvals_from: vec![],
            approvals_needed: 0,
            start: None,
        };
        Grant::requested(asked, now)
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
            review: Default::default(),
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
        assert_eq!(spec.window.after, 1_800_000_040);
        assert_eq!(spec.window.before, 1_800_000_600, "ends with the grant");
        let s = step(60, &["readonly"]);
        let spec = user_cert_for(&g, &s, user.public_key(), 7, later).unwrap();
        assert_eq!(
            spec.window.before, 1_800_000_160,
            "ends at now + step max_ttl"
        );
        assert_eq!(spec.key_id, "ramp:alice:prod-db:observe:g1");
        let gone = t0 + chrono::Duration::seconds(600);
        assert!(matches!(
            user_cert_for(&g, &s, user.public_key(), 7, gone),
            Err(CertError::NotActive)
        ));
        let host = Window::host(t0, Duration::from_secs(86400));
        assert_eq!((host.after, host.before), (1_799_999_940, 1_800_086_400));
    }

    #[test]
    fn key_ids_read_back_as_written_and_others_are_not_ours() {
        let id = KeyId::of(&grant(Utc::now(), 60));
        assert_eq!(id.to_string(), "ramp:alice:prod-db:observe:g1");
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
        for other in [
            "ramp:a:b:c",
            "ramp:a:b:c:d:e",
            "rump:a:b:c:d",
            "ramp-host:db-1",
            "",
        ] {
            assert_eq!(KeyId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn minted_certificate_verifies_only_as_granted_and_reads_back_its_options() {
        let (ca, user, other_ca) = (key(), key(), key());
        let s = step(3600, &["readonly", "dbadmin"]);
        let spec = UserCert {
            key: user.public_key(),
            serial: 42,
            key_id: "ramp:alice:prod-db:observe:g1".into(),
            principals: &s.principals,
            window: Window {
                after: 1000,
                before: 2000,
            },
            options: &s.options,
        };
        let cert = mint_user_cert(&ca, &spec, &mut rand::rng()).unwrap();
        assert_eq!(cert.serial(), 42);
        assert_eq!(
            cert.critical_options().get(SOURCE_ADDRESS).unwrap(),
            "10.0.0.0/8"
        );
        assert!(cert.extensions().contains_key("permit-pty"));
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        assert_eq!(
            options_of(&cert),
            s.options,
            "written and read in one table"
        );
        assert_eq!(check_source(&cert, "10.1.2.3".parse().unwrap()), Ok(()));
        assert!(check_source(&cert, "192.0.2.1".parse().unwrap()).is_err());
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
            Err(CertError::NoPrincipals)
        ));
    }
}
