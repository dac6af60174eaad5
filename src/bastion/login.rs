//! Who may log in where: the login name, and every check of the user's certificate that
//! the bastion makes itself (russh checks only the signature and the window).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::{Certificate, Fingerprint};

use crate::ca::{self, Refusal};
use crate::grant::{Grant, State};
use crate::policy::{parse_cidr, CertOptions, Host, Policies};
use crate::recording::{SessionMeta, SessionState};
use crate::store::Store;

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

impl Login {
    /// The metadata a new recorded session through this login starts with.
    pub fn session_meta(
        &self,
        kind: &str,
        command: Option<String>,
        pty: Option<(String, u32, u32)>,
    ) -> SessionMeta {
        let (term, (cols, rows)) = match pty {
            Some((t, c, r)) => (Some(t), crate::recording::terminal_size(c, r)),
            None => (None, (80, 24)),
        };
        SessionMeta {
            id: crate::service::new_id(),
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
            start: Utc::now(),
            end: None,
            state: SessionState::Live,
            exit_status: None,
            end_reason: None,
            bytes_in: 0,
            bytes_out: 0,
            files: Vec::new(),
            env: Vec::new(),
            recording: None,
            sealed_in: None,
        }
    }
}

/// Why a login was refused: a sentence for the log and the audit chain, and a short label
/// from [`crate::metrics::LOGIN_REFUSALS`] for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub label: &'static str,
    pub why: String,
}

impl Refused {
    fn new(label: &'static str, why: impl Into<String>) -> Refused {
        Refused {
            label,
            why: why.into(),
        }
    }
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Refused {
        Refused::new(r.label(), r.to_string())
    }
}

/// `PRINCIPAL@TARGET` or `TARGET`. The target is after the last `@` (host names have none).
pub fn parse_login_name(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('@') {
        Some((principal, target)) => (Some(principal), target),
        None => (None, name),
    }
}

/// What a certificate permits, as the bastion enforces it and passes it on to the hop.
pub fn options_of(cert: &Certificate) -> CertOptions {
    let ext = |name: &str| cert.extensions().contains_key(name);
    CertOptions {
        pty: ext("permit-pty"),
        port_forwarding: ext("permit-port-forwarding"),
        agent_forwarding: ext("permit-agent-forwarding"),
        x11_forwarding: ext("permit-X11-forwarding"),
        user_rc: ext("permit-user-rc"),
        source_address: cert
            .critical_options()
            .get("source-address")
            .map(|list| {
                list.split(',')
                    .filter_map(|c| parse_cidr(c.trim()))
                    .collect()
            })
            .unwrap_or_default(),
        force_command: cert.critical_options().get("force-command").cloned(),
    }
}

/// Every check, in order; the first failure is the refusal, worded for the log and audit.
pub fn check(
    policies: &Policies,
    store: &Store,
    user_ca: &Fingerprint,
    cert: &Certificate,
    login_name: &str,
    client: IpAddr,
    now: DateTime<Utc>,
) -> Result<Login, Refused> {
    if login_name.chars().any(crate::shown::is_control) {
        return Err(Refused::new(
            "login-name",
            format!(
                "login name `{}` holds control characters: write PRINCIPAL@TARGET",
                crate::shown::shown(login_name)
            ),
        ));
    }
    let (asked, target_name) = parse_login_name(login_name);
    let principal = match asked {
        Some(p) => p.to_string(),
        None => cert
            .valid_principals()
            .first()
            .cloned()
            .ok_or(Refusal::NoPrincipals)?,
    };
    ca::verify_user_cert(
        cert,
        std::slice::from_ref(user_ca),
        &principal,
        now.timestamp().max(0) as u64,
    )?;
    if let Some(list) = cert.critical_options().get("source-address") {
        let allowed = list
            .split(',')
            .map(|c| {
                parse_cidr(c.trim()).ok_or_else(|| {
                    Refused::new(
                        "source-address",
                        format!("unparseable source-address `{c}`"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !allowed.iter().any(|net| net.contains(&client)) {
            return Err(Refused::new(
                "source-address",
                format!(
                    "source address {client} is not in the certificate's source-address {list}"
                ),
            ));
        }
    }
    let key_id = cert.key_id();
    let parts: Vec<&str> = key_id.split(':').collect();
    let not_ours = || {
        Refused::new(
            "key-id",
            format!("key id `{key_id}` is not a ramp-ca key id"),
        )
    };
    let [_, user, contract, step, grant_id] = parts[..] else {
        return Err(not_ours());
    };
    if parts[0] != "ramp" {
        return Err(not_ours());
    }
    let store_err = |e: crate::store::StoreError| {
        Refused::new("error", format!("cannot check revocation: {e}"))
    };
    let serial = cert.serial();
    match store.cert(serial).map_err(store_err)? {
        Some(r) if r.key_id == key_id => {}
        _ => {
            return Err(Refused::new(
                "unknown-serial",
                format!("serial {serial} with key id `{key_id}` is not in the ledger"),
            ))
        }
    }
    if store.is_revoked(serial).map_err(store_err)? {
        return Err(Refused::new(
            "revoked",
            format!("certificate serial {serial} is revoked"),
        ));
    }
    let grant = store.grant(grant_id).map_err(store_err)?.ok_or_else(|| {
        Refused::new("no-grant", format!("grant {grant_id} is not in the ledger"))
    })?;
    if grant.user != user || grant.contract != contract || grant.step != step {
        return Err(Refused::new(
            "no-grant",
            format!("key id `{key_id}` does not match grant {grant_id}"),
        ));
    }
    match grant.state(now) {
        State::Active => {}
        other => {
            let label = match other {
                State::Expired => "expired",
                State::Revoked => "revoked",
                _ => "no-grant",
            };
            return Err(Refused::new(label, format!("grant {grant_id} is {other}")));
        }
    }
    still_entitled(policies, user, contract).map_err(|why| Refused::new("not-entitled", why))?;
    let target = policies.hosts.get(target_name).ok_or_else(|| {
        Refused::new(
            "target",
            format!("unknown target `{target_name}`: not in hosts.yaml"),
        )
    })?;
    let covered = policies
        .contracts
        .get(contract)
        .is_some_and(|c| c.targets.matches(target));
    if !covered {
        return Err(Refused::new(
            "target",
            format!(
                "contract `{contract}` of grant {grant_id} does not cover target `{target_name}`"
            ),
        ));
    }
    Ok(Login {
        user: user.to_string(),
        grant,
        serial,
        key_id: key_id.to_string(),
        principal,
        target: target.clone(),
        valid_after: cert.valid_after(),
        valid_before: cert.valid_before(),
        options: options_of(cert),
        client: client.to_string(),
    })
}

/// Whether the person is still in people.yaml with a role that may request the contract:
/// removing someone (and reloading) ends their access, certificates or not.
pub fn still_entitled(policies: &Policies, user: &str, contract: &str) -> Result<(), String> {
    let entitled = policies.users.get(user).is_some_and(|u| {
        policies
            .contracts
            .get(contract)
            .is_some_and(|c| u.roles.iter().any(|r| c.requesters.contains(r)))
    });
    if entitled {
        Ok(())
    } else {
        Err(format!(
            "`{user}` is no longer entitled to `{contract}` in the policies"
        ))
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
}
