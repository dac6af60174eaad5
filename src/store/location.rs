//! Where the ledger is kept: `serve --store` read and shown.

use crate::pgstore::PoolSettings;

/// Where the ledger is kept (`serve --store`).
#[derive(Debug, Clone)]
pub enum Location {
    /// sled in `DIR/data`.
    Embedded,
    /// A PostgreSQL database (a libpq URL), with the pool's bounds.
    Postgres { url: String, pool: PoolSettings },
}

impl Location {
    /// What `--store` (or `store:`, or `RAMP_STORE`) says: nothing (or `sled`) for the
    /// embedded ledger, a `postgres://` (or `postgresql://`) URL for PostgreSQL, checked
    /// here so a bad one stops `serve` before anything starts.
    pub fn parse(store: Option<&str>, pool: PoolSettings) -> std::result::Result<Location, String> {
        match store.map(str::trim) {
            None | Some("") | Some("sled") => Ok(Location::Embedded),
            Some(url) => {
                crate::pgstore::StoreUrl::parse(url).map_err(|e| e.to_string())?;
                Ok(Location::Postgres {
                    url: url.to_string(),
                    pool,
                })
            }
        }
    }

    /// What to log: the engine, and for PostgreSQL `HOST:PORT/DB` (never a password).
    pub fn shown(&self) -> String {
        match self {
            Location::Embedded => "sled".into(),
            Location::Postgres { url, .. } => crate::pgstore::StoreUrl::parse(url)
                .map_or_else(|_| "postgres".into(), |u| format!("postgres {}", u.target)),
        }
    }
}
