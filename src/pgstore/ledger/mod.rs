//! The ledger in PostgreSQL: the engine several nodes share (see [`crate::store::Ledger`]).
//! Records are the exact JSON text the embedded engine keeps (schema/0001_ledger.sql), with
//! the columns queries need beside them. What holds across nodes, and how:
//! - every change is one transaction; its commit is the durability point;
//! - the audit chain stays one linear chain: an append locks the single `audit_head` row
//!   (`FOR UPDATE`) and chains from it, until its transaction commits;
//! - serials come from the `cert_serial` sequence, never handed out twice;
//! - a nonce is an `INSERT ... ON CONFLICT DO NOTHING`: a request replayed to another node
//!   finds it there;
//! - grant changes (read, decide, write) hold a transaction-scoped advisory lock from their
//!   first read to their commit, which every node takes ([`GRANT_LOCK`]);
//! - nothing is answered from memory: open grants, held steps and the newest certificate of
//!   a key are indexed queries;
//! - grants written and revocations are announced to the other nodes with NOTIFY, inside the
//!   transaction (delivered once it commits; see [`super::listen`]).
//!
//! Every statement is bounded by the server's `statement_timeout` (set on every pooled
//! connection) and, on this side, a little longer, for a network that went silent.

mod import;
mod nodes;
mod read;
mod write;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use deadpool_postgres::Object;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{Pg, PgError, PoolSettings};
use crate::store::{Feeds, StoreError};

pub use self::import::import;
pub use self::nodes::Holder;
pub use self::write::PgTx;
pub(crate) use self::write::CHANNEL;

type Result<T> = std::result::Result<T, StoreError>;

/// The advisory lock every grant change holds until it commits (`rampgrnt` in ASCII).
pub const GRANT_LOCK: i64 = i64::from_be_bytes(*b"rampgrnt");

/// How far past the server's statement timeout this side waits for an answer.
const CLIENT_GRACE: Duration = Duration::from_secs(2);

/// The ledger in one PostgreSQL database.
pub struct PgLedger {
    /// The bounded pool every statement but the listener's goes through.
    pg: Pg,
    /// Where committed changes (and other nodes' news) are announced.
    feeds: Arc<Feeds>,
    /// Orders this node's audit appends from the lock on the chain's head to their
    /// announcement, so subscribers here see this node's records in sequence order.
    appends: tokio::sync::Mutex<()>,
    /// This process's name in notifications, so it skips its own.
    node: String,
    /// The task that listens to the other nodes; stopped with the ledger.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgLedger {
    /// Connects to the database at `url`, brings its schema up to this binary's version
    /// (refusing a newer one), and starts listening to the other nodes.
    pub async fn open(url: &str, settings: PoolSettings, feeds: Arc<Feeds>) -> Result<PgLedger> {
        let pg = Pg::open(url, settings)?;
        let migrated = super::migrate(&pg).await?;
        if !migrated.applied.is_empty() {
            tracing::info!(target = pg.target(), "{migrated}");
        }
        let node = hex::encode(rand::random::<[u8; 8]>());
        let listener = super::listen::spawn(&pg, node.clone(), feeds.clone());
        Ok(PgLedger {
            pg,
            feeds,
            appends: tokio::sync::Mutex::new(()),
            node,
            listener,
        })
    }

    /// `HOST:PORT/DB`, for messages.
    pub fn target(&self) -> &str {
        self.pg.target()
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Conn<'_>> {
        Conn::get(&self.pg).await
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        StoreError::Postgres(e)
    }
}

/// One connection from the pool, with the bounds every statement gets. A connection whose
/// statement failed, timed out, or whose transaction was not ended is closed rather than
/// handed back to the pool, so no one else finds it in a half-done state (the server rolls
/// back what a closed connection left open).
pub(crate) struct Conn<'p> {
    pg: &'p Pg,
    client: Option<Object>,
    /// True from each statement's start until it succeeds outside a transaction.
    unsettled: bool,
    /// A transaction is open.
    in_tx: bool,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.unsettled || self.in_tx {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
    }
}

impl<'p> Conn<'p> {
    pub(crate) async fn get(pg: &'p Pg) -> Result<Conn<'p>> {
        Ok(Conn {
            client: Some(pg.client().await?),
            pg,
            unsettled: false,
            in_tx: false,
        })
    }

    /// The rows of one statement (prepared once per connection).
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Conflict("the connection was closed".into()))?;
        self.unsettled = true;
        let rows = bounded(self.pg, async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await?;
        self.unsettled = false;
        Ok(rows)
    }

    /// How many rows one statement changed.
    pub(crate) async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Conflict("the connection was closed".into()))?;
        self.unsettled = true;
        let n = bounded(self.pg, async {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, params).await
        })
        .await?;
        self.unsettled = false;
        Ok(n)
    }

    /// Statements without parameters (BEGIN, COMMIT).
    async fn batch(&mut self, sql: &str) -> Result<()> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Conflict("the connection was closed".into()))?;
        self.unsettled = true;
        bounded(self.pg, client.batch_execute(sql)).await?;
        self.unsettled = false;
        Ok(())
    }

    /// Whether a statement failed (or never answered) since the last that succeeded.
    pub(crate) fn failed(&self) -> bool {
        self.unsettled
    }

    /// Opens a transaction (`BEGIN` and what follows it, like an isolation level).
    pub(crate) async fn begin(&mut self, how: &str) -> Result<()> {
        self.in_tx = true;
        self.batch(how).await
    }

    /// Commits the open transaction.
    pub(crate) async fn commit(&mut self) -> Result<()> {
        self.batch("COMMIT").await?;
        self.in_tx = false;
        Ok(())
    }

    /// Ends the open transaction, changing nothing.
    pub(crate) async fn rollback(&mut self) -> Result<()> {
        self.batch("ROLLBACK").await?;
        self.in_tx = false;
        Ok(())
    }
}

/// Runs one statement's future, bounded a little past the server's statement timeout.
async fn bounded<T>(
    pg: &Pg,
    run: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let bound = pg.settings.query_timeout + CLIENT_GRACE;
    match tokio::time::timeout(bound, run).await {
        Err(_) => Err(PgError::Query {
            target: pg.target().to_string(),
            message: format!("no answer within {bound:?}"),
        }
        .into()),
        Ok(Err(e)) => Err(pg.query_error(&e).into()),
        Ok(Ok(out)) => Ok(out),
    }
}

/// A record kept as JSON text, read back; a record that does not parse is named.
fn parse<T: DeserializeOwned>(table: &'static str, key: impl ToString, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        tree: table,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A record as it is kept: the same JSON text the embedded engine keeps.
fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("ledger records always serialise")
}

/// A time as PostgreSQL reads it (microseconds: the records keep nanoseconds, so queries
/// compare with a little room and the exact comparison is made on the record); times
/// beyond what a timestamptz holds are its infinities.
fn pg_time(t: DateTime<Utc>) -> String {
    if t.year() < 0 {
        "-infinity".into()
    } else if t.year() > 100_000 {
        "infinity".into()
    } else {
        t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

/// A time a little before `t`, for queries whose exact comparison is made on the record.
fn pg_time_before(t: DateTime<Utc>) -> String {
    pg_time(
        t.checked_sub_signed(chrono::Duration::milliseconds(1))
            .unwrap_or(t),
    )
}

/// A serial or sequence number as the `bigint` columns keep it.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
