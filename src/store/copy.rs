//! `ramp-ca store copy`: an embedded installation (sled under `DIR/data`) moved into an
//! empty PostgreSQL ledger, in one transaction. The source is read a page at a time on a
//! thread of its own and streamed to the target, which writes each record's exact stored
//! text (so the audit chain's records are byte for byte what sled held), moves the chain's
//! head to the source's, advances `cert_serial` past every serial handed out, and commits
//! only once everything is in: a failure anywhere leaves the target as it was (empty).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{embedded::SledLedger, Checkpoints, Feeds, Result, StoreError};
use crate::domain::audit::{AuditRecord, Head};
use crate::domain::cert::CertRecord;
use crate::domain::grant::{Grant, Revocation};
use crate::domain::session::SessionMeta;

/// Records read from the source per page (and written to the target per statement).
pub const PAGE: usize = 2000;

/// One page of records on their way to the target: each parsed (for the target's columns)
/// with its exact stored text (for its record column).
#[derive(Debug)]
pub enum Rows {
    Grants(Vec<(Grant, String)>),
    Certs(Vec<(CertRecord, String)>),
    /// Revoked serials, each with what its revocation named, as stored.
    Revoked(Vec<(u64, String)>),
    /// Revocations in the order they were made.
    Revocations(Vec<(Revocation, String)>),
    Audit(Vec<(AuditRecord, String)>),
    /// Request nonces with when they were seen (unix seconds).
    Nonces(Vec<(String, i64)>),
    Sessions(Vec<(SessionMeta, String)>),
    /// Signed checkpoints: the record each vouches for, and its text.
    Checkpoints(Vec<(u64, String)>),
    /// The last page: the chain's head, and the last serial handed out.
    End {
        head: Head,
        serial: u64,
    },
}

/// What a copy wrote, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub grants: u64,
    pub certs: u64,
    pub revoked: u64,
    pub revocations: u64,
    pub audit: u64,
    pub nonces: u64,
    pub sessions: u64,
    pub checkpoints: u64,
    /// The chain's head as copied (the target's `audit_head`).
    pub head: Head,
    /// The last serial handed out; the target's next is above it.
    pub serial: u64,
    /// The copied chain walked in PostgreSQL once committed: `None` when intact, else the
    /// first bad record (the source's chain was broken there too: the copy is exact).
    pub chain: Option<crate::domain::audit::BadRecord>,
}

impl Default for Copied {
    fn default() -> Copied {
        Copied {
            grants: 0,
            certs: 0,
            revoked: 0,
            revocations: 0,
            audit: 0,
            nonces: 0,
            sessions: 0,
            checkpoints: 0,
            head: Head::genesis(),
            serial: 0,
            chain: None,
        }
    }
}

impl Copied {
    /// Counts a page as written.
    pub fn count(&mut self, rows: &Rows) {
        let n = |v: usize| v as u64;
        match rows {
            Rows::Grants(v) => self.grants += n(v.len()),
            Rows::Certs(v) => self.certs += n(v.len()),
            Rows::Revoked(v) => self.revoked += n(v.len()),
            Rows::Revocations(v) => self.revocations += n(v.len()),
            Rows::Audit(v) => self.audit += n(v.len()),
            Rows::Nonces(v) => self.nonces += n(v.len()),
            Rows::Sessions(v) => self.sessions += n(v.len()),
            Rows::Checkpoints(v) => self.checkpoints += n(v.len()),
            Rows::End { head, serial } => {
                self.head = head.clone();
                self.serial = *serial;
            }
        }
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "grants        {}", self.grants)?;
        writeln!(f, "certificates  {}", self.certs)?;
        writeln!(f, "revoked       {} serials", self.revoked)?;
        writeln!(f, "revocations   {}", self.revocations)?;
        writeln!(f, "audit records {}", self.audit)?;
        writeln!(f, "nonces        {}", self.nonces)?;
        writeln!(f, "sessions      {}", self.sessions)?;
        writeln!(f, "checkpoints   {}", self.checkpoints)?;
        writeln!(
            f,
            "audit head    {} {}",
            self.head.seq,
            self.head.hash.get(..16).unwrap_or(&self.head.hash)
        )?;
        writeln!(f, "last serial   {} (the next is above it)", self.serial)?;
        match &self.chain {
            None => write!(
                f,
                "audit chain   intact in PostgreSQL ({} records)",
                self.audit
            ),
            Some(bad) => write!(
                f,
                "audit chain   BROKEN at record {} in the source and so in the copy: {}",
                bad.seq, bad.reason
            ),
        }
    }
}

/// Where `store copy` reads from: an embedded installation.
#[derive(Debug, Clone)]
pub struct Source {
    /// sled's directory (`DIR/data`).
    pub data: PathBuf,
}

impl Source {
    /// What `--from` says: `sled` (or nothing) for `DIR/data`; `sled:///PATH` or a plain
    /// path for an installation directory (holding `data/`) or its `data/` itself.
    pub fn parse(from: Option<&str>, dir: &Path) -> std::result::Result<Source, String> {
        let from = from.map(str::trim).unwrap_or("sled");
        let path = match from {
            "" | "sled" => return Ok(Source { data: dir.join("data") }),
            f if f.starts_with("sled://") => PathBuf::from(&f["sled://".len()..]),
            f if f.contains("://") => {
                return Err(format!(
                    "--from `{}`: store copy reads an embedded installation: `sled` (DIR/data), sled:///PATH or a directory; copying from {} is not supported",
                    crate::pgstore::url::redact(f),
                    f.split("://").next().unwrap_or(f)
                ))
            }
            f => PathBuf::from(f),
        };
        if path.as_os_str().is_empty() || !path.is_absolute() && from.starts_with("sled://") {
            return Err(format!(
                "--from `{from}`: a sled URL names an absolute path (sled:///srv/ramp/data)"
            ));
        }
        let data = if path.join("data").join("conf").exists() {
            path.join("data")
        } else {
            path
        };
        if !data.join("conf").exists() || !data.join("db").exists() {
            return Err(format!(
                "--from {}: no sled ledger there (neither it nor its data/ holds sled's conf and db files)",
                data.display()
            ));
        }
        Ok(Source { data })
    }
}

/// Copies the embedded ledger at `from` into the empty PostgreSQL ledger at `to` (migrated
/// first). Refuses a target that holds anything; on any failure nothing is committed.
pub async fn copy(from: &Source, to: &str) -> Result<Copied> {
    let data = from.data.clone();
    let sled =
        tokio::task::spawn_blocking(move || SledLedger::open(&data, Arc::new(Feeds::default())))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
    let checkpoints = Checkpoints::open(&from.data.join("checkpoints"))?;
    let (send, pages) = mpsc::channel(2);
    let reader = tokio::task::spawn_blocking(move || sled.export(&checkpoints, &send));
    let written = crate::pgstore::import(to, pages).await;
    // The reader stops at its next page once the target gave up (its channel closes).
    let read = reader.await.map_err(|e| StoreError::Task(e.to_string()))?;
    match (written, read) {
        (Ok(mut copied), _) => {
            // What `audit verify` on the copy will say, walked where it now is.
            let settings = crate::pgstore::PoolSettings {
                max_connections: 2,
                ..Default::default()
            };
            let copy = crate::pgstore::PgLedger::open(to, settings, Arc::default()).await?;
            copied.chain = copy.verify_audit().await?.first_bad;
            Ok(copied)
        }
        // The source's error explains why the stream ended early.
        (Err(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
    }
}
