//! `store copy`'s target side: pages of records written into an empty ledger in one
//! transaction (see [`crate::store::copy`]). Each record's column is the exact text the
//! source kept; the columns beside it are read from the record as [`super::write`] does.

use tokio::sync::mpsc::Receiver;

use super::write::{INSERT_AUDIT, UPSERT_CERTS, UPSERT_GRANTS, UPSERT_SESSIONS};
use super::{big, pg_time, Conn, Result, GRANT_LOCK};
use crate::domain::Vocabulary;
use crate::pgstore::{migrate, Pg, PoolSettings};
use crate::store::copy::{Copied, Rows};
use crate::store::StoreError;

/// The tables a ledger in use has rows in; a copy goes only into a ledger without any.
const TABLES: [(&str, &str); 8] = [
    ("grants", "grants"),
    ("certs", "certificates"),
    ("revoked", "revoked serials"),
    ("revocations", "revocations"),
    ("audit", "audit records"),
    ("nonces", "nonces"),
    ("sessions", "sessions"),
    ("checkpoints", "checkpoints"),
];

/// A statement of a copy may take this long (a page of records, or the emptiness check).
const COPY_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Migrates the database at `url`, then writes every page `pages` brings into it in one
/// transaction, committed once the source's last page ([`Rows::End`]) is in. A ledger that
/// holds anything is refused, naming what it holds; nothing is committed on any failure.
pub async fn import(url: &str, mut pages: Receiver<Rows>) -> Result<Copied> {
    let settings = PoolSettings {
        max_connections: 1,
        query_timeout: COPY_STATEMENT_TIMEOUT,
        ..PoolSettings::default()
    };
    let pg = Pg::open(url, settings)?;
    migrate(&pg).await?;
    let mut c = Conn::get(&pg).await?;
    c.begin("BEGIN").await?;
    // Nodes starting on this database meanwhile wait for the copy (grant changes), and no
    // audit record is appended before it is done.
    c.query("SELECT pg_advisory_xact_lock($1)", &[&GRANT_LOCK])
        .await?;
    c.query("SELECT seq FROM audit_head FOR UPDATE", &[])
        .await?;
    refuse_unless_empty(&mut c, pg.target()).await?;
    let mut copied = Copied::default();
    loop {
        let Some(rows) = pages.recv().await else {
            return Err(StoreError::Conflict(
                "the source stopped before its end; nothing was copied".into(),
            ));
        };
        write(&mut c, &rows).await?;
        copied.count(&rows);
        if let Rows::End { .. } = rows {
            break;
        }
    }
    if copied.audit != copied.head.seq {
        tracing::warn!(
            records = copied.audit,
            head = copied.head.seq,
            "the source's audit chain and its head disagree; copied as they are (audit verify names it)"
        );
    }
    c.commit().await?;
    Ok(copied)
}

/// Refuses a ledger that holds anything, naming what (nothing changed).
async fn refuse_unless_empty(c: &mut Conn<'_>, target: &str) -> Result<()> {
    let mut held = Vec::new();
    for (table, what) in TABLES {
        let rows = c
            .query(&format!("SELECT count(*) FROM {table}"), &[])
            .await?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        if n > 0 {
            held.push(format!("{n} {what}"));
        }
    }
    let rows = c
        .query(
            "SELECT (SELECT seq FROM audit_head), (SELECT is_called FROM cert_serial)",
            &[],
        )
        .await?;
    if let Some(row) = rows.first() {
        let (head, called): (Option<i64>, bool) = (row.get(0), row.get(1));
        if head.unwrap_or(0) > 0 && held.iter().all(|h| !h.contains("audit")) {
            held.push(format!("an audit head at record {}", head.unwrap_or(0)));
        }
        if called && held.iter().all(|h| !h.contains("certificates")) {
            held.push("serials already handed out".into());
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "the PostgreSQL ledger at {target} is not empty (it holds {}): store copy only fills an empty ledger (a new database, or one only `store migrate` touched); nothing was changed",
        held.join(", ")
    )))
}

/// Writes one page in the copy's transaction.
async fn write(c: &mut Conn<'_>, rows: &Rows) -> Result<()> {
    fn col<T>(v: &[(T, String)], f: impl Fn(&T) -> String) -> Vec<String> {
        v.iter().map(|(r, _)| f(r)).collect()
    }
    fn texts<T>(v: &[(T, String)]) -> Vec<String> {
        v.iter().map(|(_, t)| t.clone()).collect()
    }
    match rows {
        Rows::Grants(v) => {
            let times =
                |f: fn(&crate::domain::grant::Grant) -> Option<chrono::DateTime<chrono::Utc>>| {
                    v.iter().map(|(g, _)| f(g).map(pg_time)).collect::<Vec<_>>()
                };
            c.execute(
                UPSERT_GRANTS,
                &[
                    &col(v, |g| g.id.clone()),
                    &col(v, |g| g.user.clone()),
                    &col(v, |g| g.contract.clone()),
                    &col(v, |g| g.step.clone()),
                    &col(v, |g| g.state.label().to_string()),
                    &col(v, |g| pg_time(g.requested_at)),
                    &times(|g| g.start),
                    &times(|g| g.end),
                    &texts(v),
                ],
            )
            .await?;
        }
        Rows::Certs(v) => {
            let serials: Vec<i64> = v.iter().map(|(c, _)| big(c.serial)).collect();
            c.execute(
                UPSERT_CERTS,
                &[
                    &serials,
                    &col(v, |c| c.kind.clone()),
                    &col(v, |c| c.user.clone()),
                    &col(v, |c| c.grant.clone()),
                    &col(v, |c| c.fingerprint.clone()),
                    &col(v, |c| pg_time(c.issued_at)),
                    &texts(v),
                ],
            )
            .await?;
        }
        Rows::Revoked(v) => {
            let serials: Vec<i64> = v.iter().map(|(s, _)| big(*s)).collect();
            c.execute(
                "INSERT INTO revoked (serial, target) \
                 SELECT s, t::json FROM unnest($1::bigint[], $2::text[]) AS r(s, t)",
                &[&serials, &texts(v)],
            )
            .await?;
        }
        Rows::Revocations(v) => {
            // In the order they were made, numbered on from what is there (the identity
            // column then moves past them).
            c.execute(
                "INSERT INTO revocations (seq, at, by_user, record) \
                 SELECT (SELECT coalesce(max(seq), 0) FROM revocations) + n, \
                        at::timestamptz, by_user, record::json \
                 FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                      AS r(at, by_user, record, n)",
                &[
                    &col(v, |r| pg_time(r.at)),
                    &col(v, |r| r.by.clone()),
                    &texts(v),
                ],
            )
            .await?;
            c.query(
                "SELECT setval(pg_get_serial_sequence('revocations', 'seq'), \
                        (SELECT max(seq) FROM revocations))",
                &[],
            )
            .await?;
        }
        Rows::Audit(v) => {
            let seqs: Vec<i64> = v.iter().map(|(r, _)| big(r.seq)).collect();
            c.execute(
                INSERT_AUDIT,
                &[
                    &seqs,
                    &col(v, |r| pg_time(r.at)),
                    &col(v, |r| r.action.clone()),
                    &col(v, |r| r.subject.clone()),
                    &texts(v),
                ],
            )
            .await?;
        }
        Rows::Nonces(v) => {
            let nonces: Vec<String> = v.iter().map(|(n, _)| n.clone()).collect();
            let at: Vec<i64> = v.iter().map(|(_, t)| *t).collect();
            c.execute(
                "INSERT INTO nonces (nonce, seen_at) \
                 SELECT n, to_timestamp(t) FROM unnest($1::text[], $2::bigint[]) AS x(n, t) \
                 ON CONFLICT DO NOTHING",
                &[&nonces, &at],
            )
            .await?;
        }
        Rows::Sessions(v) => {
            c.execute(
                UPSERT_SESSIONS,
                &[
                    &col(v, |s| s.id.clone()),
                    &col(v, |s| s.user.clone()),
                    &col(v, |s| s.target.clone()),
                    &col(v, |s| s.state.label().to_string()),
                    &col(v, |s| pg_time(s.start)),
                    &texts(v),
                ],
            )
            .await?;
        }
        Rows::Checkpoints(v) => {
            let seqs: Vec<i64> = v.iter().map(|(s, _)| big(*s)).collect();
            c.execute(
                "INSERT INTO checkpoints (seq, signed) \
                 SELECT s, t FROM unnest($1::bigint[], $2::text[]) AS c(s, t) \
                 ON CONFLICT (seq) DO NOTHING",
                &[&seqs, &texts(v)],
            )
            .await?;
        }
        Rows::End { head, serial } => {
            c.execute(
                "UPDATE audit_head SET seq = $1, hash = $2",
                &[&big(head.seq), &head.hash],
            )
            .await?;
            // Past every serial handed out, whether or not its certificate was recorded.
            c.query(
                "SELECT setval('cert_serial', greatest($1, (SELECT max(serial) FROM certs))) \
                 WHERE greatest($1, (SELECT max(serial) FROM certs)) > 0",
                &[&big(*serial)],
            )
            .await?;
        }
    }
    Ok(())
}
