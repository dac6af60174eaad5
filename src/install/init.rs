//! `ramp-ca init`: keys, example policies and (with `--demo` only) demo identities for an
//! installation.
//! Creates only what is missing; never overwrites a key or a policy file. Policies are written
//! into a new installation only (no `policies/` yet, or an empty one): a contract an admin
//! deleted from an existing set stays deleted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::install::keys::{self, Keys};
use crate::Error;

/// Example policies shipped in the repository's `policies/` and written by `init`.
const EXAMPLES: &[(&str, &str)] = &[
    ("hosts.yaml", include_str!("../../policies/hosts.yaml")),
    ("prod-db.yaml", include_str!("../../policies/prod-db.yaml")),
    (
        "prod-web.yaml",
        include_str!("../../policies/prod-web.yaml"),
    ),
];

/// Demo people, so the walkthrough runs without touching anyone's `~/.ssh`.
const DEMO_USERS: &[(&str, &str)] = &[
    ("alice", "[sre]"),
    ("bob", "[sre-lead, ramp-auditor]"),
    ("carol", "[sre-lead, ramp-admin]"),
];

/// Bastion host certificates last this long; `init` renews one that is about to expire.
pub const BASTION_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86400);

/// What `init` did.
#[derive(Debug, Default)]
pub struct Initialised {
    /// Every file it created.
    pub created: Vec<PathBuf>,
    /// The policies directory already held files, so no example was written into it.
    pub kept_policies: Option<PathBuf>,
    /// Who it registered in a new `people.yaml` (demo identities, the local operator).
    pub people: Vec<String>,
}

/// Creates whatever is missing under `dir`: keys always; the example policies only when
/// `policies/` is new or empty, with the demo identities (private keys under `demo/`) only
/// when `demo` is asked for. A production start registers nobody but the local operator's
/// own `~/.ssh/id_ed25519.pub`, when there is one.
pub fn init(dir: &Path, demo: bool) -> Result<Initialised, Error> {
    let mut created = Keys::ensure(&dir.join("keys"))?;
    let policies = dir.join("policies");
    if holds_files(&policies)? {
        return Ok(Initialised {
            created,
            kept_policies: Some(policies),
            people: Vec::new(),
        });
    }
    fs::create_dir_all(&policies).map_err(Error::io(&policies))?;
    for (name, text) in EXAMPLES {
        let path = policies.join(name);
        if write_new(&path, text)? {
            created.push(path);
        }
    }
    let people = policies.join("people.yaml");
    let (text, registered) = people_yaml(dir, demo, &mut created)?;
    if write_new(&people, &text)? {
        created.push(people);
    }
    Ok(Initialised {
        created,
        kept_policies: None,
        people: registered,
    })
}

/// Whether `dir` exists and holds anything (an admin's policy set, however small).
fn holds_files(dir: &Path) -> Result<bool, Error> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir)(e)),
    }
}

/// Writes a file unless it exists.
fn write_new(path: &Path, text: &str) -> Result<bool, Error> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut f) => {
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(Error::io(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path)(e)),
    }
}

/// `people.yaml` with the demo users (keys under `demo/`) when `demo`, and the local operator
/// if they have an `~/.ssh/id_ed25519.pub`; with the names it registered.
fn people_yaml(
    dir: &Path,
    demo: bool,
    created: &mut Vec<PathBuf>,
) -> Result<(String, Vec<String>), Error> {
    let mut users = String::new();
    let mut registered = Vec::new();
    let demo_users: &[(&str, &str)] = if demo { DEMO_USERS } else { &[] };
    for (name, roles) in demo_users {
        let key_dir = dir.join("demo").join(name);
        fs::create_dir_all(&key_dir).map_err(Error::io(&key_dir))?;
        fs::set_permissions(&key_dir, fs::Permissions::from_mode(0o700))
            .map_err(Error::io(&key_dir))?;
        let key = key_dir.join("id_ed25519");
        if keys::ensure_key(&key, &format!("{name}@ramp-demo"))? {
            created.push(key.clone());
        }
        let public = keys::read_public(&keys::pub_path(&key))?;
        let line = public
            .to_openssh()
            .map_err(crate::domain::cert::CertError::from)?;
        users.push_str(&format!(
            "  {name}:\n    keys: [\"{line}\"]\n    roles: {roles}\n"
        ));
        registered.push(format!("{name} (demo, {roles})"));
    }
    let operator = std::env::var("USER")
        .ok()
        .filter(|u| crate::domain::policy::valid_name(u));
    let home_key = std::env::var_os("HOME").map(|h| Path::new(&h).join(".ssh/id_ed25519.pub"));
    if let (Some(name), Some(path)) = (operator, home_key) {
        let already = demo_users.iter().any(|(n, _)| *n == name);
        if let (false, Ok(key)) = (already, keys::read_public(&path)) {
            let line = key
                .to_openssh()
                .map_err(crate::domain::cert::CertError::from)?;
            users.push_str(&format!(
                "  # You, from {}:\n  {name}:\n    keys: [\"{line}\"]\n    roles: [sre, ramp-admin]\n",
                path.display()
            ));
            registered.push(format!(
                "{name} (you, from {}; sre, ramp-admin)",
                path.display()
            ));
        }
    }
    let mut text = String::from(
        "# People who may sign requests: their registered keys and roles.\n\
         # Built-in roles: ramp-admin (revoke, KRL, host certificates), ramp-auditor (audit, recordings).\n\
         # Roles the contracts use; declared here they stay valid even while nobody holds them.\n\
         roles: [sre, sre-lead]\n",
    );
    if users.is_empty() {
        text.push_str(
            "# Add each person with their public key and roles, then `ramp-ca policy check`\n\
             # and reload the daemon (SIGHUP):\n\
             #   alice:\n\
             #     keys: [\"ssh-ed25519 AAAA... alice@laptop\"]\n\
             #     roles: [sre]\n\
             users: {}\n",
        );
    } else {
        text.push_str("users:\n");
        text.push_str(&users);
    }
    Ok((text, registered))
}

/// Names the bastion answers to, for its host certificate.
pub fn bastion_principals() -> Vec<String> {
    let mut names: Vec<String> = ["ramp-bastion", "localhost", "127.0.0.1", "::1"]
        .map(String::from)
        .into();
    if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.insert(0, h.to_string());
        }
    }
    names
}

/// Where the bastion's host certificate goes when it needs a new one: there is none, it is
/// for another key, or it expires within 30 days. The service signs it (its serial comes
/// from the ledger like every other certificate's).
pub fn bastion_cert_due(dir: &Path, keys: &Keys, now: DateTime<Utc>) -> Option<PathBuf> {
    let path = keys::cert_path(&dir.join("keys").join(keys::BASTION_HOST));
    let renew_after = (now + chrono::Duration::days(30)).timestamp().max(0) as u64;
    if let Ok(cert) = keys::read_certificate(&path) {
        let same_key = cert.public_key() == keys.bastion_host.public_key().key_data();
        if same_key && cert.valid_before() > renew_after {
            return None;
        }
    }
    Some(path)
}
