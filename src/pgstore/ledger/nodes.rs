//! Node leases (schema/0003_nodes.sql): a node claims its name at start, renews it every
//! few seconds, releases it at a clean stop; the node that finds another's lease lapsed
//! ends that node's live sessions in the transaction that deletes its lease row, so one node
//! does it, once. Times are the database's, so the nodes' clocks need not agree. Whether a
//! claim stands is [`crate::domain::lease`]'s rule. Also the shared series of signed audit
//! checkpoints, which every node keeps to and reads.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::read::keyed;
use super::{PgLedger, PgTx, Result};
use crate::domain::lease::{self, Claim, Lease};
use crate::domain::session::SessionMeta;

/// Who is claiming a name: this process.
#[derive(Debug, Clone)]
pub struct Holder {
    pub node: String,
    pub host: String,
    pub pid: u32,
    /// Random per start: a renewal renews only this start's row.
    pub instance: String,
}

/// A lease row's columns, times as unix milliseconds (read back with [`time`]).
const LEASE_COLUMNS: &str = "name, host, pid, (extract(epoch FROM started) * 1000)::bigint, \
     (extract(epoch FROM heartbeat) * 1000)::bigint";

/// The database's clock, as unix milliseconds.
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";

/// Unix milliseconds as a time.
fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lease_of(row: &tokio_postgres::Row) -> Lease {
    Lease {
        node: row.get(0),
        host: row.get(1),
        pid: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
        started: time(row.get(3)),
        renewed: time(row.get(4)),
    }
}

impl PgLedger {
    /// Claims `me.node` for this process: taken when free or when its holder is gone,
    /// refused while another process holds it fresh. `running` says whether a process id
    /// runs on this machine.
    pub async fn claim_lease(
        &self,
        me: &Holder,
        term: Duration,
        running: impl Fn(u32) -> bool,
    ) -> Result<Claim> {
        let mut tx = self.begin().await?;
        let c = &mut tx.conn;
        let rows = c
            .query(
                &format!("SELECT {LEASE_COLUMNS}, {NOW} FROM nodes WHERE name = $1 FOR UPDATE"),
                &[&me.node],
            )
            .await?;
        let now = time(match rows.first() {
            Some(row) => row.get(5),
            None => c.query(&format!("SELECT {NOW}"), &[]).await?[0].get(0),
        });
        let held = rows.first().map(lease_of);
        let claim = lease::claim(held.as_ref(), &me.host, running, now, term);
        if !matches!(claim, Claim::Refused(_)) {
            c.execute(
                "INSERT INTO nodes (name, host, pid, instance) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, \
                    instance = EXCLUDED.instance, started = now(), heartbeat = now()",
                &[&me.node, &me.host, &(me.pid as i32), &me.instance],
            )
            .await?;
        }
        tx.finish().await?;
        Ok(claim)
    }

    /// Renews this start's lease; false when the row is no longer this start's (another
    /// node found it lapsed and took over, or another process claimed the name since).
    pub async fn renew_lease(&self, me: &Holder) -> Result<bool> {
        let mut c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE nodes SET heartbeat = now() WHERE name = $1 AND instance = $2",
                &[&me.node, &me.instance],
            )
            .await?;
        if n == 1 {
            return Ok(true);
        }
        // Gone (ended by another node): this process still runs, so it holds the name again.
        c.execute(
            "INSERT INTO nodes (name, host, pid, instance) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
            &[&me.node, &me.host, &(me.pid as i32), &me.instance],
        )
        .await?;
        Ok(false)
    }

    /// Gives the name up (a clean stop): nothing is left live to end.
    pub async fn release_lease(&self, me: &Holder) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "DELETE FROM nodes WHERE name = $1 AND instance = $2",
                &[&me.node, &me.instance],
            )
            .await?;
        Ok(())
    }

    /// The leases not renewed for longer than `term`, by the database's clock.
    pub async fn lapsed_leases(&self, term: Duration) -> Result<Vec<Lease>> {
        let rows = self
            .conn()
            .await?
            .query(
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM nodes \
                     WHERE heartbeat < now() - $1 * interval '1 millisecond' ORDER BY name"
                ),
                &[&(millis(term) as f64)],
            )
            .await?;
        Ok(rows.iter().map(lease_of).collect())
    }

    /// Starts ending node `name`'s leftovers: a transaction holding its lease row, if the
    /// lease is still lapsed and no other node is at it (SKIP LOCKED); `None` otherwise.
    pub async fn take_over(&self, name: &str, term: Duration) -> Result<Option<PgTx<'_>>> {
        let mut tx = self.begin().await?;
        let rows = tx
            .conn
            .query(
                "SELECT name FROM nodes WHERE name = $1 \
                 AND heartbeat < now() - $2 * interval '1 millisecond' FOR UPDATE SKIP LOCKED",
                &[&name, &(millis(term) as f64)],
            )
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(tx))
    }
}

impl PgLedger {
    /// Keeps a signed checkpoint of record `seq` in the shared series, unless that record
    /// has one already (another node signed the same head first); whether it was new.
    pub async fn keep_checkpoint(&self, seq: u64, signed: &str) -> Result<bool> {
        let n = self
            .conn()
            .await?
            .execute(
                "INSERT INTO checkpoints (seq, signed) VALUES ($1, $2) \
                 ON CONFLICT (seq) DO NOTHING",
                &[&super::big(seq), &signed],
            )
            .await?;
        Ok(n == 1)
    }

    /// The newest `limit` checkpoints of the shared series, newest first.
    pub async fn checkpoints(&self, limit: i64) -> Result<Vec<(u64, String)>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT seq, signed FROM checkpoints ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }
}

impl PgTx<'_> {
    /// The sessions node `name` left live.
    pub async fn live_sessions_of(&mut self, name: &str) -> Result<Vec<SessionMeta>> {
        let rows = self
            .conn
            .query(
                "SELECT id, record::text FROM sessions WHERE state = 'live' \
                 AND record->>'node' = $1 ORDER BY started_at, id",
                &[&name],
            )
            .await?;
        keyed("sessions", &rows)
    }

    /// Deletes node `name`'s lease: its leftovers are ended with this transaction.
    pub async fn end_lease(&mut self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM nodes WHERE name = $1", &[&name])
            .await?;
        Ok(())
    }
}
