//! The library's top-level error: one variant per layer, each message naming what is wrong.

use std::path::PathBuf;

/// Anything that can stop a command or the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid policies:\n{0}")]
    Policy(#[from] crate::domain::policy::Problems),
    #[error(transparent)]
    Key(#[from] crate::install::keys::KeyError),
    #[error(transparent)]
    Cert(#[from] crate::domain::cert::CertError),
    #[error(transparent)]
    PgStore(#[from] crate::pgstore::PgError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Options that do not go together (exit 2, like a flag clap refuses).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
