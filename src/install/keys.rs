//! The key files under `keys/`: created once, never overwritten, refused when readable by others.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};

/// Signs engineers' certificates; trusted by the bastion only.
pub const USER_CA: &str = "user-ca";
/// Signs the bastion's own short-lived certificates for the hop to a target.
pub const NODE_CA: &str = "node-ca";
/// Signs host certificates (the bastion's and targets').
pub const HOST_CA: &str = "host-ca";
/// The bastion's host key; its certificate is `bastion_host_ed25519-cert.pub`.
pub const BASTION_HOST: &str = "bastion_host_ed25519";
/// Signs checkpoints of the audit chain (see [`crate::checkpoint`]).
pub const AUDIT_SIGNER: &str = "audit-signer";

/// Errors reading or writing key files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: permissions {mode:04o} are too open; a private key must not be readable by group or others (run: chmod 600 {path})")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: not an OpenSSH {what} ({reason})")]
    Parse {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: the key is passphrase-protected; use ssh-agent for it")]
    Encrypted { path: PathBuf },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a private key, refusing it (as OpenSSH does) when group or others may read it.
pub fn read_private(path: &Path) -> Result<PrivateKey, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read(path).map_err(io_err(path))?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| KeyError::Parse {
        path: path.to_path_buf(),
        what: "private key",
        reason: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Reads a public key file (`ssh-ed25519 AAAA... comment`).
pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    parse_public(&text).map_err(|reason| KeyError::Parse {
        path: path.to_path_buf(),
        what: "public key",
        reason,
    })
}

/// Parses the first non-comment line of a public key file.
pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| "the file is empty".to_string())?;
    PublicKey::from_openssh(line)
        .map_err(|e| format!("{e}; expected a line like `ssh-ed25519 AAAA... comment`"))
}

/// Reads a certificate file (`<key>-cert.pub`).
pub fn read_certificate(path: &Path) -> Result<Certificate, KeyError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Certificate::from_openssh(text.trim()).map_err(|e| KeyError::Parse {
        path: path.to_path_buf(),
        what: "certificate",
        reason: e.to_string(),
    })
}

/// Creates an Ed25519 key pair at `path` (0600) and `path.pub` unless the key exists.
/// Returns whether it created one.
pub fn ensure_key(path: &Path, comment: &str) -> Result<bool, KeyError> {
    if path.exists() {
        return Ok(false);
    }
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    key.set_comment(comment);
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    // create_new: two processes initialising at once must not overwrite each other's key.
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    file.write_all(pem.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    write_public(&pub_path(path), key.public_key())?;
    Ok(true)
}

/// Writes a public key or certificate line (0644).
pub fn write_public(path: &Path, key: &PublicKey) -> Result<(), KeyError> {
    let line = key
        .to_openssh()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    write_line(path, &line)
}

/// Writes one line of text, atomically (temp file then rename).
pub fn write_line(path: &Path, line: &str) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{line}\n")).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `key` -> `key.pub`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// `key` -> `key-cert.pub`, where OpenSSH looks for a key's certificate.
pub fn cert_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-cert.pub");
    PathBuf::from(s)
}

/// The private keys a running service needs.
pub struct Keys {
    pub user_ca: PrivateKey,
    pub node_ca: PrivateKey,
    pub host_ca: PrivateKey,
    pub bastion_host: PrivateKey,
    /// Signs checkpoints of the audit chain; nothing else.
    pub audit_signer: PrivateKey,
}

impl Keys {
    /// Loads every key from `dir`, with the same permission checks as OpenSSH.
    pub fn load(dir: &Path) -> Result<Keys, KeyError> {
        Ok(Keys {
            user_ca: read_private(&dir.join(USER_CA))?,
            node_ca: read_private(&dir.join(NODE_CA))?,
            host_ca: read_private(&dir.join(HOST_CA))?,
            bastion_host: read_private(&dir.join(BASTION_HOST))?,
            audit_signer: read_private(&dir.join(AUDIT_SIGNER))?,
        })
    }

    /// Creates whichever keys are missing in `dir` (mode 0700); never overwrites one.
    pub fn ensure(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let mut created = Vec::new();
        for name in [USER_CA, NODE_CA, HOST_CA, BASTION_HOST, AUDIT_SIGNER] {
            let path = dir.join(name);
            if ensure_key(&path, &format!("ramp-ca {name}"))? {
                created.push(path);
            }
        }
        Ok(created)
    }
}
