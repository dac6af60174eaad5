//! Versioned schema migrations. `schema_migrations` records each one applied (version, name,
//! SHA-256 of its SQL, when, by which ramp-ca). Each migration runs in its own transaction
//! holding a transaction-scoped advisory lock ([`MIGRATION_LOCK`]), so nodes starting at once
//! apply it once: the others wait for the lock, then find it done. A database whose schema is
//! newer than this binary's, or that applied a migration under a version this binary knows
//! differently, is refused before anything changes.

use std::time::Duration;

use deadpool_postgres::Object;
use sha2::{Digest, Sha256};

use super::{Pg, PgError, Result};

/// One migration: its version (1, 2, ...), name (`NNNN_what`, its file under `schema/`)
/// and SQL.
#[derive(Debug)]
pub struct Migration {
    /// Its place in the order; `schema_migrations.version`.
    pub version: i32,
    /// `NNNN_what`, as `store migrate` reports it.
    pub name: &'static str,
    /// Run as one batch inside the migration's transaction.
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the SQL: a changed migration is noticed, not silently skipped.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration this binary knows, in order. Append only: a released migration is never
/// edited (its checksum is in every database it ran on); changes are new migrations.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_ledger",
        sql: include_str!("schema/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "0002_open_grants",
        sql: include_str!("schema/0002_open_grants.sql"),
    },
    Migration {
        version: 3,
        name: "0003_nodes",
        sql: include_str!("schema/0003_nodes.sql"),
    },
];

/// The schema version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The advisory lock key every migration transaction takes first (`rampmigr` in ASCII).
pub const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"rampmigr");

/// The statement timeout inside a migration transaction: longer than a query's, as DDL
/// may wait for serving nodes' locks, and a node may wait this long for another's migration.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

const MIGRATIONS_TABLE: &str = "CREATE TABLE schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
)";

/// What a run did: the version the schema is at, and the migrations it applied to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version the database is at now.
    pub version: i32,
    /// The migrations this run applied, in order (none when it was current).
    pub applied: Vec<&'static str>,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied.is_empty() {
            write!(f, "schema already at version {}", self.version)
        } else {
            write!(
                f,
                "schema at version {} (applied {})",
                self.version,
                self.applied.join(", ")
            )
        }
    }
}

/// A migration as `schema_migrations` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    version: i32,
    name: String,
    sha256: String,
}

/// Brings the schema to [`latest`], one migration a transaction; refuses a database this
/// binary does not know how to serve.
pub async fn migrate(pg: &Pg) -> Result<Migrated> {
    let mut client = pg.client().await?;
    let mut applied = Vec::new();
    // The server's statement timeout bounds each statement; this bounds a lost network too.
    let bound = MIGRATION_TIMEOUT + Duration::from_secs(5);
    loop {
        let step = tokio::time::timeout(bound, step(pg, &mut client))
            .await
            .map_err(|_| PgError::Query {
                target: pg.target().to_string(),
                message: format!(
                    "a migration step did not finish within {} s",
                    bound.as_secs()
                ),
            })??;
        match step {
            Some(name) => applied.push(name),
            None => {
                return Ok(Migrated {
                    version: latest(),
                    applied,
                })
            }
        }
    }
}

/// Under the lock: checks what was applied, then applies the next migration (its name) or,
/// with none left, nothing (`None`).
async fn step(pg: &Pg, client: &mut Object) -> Result<Option<&'static str>> {
    let query = |e: tokio_postgres::Error| pg.query_error(&e);
    let tx = client.transaction().await.map_err(query)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        MIGRATION_TIMEOUT.as_millis()
    ))
    .await
    .map_err(query)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => PgError::Query {
                target: pg.target().to_string(),
                message: format!(
                    "another ramp-ca held the migration lock for more than {} s; nothing was changed",
                    MIGRATION_TIMEOUT.as_secs()
                ),
            },
            _ => query(e),
        })?;
    // Created only when missing: CREATE ... IF NOT EXISTS would still need the right to
    // create, which a node serving an upgraded database need not have.
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(query)?
        .get(0);
    if !exists {
        tx.batch_execute(MIGRATIONS_TABLE).await.map_err(query)?;
    }
    let done: Vec<Applied> = tx
        .query(
            "SELECT version, name, sha256 FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(query)?
        .iter()
        .map(|row| Applied {
            version: row.get(0),
            name: row.get(1),
            sha256: row.get(2),
        })
        .collect();
    let Some(next) = pending(pg.target(), &done)? else {
        tx.commit().await.map_err(query)?;
        return Ok(None);
    };
    let failed = |e: tokio_postgres::Error| PgError::Migration {
        target: pg.target().to_string(),
        name: next.name,
        why: match pg.query_error(&e) {
            PgError::Query { message, .. } => message,
            other => other.to_string(),
        },
    };
    tx.batch_execute(next.sql).await.map_err(failed)?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name, sha256, applied_by) VALUES ($1, $2, $3, $4)",
        &[
            &next.version,
            &next.name,
            &next.sha256(),
            &concat!("ramp-ca ", env!("CARGO_PKG_VERSION")),
        ],
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(Some(next.name))
}

/// The next migration to apply, if any, after checking that everything applied is a
/// migration this binary knows, as it knows it.
fn pending(target: &str, done: &[Applied]) -> Result<Option<&'static Migration>> {
    let newest = done.iter().map(|a| a.version).max().unwrap_or(0);
    if newest > latest() {
        return Err(PgError::SchemaTooNew {
            target: target.to_string(),
            database: newest,
            binary: latest(),
        });
    }
    let short = |sha: &str| sha.get(..12).unwrap_or(sha).to_string();
    for a in done {
        let ours = MIGRATIONS.iter().find(|m| m.version == a.version);
        if ours.is_some_and(|m| m.name == a.name && m.sha256() == a.sha256) {
            continue;
        }
        return Err(PgError::MigrationMismatch {
            target: target.to_string(),
            version: a.version,
            applied: format!("{} (sha256 {})", a.name, short(&a.sha256)),
            ours: ours.map_or("unknown".into(), |m| {
                format!("{} (sha256 {})", m.name, short(&m.sha256()))
            }),
        });
    }
    Ok(MIGRATIONS
        .iter()
        .find(|m| !done.iter().any(|a| a.version == m.version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{} does not start with its version",
                m.name
            );
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }

    /// `done` as (version, name, sha256 or "ours"); the expected next migration's name, or
    /// a piece of the error.
    fn check(done: &[(i32, &str, &str)], expected: std::result::Result<Option<&str>, &str>) {
        let done: Vec<Applied> = done
            .iter()
            .map(|&(version, name, sha)| Applied {
                version,
                name: name.into(),
                sha256: match sha {
                    "ours" => MIGRATIONS[version as usize - 1].sha256(),
                    other => other.into(),
                },
            })
            .collect();
        match (pending("h:5432/db", &done), expected) {
            (Ok(next), Ok(name)) => assert_eq!(next.map(|m| m.name), name, "{done:?}"),
            (Err(e), Err(piece)) => {
                assert!(e.to_string().contains(piece), "`{e}` lacks `{piece}`")
            }
            (got, expected) => panic!("{done:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn what_was_applied_decides_what_runs_next() {
        check(&[], Ok(Some("0001_ledger")));
        check(&[(1, "0001_ledger", "ours")], Ok(Some("0002_open_grants")));
        let two = [(1, "0001_ledger", "ours"), (2, "0002_open_grants", "ours")];
        check(&two, Ok(Some("0003_nodes")));
        let current = [two[0], two[1], (3, "0003_nodes", "ours")];
        check(&current, Ok(None));
        check(
            &[current[0], current[1], current[2], (4, "0004_future", "ab")],
            Err("has schema version 4, newer than this ramp-ca knows (version 3)"),
        );
        check(
            &[(1, "0001_ledger", "0123456789abcdef")],
            Err("migration 1 applied as 0001_ledger (sha256 0123456789ab), but this ramp-ca's migration 1 is 0001_ledger (sha256 "),
        );
        check(&[(1, "0001_other", "ours")], Err("applied as 0001_other"));
    }

    #[test]
    fn a_run_says_what_it_did() {
        let run = |applied: Vec<&'static str>| {
            Migrated {
                version: 1,
                applied,
            }
            .to_string()
        };
        assert_eq!(run(vec![]), "schema already at version 1");
        assert_eq!(
            run(vec!["0001_ledger"]),
            "schema at version 1 (applied 0001_ledger)"
        );
    }
}
