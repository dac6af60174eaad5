//! Changes to the ledger: one transaction each. A grant change ([`PgLedger::grant_changes`])
//! holds [`GRANT_LOCK`] from its first read to its commit; a change with audit entries
//! locks the chain's head row, chains from it and moves it, so appends from every node form
//! one chain. Grants written and revocations are announced to the other nodes from inside
//! the transaction (NOTIFY is delivered once it commits), and to this node's listeners once
//! it has.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{big, pg_time, read, text, Conn, PgLedger, Result, GRANT_LOCK};
use crate::domain::audit::{AuditRecord, Head};
use crate::domain::cert::CertRecord;
use crate::domain::grant::Grant;
use crate::domain::Vocabulary;
use crate::store::{Change, HeldStep, StoreError};

/// The last of each key, order kept: one statement may write a row once.
fn last_of<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut out: Vec<T> = items
        .into_iter()
        .rev()
        .filter(|i| seen.insert(key(i)))
        .collect();
    out.reverse();
    out
}

fn opt_time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(pg_time)
}

pub(super) const UPSERT_GRANTS: &str = "INSERT INTO grants \
     (id, user_name, contract, step, status, requested_at, starts_at, ends_at, record) \
     SELECT id, user_name, contract, step, status, requested_at::timestamptz, \
            starts_at::timestamptz, ends_at::timestamptz, record::json \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[]) \
          AS g(id, user_name, contract, step, status, requested_at, starts_at, ends_at, record) \
     ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, \
        contract = EXCLUDED.contract, step = EXCLUDED.step, status = EXCLUDED.status, \
        requested_at = EXCLUDED.requested_at, starts_at = EXCLUDED.starts_at, \
        ends_at = EXCLUDED.ends_at, record = EXCLUDED.record";

pub(super) const UPSERT_CERTS: &str = "INSERT INTO certs \
     (serial, kind, user_name, grant_id, fingerprint, issued_at, record) \
     SELECT serial, kind, user_name, grant_id, fingerprint, issued_at::timestamptz, record::json \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[]) \
          AS c(serial, kind, user_name, grant_id, fingerprint, issued_at, record) \
     ON CONFLICT (serial) DO UPDATE SET kind = EXCLUDED.kind, \
        user_name = EXCLUDED.user_name, grant_id = EXCLUDED.grant_id, \
        fingerprint = EXCLUDED.fingerprint, issued_at = EXCLUDED.issued_at, \
        record = EXCLUDED.record";

pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit (seq, at, action, subject, record) \
     SELECT seq, at::timestamptz, action, subject, record::json \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
          AS a(seq, at, action, subject, record)";

pub(super) const UPSERT_SESSIONS: &str = "INSERT INTO sessions \
     (id, user_name, target, state, started_at, record) \
     SELECT id, user_name, target, state, started_at::timestamptz, record::json \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
          AS s(id, user_name, target, state, started_at, record) \
     ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name, \
        target = EXCLUDED.target, state = EXCLUDED.state, started_at = EXCLUDED.started_at, \
        record = EXCLUDED.record";

/// The channel every node listens on; payloads are `NODE g GRANT-ID` and `NODE r`.
pub(crate) const CHANNEL: &str = "ramp_ledger";

/// A change under way: one transaction on one connection.
pub struct PgTx<'a> {
    ledger: &'a PgLedger,
    pub(super) conn: Conn<'a>,
    /// This node's audit order, held from the first append to the announcement.
    appending: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// What to announce here once committed.
    records: Vec<AuditRecord>,
    grants: Vec<String>,
    revocation: bool,
}

impl PgLedger {
    /// Starts a transaction.
    pub(super) async fn begin(&self) -> Result<PgTx<'_>> {
        let mut conn = self.conn().await?;
        conn.begin("BEGIN").await?;
        Ok(PgTx {
            ledger: self,
            conn,
            appending: None,
            records: Vec::new(),
            grants: Vec::new(),
            revocation: false,
        })
    }

    /// Starts a grant change: a transaction holding the grant lock, which every node takes,
    /// until it commits (or its connection closes).
    pub async fn grant_changes(&self) -> Result<PgTx<'_>> {
        let mut tx = self.begin().await?;
        tx.conn
            .query("SELECT pg_advisory_xact_lock($1)", &[&GRANT_LOCK])
            .await?;
        Ok(tx)
    }

    /// Commits one change in a transaction of its own; its audit records once committed.
    pub async fn commit(&self, change: &Change, now: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let mut tx = self.begin().await?;
        tx.apply(change, now).await?;
        tx.finish().await
    }
}

impl<'a> PgTx<'a> {
    pub async fn grant(&mut self, id: &str) -> Result<Option<Grant>> {
        read::grant(&mut self.conn, id).await
    }

    pub async fn held_steps(&mut self, user: &str, now: DateTime<Utc>) -> Result<Vec<HeldStep>> {
        read::held_steps(&mut self.conn, user, now).await
    }

    pub async fn own_open_grant(
        &mut self,
        user: &str,
        contract: &str,
        step: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Grant>> {
        read::own_open_grant(&mut self.conn, user, contract, step, now).await
    }

    pub async fn open_grants_of(
        &mut self,
        users: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>> {
        read::open_grants_of(&mut self.conn, users, now).await
    }

    pub async fn has_grants(&mut self, user: &str) -> Result<bool> {
        read::has_grants(&mut self.conn, user).await
    }

    pub async fn cert(&mut self, serial: u64) -> Result<Option<CertRecord>> {
        read::cert(&mut self.conn, serial).await
    }

    pub async fn certs_of_grants(&mut self, grants: &[String]) -> Result<Vec<CertRecord>> {
        read::certs_of_grants(&mut self.conn, grants).await
    }

    pub async fn next_serial(&mut self) -> Result<u64> {
        read::next_serial(&mut self.conn).await
    }

    pub async fn session(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::domain::session::SessionMeta>> {
        read::session(&mut self.conn, id).await
    }

    /// Writes `change` in this transaction: later reads in it see it.
    pub async fn apply(&mut self, change: &Change, now: DateTime<Utc>) -> Result<()> {
        let c = &mut self.conn;
        if !change.grants.is_empty() {
            let grants = last_of(change.grants.iter().collect(), |g| g.id.clone());
            let col = |f: fn(&Grant) -> String| grants.iter().map(|g| f(g)).collect::<Vec<_>>();
            let times = |f: fn(&Grant) -> Option<DateTime<Utc>>| {
                grants.iter().map(|g| opt_time(f(g))).collect::<Vec<_>>()
            };
            c.execute(
                UPSERT_GRANTS,
                &[
                    &col(|g| g.id.clone()),
                    &col(|g| g.user.clone()),
                    &col(|g| g.contract.clone()),
                    &col(|g| g.step.clone()),
                    &col(|g| g.state.label().to_string()),
                    &col(|g| pg_time(g.requested_at)),
                    &times(|g| g.start),
                    &times(|g| g.end),
                    &col(text),
                ],
            )
            .await?;
        }
        if !change.certs.is_empty() {
            let certs = last_of(change.certs.iter().collect(), |c| c.serial.to_string());
            let col = |f: fn(&CertRecord) -> String| certs.iter().map(|c| f(c)).collect::<Vec<_>>();
            let serials: Vec<i64> = certs.iter().map(|c| big(c.serial)).collect();
            c.execute(
                UPSERT_CERTS,
                &[
                    &serials,
                    &col(|c| c.kind.clone()),
                    &col(|c| c.user.clone()),
                    &col(|c| c.grant.clone()),
                    &col(|c| c.fingerprint.clone()),
                    &col(|c| pg_time(c.issued_at)),
                    &col(text),
                ],
            )
            .await?;
        }
        if let Some(r) = &change.revocation {
            c.execute(
                "INSERT INTO revocations (at, by_user, record) \
                 VALUES ($1::text::timestamptz, $2, $3::text::json)",
                &[&pg_time(r.at), &r.by, &text(r)],
            )
            .await?;
            let serials: Vec<i64> = r.serials.iter().map(|s| big(*s)).collect();
            c.execute(
                "INSERT INTO revoked (serial, target) \
                 SELECT s, $2::text::json FROM unnest($1::bigint[]) AS s \
                 ON CONFLICT (serial) DO UPDATE SET target = EXCLUDED.target",
                &[&serials, &text(&r.target)],
            )
            .await?;
        }
        let mut records = Vec::new();
        if !change.entries.is_empty() {
            if self.appending.is_none() {
                self.appending = Some(self.ledger.appends.lock().await);
            }
            let c = &mut self.conn;
            let rows = c
                .query("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
                .await?;
            let mut head = match rows.first() {
                Some(row) => Head {
                    seq: row.get::<_, i64>(0) as u64,
                    hash: row.get(1),
                },
                None => {
                    return Err(StoreError::Conflict(
                        "the audit chain's head (the one row of table audit_head) is missing: nothing can be appended to the chain".into(),
                    ))
                }
            };
            records = change.chain(&mut head, now);
            let col = |f: fn(&AuditRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
            let seqs: Vec<i64> = records.iter().map(|r| big(r.seq)).collect();
            c.execute(
                INSERT_AUDIT,
                &[
                    &seqs,
                    &col(|r| pg_time(r.at)),
                    &col(|r| r.action.clone()),
                    &col(|r| r.subject.clone()),
                    &col(text),
                ],
            )
            .await?;
            c.execute(
                "UPDATE audit_head SET seq = $1, hash = $2",
                &[&big(head.seq), &head.hash],
            )
            .await?;
        }
        let c = &mut self.conn;
        let sessions = change.sessions_written(&records);
        if !sessions.is_empty() {
            let sessions = last_of(sessions, |s| s.id.clone());
            let col = |f: fn(&crate::domain::session::SessionMeta) -> String| {
                sessions.iter().map(f).collect::<Vec<_>>()
            };
            c.execute(
                UPSERT_SESSIONS,
                &[
                    &col(|s| s.id.clone()),
                    &col(|s| s.user.clone()),
                    &col(|s| s.target.clone()),
                    &col(|s| s.state.label().to_string()),
                    &col(|s| pg_time(s.start)),
                    &col(text),
                ],
            )
            .await?;
        }
        let node = &self.ledger.node;
        let mut news: Vec<String> = change
            .grants
            .iter()
            .map(|g| format!("{node} g {}", g.id))
            .collect();
        if change.revocation.is_some() {
            news.push(format!("{node} r"));
        }
        if !news.is_empty() {
            c.query(
                "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n",
                &[&CHANNEL, &news],
            )
            .await?;
        }
        self.records.extend(records);
        self.grants.extend(change.grant_ids());
        self.revocation |= change.revocation.is_some();
        Ok(())
    }

    /// Ends the transaction without changing anything.
    pub async fn rollback(mut self) -> Result<()> {
        self.conn.rollback().await
    }

    /// Commits; once it is committed (and durable), announces it here and returns its audit
    /// records. A transaction in which a statement failed is not committed (PostgreSQL would
    /// answer COMMIT with a silent rollback): its connection is closed, which rolls it back.
    pub async fn finish(mut self) -> Result<Vec<AuditRecord>> {
        if self.conn.failed() {
            return Err(StoreError::Conflict(
                "a statement of this change failed; none of it was committed".into(),
            ));
        }
        self.conn.commit().await?;
        self.ledger
            .feeds
            .committed(&self.records, &self.grants, self.revocation);
        drop(self.appending.take());
        Ok(std::mem::take(&mut self.records))
    }
}
