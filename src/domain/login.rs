//! Who may log in where through the bastion, and why a login is refused. Pure: the service
//! asks the ledger (is the serial known, revoked, which grant) between [`presented`] and
//! [`granted`].

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::{Certificate, Fingerprint};

use super::cert::{self, KeyId};
use super::grant::{Grant, State};
use super::policy::{CertOptions, Host, Policies};
use super::session::{terminal_size, SessionMeta};
use super::Vocabulary;

/// Why a login was refused: the sentence for the log and the audit chain (its `Display`),
/// and a short, bounded [`Label`] for metrics.
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
    #[error("login name `{}` holds control characters: write PRINCIPAL@TARGET", crate::shown::shown(.0))]
    LoginName(String),
    #[error("unparseable source-address `{0}`")]
    BadSourceAddress(String),
    #[error("source address {client} is not in the certificate's source-address {list}")]
    SourceAddress { client: IpAddr, list: String },
    #[error("key id `{0}` is not a ramp-ca key id")]
    NotOurKeyId(String),
    #[error("serial {serial} with key id `{key_id}` is not in the ledger")]
    UnknownSerial { serial: u64, key_id: String },
    #[error("certificate serial {0} is revoked")]
    Revoked(u64),
    #[error("grant {0} is not in the ledger")]
    NoGrant(String),
    #[error("key id `{key_id}` does not match grant {grant}")]
    OtherGrant { key_id: String, grant: String },
    #[error("grant {grant} is {state}")]
    GrantEnded { grant: String, state: State },
    #[error("grant {grant} is scheduled: its window opens at {opens}")]
    NotOpenYet { grant: String, opens: String },
    #[error("`{user}` is no longer entitled to `{contract}` in the policies")]
    NotEntitled { user: String, contract: String },
    #[error("unknown target `{0}`: not in hosts.yaml")]
    UnknownTarget(String),
    #[error("contract `{contract}` of grant {grant} does not cover target `{target}`")]
    NotCovered {
        contract: String,
        grant: String,
        target: String,
    },
    #[error(
        "a plain key ({0}) is not accepted: sign in with a ramp-ca certificate (ramp-ca sign)"
    )]
    PlainKey(String),
    #[error("certificate expired: the newest certificate for key {key} (serial {serial}) was valid until {until}")]
    KeyExpired {
        key: String,
        serial: u64,
        until: String,
    },
    #[error("certificate not yet valid: serial {serial} for key {key}")]
    KeyNotYetValid { key: String, serial: u64 },
    #[error("`{user}` already has {max} connections through the bastion; close one")]
    Busy { user: String, max: usize },
    #[error("cannot check the certificate against the ledger: {0}")]
    Ledger(String),
}

/// A refusal's short, stable name (`ramp_logins_refused_total{reason=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Expired,
    NotYetValid,
    Revoked,
    UnknownCa,
    NotUserCert,
    BadSignature,
    BadCertificate,
    Principal,
    CriticalOption,
    SourceAddress,
    KeyId,
    UnknownSerial,
    NoGrant,
    NotEntitled,
    Target,
    PlainKey,
    LoginName,
    Busy,
    Error,
}

impl Vocabulary for Label {
    /// Every label, in the order `/metrics` lists them.
    const ALL: &'static [Label] = &[
        Label::Expired,
        Label::NotYetValid,
        Label::Revoked,
        Label::UnknownCa,
        Label::NotUserCert,
        Label::BadSignature,
        Label::BadCertificate,
        Label::Principal,
        Label::CriticalOption,
        Label::SourceAddress,
        Label::KeyId,
        Label::UnknownSerial,
        Label::NoGrant,
        Label::NotEntitled,
        Label::Target,
        Label::PlainKey,
        Label::LoginName,
        Label::Busy,
        Label::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Label::Expired => "expired",
            Label::NotYetValid => "not-yet-valid",
            Label::Revoked => "revoked",
            Label::UnknownCa => "unknown-ca",
            Label::NotUserCert => "not-user-cert",
            Label::BadSignature => "bad-signature",
            Label::BadCertificate => "bad-certificate",
            Label::Principal => "principal",
            Label::CriticalOption => "critical-option",
            Label::SourceAddress => "source-address",
            Label::KeyId => "key-id",
            Label::UnknownSerial => "unknown-serial",
            Label::NoGrant => "no-grant",
            Label::NotEntitled => "not-entitled",
            Label::Target => "target",
            Label::PlainKey => "plain-key",
            Label::LoginName => "login-name",
            Label::Busy => "busy",
            Label::Error => "error",
        }
    }
}

impl Refusal {
    /// Whether the refusal concerns only where the certificate asks to go, so that another
    /// certificate of the same key may cover it (see `Service::check_login`).
    pub fn a_sibling_may_cover(&self) -> bool {
        matches!(
            self,
            Refusal::WrongPrincipal(_)
                | Refusal::NotCovered { .. }
                | Refusal::GrantEnded { .. }
                | Refusal::NotOpenYet { .. }
                | Refusal::Revoked(_)
                | Refusal::SourceAddress { .. }
        )
    }

    pub fn label(&self) -> Label {
        match self {
            Refusal::NotUserCert => Label::NotUserCert,
            Refusal::UntrustedCa(_) => Label::UnknownCa,
            Refusal::BadSignature => Label::BadSignature,
            Refusal::NotYetValid(_)
            | Refusal::KeyNotYetValid { .. }
            | Refusal::NotOpenYet { .. } => Label::NotYetValid,
            Refusal::Expired(_) | Refusal::KeyExpired { .. } => Label::Expired,
            Refusal::NoPrincipals | Refusal::WrongPrincipal(_) => Label::Principal,
            Refusal::UnknownCriticalOption(_) => Label::CriticalOption,
            Refusal::Nested => Label::BadCertificate,
            Refusal::LoginName(_) => Label::LoginName,
            Refusal::BadSourceAddress(_) | Refusal::SourceAddress { .. } => Label::SourceAddress,
            Refusal::NotOurKeyId(_) => Label::KeyId,
            Refusal::UnknownSerial { .. } => Label::UnknownSerial,
            Refusal::Revoked(_) => Label::Revoked,
            Refusal::NoGrant(_) | Refusal::OtherGrant { .. } => Label::NoGrant,
            Refusal::GrantEnded { state, .. } => match state {
                State::Expired => Label::Expired,
                State::Revoked => Label::Revoked,
                _ => Label::NoGrant,
            },
            Refusal::NotEntitled { .. } => Label::NotEntitled,
            Refusal::UnknownTarget(_) | Refusal::NotCovered { .. } => Label::Target,
            Refusal::PlainKey(_) => Label::PlainKey,
            Refusal::Busy { .. } => Label::Busy,
            Refusal::Ledger(_) => Label::Error,
        }
    }
}

/// `PRINCIPAL@TARGET` or `TARGET`. The target is after the last `@` (host names have none).
pub fn parse_login_name(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('@') {
        Some((principal, target)) => (Some(principal), target),
        None => (None, name),
    }
}

/// What a certificate offered at login claims, once it passed every check that needs no
/// ledger: the checks OpenSSH makes, the login name, the source address, the key id.
#[derive(Debug, Clone)]
pub struct Presented {
    pub key_id: KeyId,
    pub serial: u64,
    /// The account on the target.
    pub principal: String,
    /// The target's name as asked for.
    pub target: String,
}

/// The checks of a certificate offered as `login_name` from `client` that need no ledger,
/// in order; the first failure is the refusal.
pub fn presented(
    user_ca: &Fingerprint,
    cert: &Certificate,
    login_name: &str,
    client: IpAddr,
    now: DateTime<Utc>,
) -> Result<Presented, Refusal> {
    if login_name.chars().any(crate::shown::is_control) {
        return Err(Refusal::LoginName(login_name.to_string()));
    }
    let (asked, target) = parse_login_name(login_name);
    let principal = match asked {
        Some(p) => p.to_string(),
        None => cert
            .valid_principals()
            .first()
            .cloned()
            .ok_or(Refusal::NoPrincipals)?,
    };
    cert::verify_user_cert(
        cert,
        std::slice::from_ref(user_ca),
        &principal,
        now.timestamp().max(0) as u64,
    )?;
    cert::check_source(cert, client)?;
    let key_id =
        KeyId::parse(cert.key_id()).ok_or_else(|| Refusal::NotOurKeyId(cert.key_id().into()))?;
    Ok(Presented {
        key_id,
        serial: cert.serial(),
        principal,
        target: target.to_string(),
    })
}

/// An accepted login: the person, their grant and where they go.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub grant: Grant,
    pub serial: u64,
    pub key_id: String,
    /// The account on the target.
    pub principal: String,
    pub target: Host,
    /// Unix seconds; the session ends then.
    pub valid_after: u64,
    pub valid_before: u64,
    /// What the certificate permits, read back from its extensions and critical options.
    pub options: CertOptions,
    pub client: String,
}

/// The checks after the ledger named the certificate's grant: the grant is the key id's and
/// active, its holder still entitled, the target known and covered by the contract.
pub fn granted(
    p: &Policies,
    cert: &Certificate,
    client: IpAddr,
    presented: Presented,
    grant: Grant,
    now: DateTime<Utc>,
) -> Result<Login, Refusal> {
    let key_id = &presented.key_id;
    if !key_id.names(&grant) {
        return Err(Refusal::OtherGrant {
            key_id: key_id.to_string(),
            grant: key_id.grant.clone(),
        });
    }
    still_valid(&grant, now)?;
    still_entitled(p, &grant.user, &grant.contract)?;
    let target = p
        .hosts
        .get(&presented.target)
        .ok_or_else(|| Refusal::UnknownTarget(presented.target.clone()))?;
    let covered = p
        .contracts
        .get(&grant.contract)
        .is_some_and(|c| c.targets.matches(target));
    if !covered {
        return Err(Refusal::NotCovered {
            contract: grant.contract.clone(),
            grant: grant.id.clone(),
            target: presented.target,
        });
    }
    Ok(Login {
        user: grant.user.clone(),
        grant,
        serial: presented.serial,
        key_id: key_id.to_string(),
        principal: presented.principal,
        target: target.clone(),
        valid_after: cert.valid_after(),
        valid_before: cert.valid_before(),
        options: cert::options_of(cert),
        client: client.to_string(),
    })
}

/// Whether a grant still lets its certificates in at `now`.
pub fn still_valid(grant: &Grant, now: DateTime<Utc>) -> Result<(), Refusal> {
    match grant.state_at(now) {
        State::Active => Ok(()),
        State::Scheduled => Err(Refusal::NotOpenYet {
            grant: grant.id.clone(),
            opens: grant
                .start
                .map(crate::domain::policy::stamp)
                .unwrap_or_default(),
        }),
        state => Err(Refusal::GrantEnded {
            grant: grant.id.clone(),
            state,
        }),
    }
}

/// Whether the person is still in people.yaml with a role that may request the contract:
/// removing someone (and reloading) ends their access, certificates or not.
pub fn still_entitled(p: &Policies, user: &str, contract: &str) -> Result<(), Refusal> {
    let roles = p.roles_of(user);
    let entitled = p
        .contracts
        .get(contract)
        .is_some_and(|c| roles.iter().any(|r| c.requesters.contains(r)));
    if entitled {
        Ok(())
    } else {
        Err(Refusal::NotEntitled {
            user: user.to_string(),
            contract: contract.to_string(),
        })
    }
}

impl Login {
    /// The metadata a new recorded session `id` through this login starts with at `now`.
    pub fn session_meta(
        &self,
        id: String,
        kind: &str,
        command: Option<String>,
        pty: Option<(String, u32, u32)>,
        now: DateTime<Utc>,
    ) -> SessionMeta {
        let (term, (cols, rows)) = match pty {
            Some((t, c, r)) => (Some(t), terminal_size(c, r)),
            None => (None, (80, 24)),
        };
        SessionMeta {
            id,
            user: self.user.clone(),
            grant: self.grant.id.clone(),
            serial: self.serial,
            key_id: self.key_id.clone(),
            principal: self.principal.clone(),
            target: self.target.name.clone(),
            client: self.client.clone(),
            kind: kind.to_string(),
            command,
            term,
            cols,
            rows,
            start: now,
            ..SessionMeta::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names() {
        let check = |name: &str, want: (Option<&str>, &str)| {
            assert_eq!(parse_login_name(name), want, "{name}")
        };
        check("readonly@db-1", (Some("readonly"), "db-1"));
        check("db-1", (None, "db-1"));
        check("a@b@db-1", (Some("a@b"), "db-1"));
        check("@db-1", (Some(""), "db-1"));
        check("", (None, ""));
    }

    #[test]
    fn every_label_is_listed_once() {
        let mut seen: Vec<&str> = Label::ALL.iter().map(|l| l.label()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Label::ALL.len());
        let ended = |state| Refusal::GrantEnded {
            grant: "g".into(),
            state,
        };
        assert_eq!(ended(State::Expired).label(), Label::Expired);
        assert_eq!(ended(State::Revoked).label(), Label::Revoked);
        assert_eq!(ended(State::Denied).label(), Label::NoGrant);
        assert_eq!(ended(State::Denied).to_string(), "grant g is denied");
    }
}
