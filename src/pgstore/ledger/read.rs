//! What the ledger answers, as queries. Each takes a connection, so a grant change asks them
//! inside its transaction and everyone else on a pooled connection. Rows are read back as
//! the records they hold; where a time column only narrows the query (it keeps
//! microseconds, the record nanoseconds), the exact comparison is made on the record, as the
//! embedded engine makes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{big, parse, pg_time, pg_time_before, Conn, PgLedger, Result};
use crate::domain::audit::{AuditRecord, Head, Kind};
use crate::domain::cert::CertRecord;
use crate::domain::grant::{Grant, Revocation, State};
use crate::domain::session::SessionMeta;
use crate::domain::Vocabulary;
use crate::store::{AuditReport, HeldStep, StoreError, Walk};

/// Records read per query when walking the chain.
const PAGE: i64 = 5000;

/// The actions that end a session, as the partial index `audit_session_ends` names them
/// (a query must say them the same way for the index to serve it).
static ENDS: LazyLock<String> = LazyLock::new(|| {
    let labels: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| k.ends_session())
        .map(|k| format!("'{}'", k.label()))
        .collect();
    labels.join(", ")
});

static SESSION_ENDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT seq, record::text FROM audit WHERE action IN ({}) ORDER BY seq",
        *ENDS
    )
});

static FIRST_END: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT seq, record::text FROM audit WHERE action IN ({}) AND subject = $1 \
         ORDER BY seq LIMIT 1",
        *ENDS
    )
});

/// Each row's record (column 1), named by its key (column 0) when it does not parse.
pub(super) fn keyed<T: serde::de::DeserializeOwned>(
    table: &'static str,
    rows: &[Row],
) -> Result<Vec<T>> {
    rows.iter()
        .map(|row| {
            let key: String = match row.try_get::<_, String>(0) {
                Ok(k) => k,
                Err(_) => row.get::<_, i64>(0).to_string(),
            };
            parse(table, key, row.get(1))
        })
        .collect()
}

/// The one row's record (column 0), if there is one.
fn one<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: impl ToString,
    rows: &[Row],
) -> Result<Option<T>> {
    rows.first()
        .map(|row| parse(table, key.to_string(), row.get(0)))
        .transpose()
}

pub(super) async fn session(c: &mut Conn<'_>, id: &str) -> Result<Option<SessionMeta>> {
    let rows = c
        .query("SELECT record::text FROM sessions WHERE id = $1", &[&id])
        .await?;
    one("sessions", id, &rows)
}

pub(super) async fn grant(c: &mut Conn<'_>, id: &str) -> Result<Option<Grant>> {
    let rows = c
        .query("SELECT record::text FROM grants WHERE id = $1", &[&id])
        .await?;
    one("grants", id, &rows)
}

/// Grants open at `now` that `narrowed` found: pending, or active and not yet ended, oldest
/// request first.
fn open_at(mut grants: Vec<Grant>, now: DateTime<Utc>) -> Vec<Grant> {
    grants.retain(|g| g.is_open(now));
    crate::store::by_request(&mut grants);
    grants
}

pub(super) async fn open_grants_of(
    c: &mut Conn<'_>,
    users: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<Grant>> {
    let rows = c
        .query(
            "SELECT id, record::text FROM grants WHERE user_name = ANY($1) \
             AND (status = 'pending' OR (status = 'active' AND ends_at > $2::text::timestamptz))",
            &[&users, &pg_time_before(now)],
        )
        .await?;
    Ok(open_at(keyed("grants", &rows)?, now))
}

pub(super) async fn has_grants(c: &mut Conn<'_>, user: &str) -> Result<bool> {
    let rows = c
        .query(
            "SELECT EXISTS (SELECT 1 FROM grants WHERE user_name = $1)",
            &[&user],
        )
        .await?;
    Ok(rows.first().is_some_and(|r| r.get(0)))
}

/// The steps `user` holds at `now`, each with the latest end among its active grants.
pub(super) async fn held_steps(
    c: &mut Conn<'_>,
    user: &str,
    now: DateTime<Utc>,
) -> Result<Vec<HeldStep>> {
    let rows = c
        .query(
            "SELECT id, record::text FROM grants WHERE user_name = $1 AND status = 'active' \
             AND ends_at > $2::text::timestamptz",
            &[&user, &pg_time_before(now)],
        )
        .await?;
    let mut ends: BTreeMap<(String, String), DateTime<Utc>> = BTreeMap::new();
    for g in keyed::<Grant>("grants", &rows)? {
        if let (true, Some(end)) = (g.is_active(now), g.end) {
            let latest = ends.entry((g.contract, g.step)).or_insert(end);
            *latest = (*latest).max(end);
        }
    }
    Ok(ends
        .into_iter()
        .map(|((contract, step), end)| HeldStep {
            contract,
            step,
            end,
        })
        .collect())
}

/// The user's own open grant of a step at `now`: the active one that ends last, else the
/// oldest pending request (a request for a window that opens later is neither).
pub(super) async fn own_open_grant(
    c: &mut Conn<'_>,
    user: &str,
    contract: &str,
    step: &str,
    now: DateTime<Utc>,
) -> Result<Option<Grant>> {
    let rows = c
        .query(
            "SELECT id, record::text FROM grants WHERE user_name = $1 AND contract = $2 \
             AND step = $3 AND (status = 'pending' \
             OR (status = 'active' AND ends_at > $4::text::timestamptz))",
            &[&user, &contract, &step, &pg_time_before(now)],
        )
        .await?;
    let grants: Vec<Grant> = keyed("grants", &rows)?;
    let active = grants
        .iter()
        .filter(|g| g.is_active(now))
        .max_by(|a, b| (a.end, &a.id).cmp(&(b.end, &b.id)));
    let pending = || {
        grants
            .iter()
            .filter(|g| g.state_at(now) == State::Pending && g.opens_at(now) == now)
            .min_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)))
    };
    Ok(active.or_else(pending).cloned())
}

pub(super) async fn cert(c: &mut Conn<'_>, serial: u64) -> Result<Option<CertRecord>> {
    let rows = c
        .query(
            "SELECT record::text FROM certs WHERE serial = $1",
            &[&big(serial)],
        )
        .await?;
    one("certs", serial, &rows)
}

pub(super) async fn certs_of_grants(
    c: &mut Conn<'_>,
    grants: &[String],
) -> Result<Vec<CertRecord>> {
    let rows = c
        .query(
            "SELECT serial, record::text FROM certs WHERE grant_id = ANY($1) ORDER BY serial",
            &[&grants],
        )
        .await?;
    keyed("certs", &rows)
}

pub(super) async fn next_serial(c: &mut Conn<'_>) -> Result<u64> {
    let rows = c.query("SELECT nextval('cert_serial')", &[]).await?;
    let n: i64 = rows
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::Conflict("nextval('cert_serial') returned nothing".into()))?;
    Ok(n as u64)
}

/// The stored head, if its row is there.
async fn stored_head(c: &mut Conn<'_>) -> Result<Option<Head>> {
    let rows = c.query("SELECT seq, hash FROM audit_head", &[]).await?;
    Ok(rows.first().map(|r| Head {
        seq: r.get::<_, i64>(0) as u64,
        hash: r.get(1),
    }))
}

/// Feeds `walk` the stored records from its next one up to `upto`, a page at a time, until
/// one breaks it.
async fn walk_pages(c: &mut Conn<'_>, mut walk: Walk, upto: u64) -> Result<Walk> {
    loop {
        let from = walk.next_seq();
        if from > upto || walk.stopped() {
            return Ok(walk);
        }
        let rows = c
            .query(
                "SELECT seq, record::text FROM audit WHERE seq >= $1 AND seq <= $2 \
                 ORDER BY seq LIMIT $3",
                &[&big(from), &big(upto), &PAGE],
            )
            .await?;
        for row in &rows {
            let seq: i64 = row.get(0);
            let text: &str = row.get(1);
            let record = serde_json::from_str(text).map_err(|e| e.to_string());
            if !walk.feed(seq as u64, record) {
                return Ok(walk);
            }
        }
        if (rows.len() as i64) < PAGE {
            return Ok(walk);
        }
    }
}

/// Audit records by sequence number, a page at a time.
async fn audit_pages(c: &mut Conn<'_>, upto: u64) -> Result<Vec<AuditRecord>> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let from = out.last().map_or(0, |r| r.seq) + 1;
        let rows = c
            .query(
                "SELECT seq, record::text FROM audit WHERE seq >= $1 AND seq <= $2 \
                 ORDER BY seq LIMIT $3",
                &[&big(from), &big(upto), &PAGE],
            )
            .await?;
        let page: Vec<AuditRecord> = keyed("audit", &rows)?;
        let more = page.len() as i64 == PAGE;
        out.extend(page);
        if !more {
            return Ok(out);
        }
    }
}

impl PgLedger {
    pub async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        grant(&mut self.conn().await?, id).await
    }

    /// Every grant, oldest request first.
    pub async fn grants(&self) -> Result<Vec<Grant>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, record::text FROM grants ORDER BY requested_at, id",
                &[],
            )
            .await?;
        let mut grants = keyed("grants", &rows)?;
        crate::store::by_request(&mut grants);
        Ok(grants)
    }

    /// Pending requests and active grants not yet ended, without reading the ended ones.
    pub async fn open_grants(&self, now: DateTime<Utc>) -> Result<Vec<Grant>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, record::text FROM grants WHERE status = 'pending' UNION ALL \
                 SELECT id, record::text FROM grants WHERE status = 'active' \
                 AND ends_at > $1::text::timestamptz",
                &[&pg_time_before(now)],
            )
            .await?;
        Ok(open_at(keyed("grants", &rows)?, now))
    }

    pub async fn cert(&self, serial: u64) -> Result<Option<CertRecord>> {
        cert(&mut self.conn().await?, serial).await
    }

    pub async fn certs_of_grants(&self, grants: &[String]) -> Result<Vec<CertRecord>> {
        certs_of_grants(&mut self.conn().await?, grants).await
    }

    /// The newest user certificate of a key: one lookup in `certs_newest_by_key`.
    pub async fn newest_cert_for(&self, fingerprint: &str) -> Result<Option<CertRecord>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT record::text FROM certs WHERE fingerprint = $1 AND kind = 'user' \
                 ORDER BY serial DESC LIMIT 1",
                &[&fingerprint],
            )
            .await?;
        one("certs", fingerprint, &rows)
    }

    pub async fn is_revoked(&self, serial: u64) -> Result<bool> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT EXISTS (SELECT 1 FROM revoked WHERE serial = $1)",
                &[&big(serial)],
            )
            .await?;
        Ok(rows.first().is_some_and(|r| r.get(0)))
    }

    pub async fn revoked_serials(&self) -> Result<Vec<u64>> {
        let rows = self
            .conn()
            .await?
            .query("SELECT serial FROM revoked ORDER BY serial", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    pub async fn revocations(&self) -> Result<Vec<Revocation>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT seq, record::text FROM revocations ORDER BY seq",
                &[],
            )
            .await?;
        keyed("revocations", &rows)
    }

    pub async fn next_serial(&self) -> Result<u64> {
        next_serial(&mut self.conn().await?).await
    }

    pub async fn audit_since(&self, since: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT seq, record::text FROM audit WHERE at >= $1::text::timestamptz \
                 ORDER BY seq",
                &[&pg_time_before(since)],
            )
            .await?;
        let mut records: Vec<AuditRecord> = keyed("audit", &rows)?;
        records.retain(|r| r.at >= since);
        Ok(records)
    }

    pub async fn audit_head(&self) -> Result<Head> {
        Ok(stored_head(&mut self.conn().await?)
            .await?
            .unwrap_or_else(Head::genesis))
    }

    pub async fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT record::text FROM audit WHERE seq = $1",
                &[&big(seq)],
            )
            .await?;
        one("audit", seq, &rows)
    }

    pub async fn audit_upto(&self, upto: u64) -> Result<Vec<AuditRecord>> {
        audit_pages(&mut self.conn().await?, upto).await
    }

    pub async fn walk_chain(&self, walk: Walk, upto: u64) -> Result<Walk> {
        walk_pages(&mut self.conn().await?, walk, upto).await
    }

    /// The whole chain and its head as one snapshot (a repeatable-read transaction), so
    /// appends landing meanwhile, from any node, are not mistaken for a removed tail.
    pub async fn verify_audit(&self) -> Result<AuditReport> {
        let mut c = self.conn().await?;
        c.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let head = stored_head(&mut c).await?;
        let walk = walk_pages(&mut c, Walk::from(Head::genesis()), u64::MAX >> 1).await?;
        c.commit().await?;
        Ok(walk.whole(head))
    }

    /// Every session-ending record, by session id, oldest first: one read of the partial
    /// index `audit_session_ends`.
    pub async fn session_ends(&self) -> Result<HashMap<String, Vec<AuditRecord>>> {
        let rows = self.conn().await?.query(&SESSION_ENDS, &[]).await?;
        let mut out: HashMap<String, Vec<AuditRecord>> = HashMap::new();
        for r in keyed::<AuditRecord>("audit", &rows)? {
            out.entry(r.subject.clone()).or_default().push(r);
        }
        Ok(out)
    }

    /// The first record that ends session `id`.
    pub async fn first_session_end(&self, id: &str) -> Result<Option<AuditRecord>> {
        let rows = self.conn().await?.query(&FIRST_END, &[&id]).await?;
        Ok(keyed("audit", &rows)?.into_iter().next())
    }

    /// Up to `limit` grant or session ids starting with `prefix` (an index range, not a scan).
    pub async fn ids_starting(
        &self,
        sessions: bool,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let sql = if sessions {
            "SELECT id FROM sessions WHERE id >= $1 AND starts_with(id, $1) ORDER BY id LIMIT $2"
        } else {
            "SELECT id FROM grants WHERE id >= $1 AND starts_with(id, $1) ORDER BY id LIMIT $2"
        };
        let rows = self
            .conn()
            .await?
            .query(sql, &[&prefix, &(limit as i64)])
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionMeta>> {
        session(&mut self.conn().await?, id).await
    }

    /// Every session, oldest first.
    pub async fn sessions(&self) -> Result<Vec<SessionMeta>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, record::text FROM sessions ORDER BY started_at, id",
                &[],
            )
            .await?;
        let mut sessions = keyed("sessions", &rows)?;
        crate::store::by_start(&mut sessions);
        Ok(sessions)
    }

    /// Sessions still live (or left live by a node that died), oldest first: the partial
    /// index `sessions_live`.
    pub async fn live_sessions(&self) -> Result<Vec<SessionMeta>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, record::text FROM sessions WHERE state = 'live'",
                &[],
            )
            .await?;
        let mut sessions = keyed("sessions", &rows)?;
        crate::store::by_start(&mut sessions);
        Ok(sessions)
    }

    /// Records a request nonce, shared by every node; false when any node saw it before.
    pub async fn remember_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<bool> {
        let added = self
            .conn()
            .await?
            .execute(
                "INSERT INTO nonces (nonce, seen_at) VALUES ($1, $2::text::timestamptz) \
                 ON CONFLICT DO NOTHING",
                &[&nonce, &pg_time(now)],
            )
            .await?;
        Ok(added == 1)
    }

    /// Forgets nonces seen before `cutoff`; returns how many went.
    pub async fn forget_nonces(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let gone = self
            .conn()
            .await?
            .execute(
                "DELETE FROM nonces WHERE seen_at < $1::text::timestamptz",
                &[&pg_time(cutoff)],
            )
            .await?;
        Ok(gone as usize)
    }
}
