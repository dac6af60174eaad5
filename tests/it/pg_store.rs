//! The PostgreSQL ledger's groundwork against a private cluster: `ramp-ca store migrate
//! --store URL` (the schema it creates, runs that change nothing, nodes migrating at once, the
//! servers and URLs it refuses, TLS per sslmode) and the pool's bounds.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ramp_ca::pgstore::migrations::MIGRATION_LOCK;
use ramp_ca::pgstore::{Pg, PoolSettings};

use crate::postgres::{PgCluster, Sql};
use crate::support::{free_port, ramp, run_err, run_ok, TestDir};

const APPLIED: &str = "schema at version 3 (applied 0001_ledger, 0002_open_grants, 0003_nodes)\n";
const ALREADY: &str = "schema already at version 3\n";

fn migrate(dir: &TestDir, url: &str) -> Command {
    let mut cmd = ramp(dir);
    cmd.args(["store", "migrate", "--store", url]);
    cmd
}

#[test]
fn migrate_creates_the_schema_and_a_second_run_changes_nothing() {
    let pg = PgCluster::start();
    let dir = TestDir::new();
    assert_eq!(run_ok(&mut migrate(&dir, &pg.url())), APPLIED);

    let sql = Sql::connect(&pg.url());
    let tables = sql.column(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' ORDER BY 1",
    );
    assert_eq!(
        tables,
        [
            "audit",
            "audit_head",
            "certs",
            "checkpoints",
            "grants",
            "nodes",
            "nonces",
            "revocations",
            "revoked",
            "schema_migrations",
            "sessions"
        ]
    );
    let versions = "SELECT version::text, name, length(sha256)::text, applied_by
                    FROM schema_migrations ORDER BY version";
    let applied = sql.rows(versions);
    let by = Some(format!("ramp-ca {}", env!("CARGO_PKG_VERSION")));
    let row = |version: &str, name: &str| {
        [
            Some(version.to_string()),
            Some(name.to_string()),
            Some("64".to_string()),
            by.clone(),
        ]
    };
    assert_eq!(
        applied,
        [
            row("1", "0001_ledger"),
            row("2", "0002_open_grants"),
            row("3", "0003_nodes")
        ]
    );
    // The chain starts at genesis; serials start at 1.
    assert_eq!(
        sql.rows("SELECT seq::text, hash FROM audit_head"),
        [[Some("0".to_string()), Some("0".repeat(64))]]
    );
    assert_eq!(sql.column("SELECT nextval('cert_serial')::text"), ["1"]);
    // A record keeps its exact text, NUL escapes included (jsonb would refuse them).
    let record = r#"{"seq":1,  "detail":{"command":"a\u0000b"}}"#;
    sql.batch(&format!(
        "INSERT INTO audit (seq, at, action, subject, record)
         VALUES (1, now(), 'session-end', 's1', '{record}')"
    ));
    assert_eq!(sql.column("SELECT record::text FROM audit"), [record]);

    assert_eq!(run_ok(&mut migrate(&dir, &pg.url())), ALREADY);
    assert_eq!(
        sql.rows(versions),
        applied,
        "the second run changed nothing"
    );
}

/// Regression guard for the advisory lock: both migrations are held at the lock until both
/// wait there, then race; each migration is applied by one of them, the other finds it
/// applied. Without the lock they would both create the tables and one would fail.
#[test]
fn two_migrations_at_once_apply_it_once() {
    let pg = PgCluster::start();
    let dir = TestDir::new();
    let holder = Sql::connect(&pg.url());
    holder.batch(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
    ));
    let children: Vec<_> = (0..2)
        .map(|_| {
            migrate(&dir, &pg.url())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ramp-ca store migrate")
        })
        .collect();
    let waiting = "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.column(waiting) != ["2"] {
        assert!(
            Instant::now() < deadline,
            "both migrations should wait for the lock\n{}",
            pg.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.batch("COMMIT");
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait for ramp-ca");
            assert!(
                out.status.success(),
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                pg.log_tail()
            );
            String::from_utf8(out.stdout).expect("utf-8")
        })
        .collect();
    let mut applied: Vec<&str> = Vec::new();
    for out in &outputs {
        if out != ALREADY {
            let names = out
                .strip_prefix("schema at version 3 (applied ")
                .and_then(|rest| rest.strip_suffix(")\n"))
                .unwrap_or_else(|| panic!("unexpected output: {out}"));
            applied.extend(names.split(", "));
        }
    }
    applied.sort();
    assert_eq!(
        applied,
        ["0001_ledger", "0002_open_grants", "0003_nodes"],
        "{outputs:?}"
    );
    assert_eq!(
        holder.column("SELECT count(*)::text FROM schema_migrations"),
        ["3"]
    );
}

#[test]
fn a_database_newer_than_the_binary_is_refused_naming_both_versions() {
    let pg = PgCluster::start();
    let dir = TestDir::new();
    run_ok(&mut migrate(&dir, &pg.url()));
    let sql = Sql::connect(&pg.url());
    sql.batch(
        "INSERT INTO schema_migrations (version, name, sha256, applied_by)
         VALUES (4, '0004_future', 'ab', 'ramp-ca 9.9.9')",
    );
    let (code, err) = run_err(&mut migrate(&dir, &pg.url()));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no notices: {err}");
    assert!(
        err.contains(&format!(
            "the database at 127.0.0.1:{}/ramp has schema version 4, newer than this ramp-ca knows (version 3)",
            pg.port()
        )),
        "{err}"
    );
    assert_eq!(
        sql.column("SELECT count(*)::text FROM schema_migrations"),
        ["4"]
    );
    // `serve` migrates at start, so it refuses the same way, before it listens.
    let (code, err) = run_err(ramp(&dir).args([
        "serve",
        "--api",
        "127.0.0.1:0",
        "--ssh",
        "127.0.0.1:0",
        "--store",
        &pg.url(),
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has schema version 4, newer than this ramp-ca knows (version 3)"),
        "{err}"
    );
}

#[test]
fn the_servers_refusals_are_named() {
    let pg = PgCluster::start();
    let dir = TestDir::new();
    let (code, err) = run_err(&mut migrate(&dir, &pg.url_with("127.0.0.1", "wrong")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "PostgreSQL at 127.0.0.1:{}/ramp refused user `ramp`: password authentication failed for user \"ramp\"",
            pg.port()
        )),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password is not shown: {err}");

    let url = format!("{}/nosuch", pg.url().rsplit_once('/').expect("a path").0);
    let (code, err) = run_err(&mut migrate(&dir, &url));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the connection: database \"nosuch\" does not exist"),
        "{err}"
    );
}

#[test]
fn urls_and_servers_that_cannot_work_are_refused_saying_why() {
    let dir = TestDir::new();
    for url in ["mysql://ramp:hunter2@127.0.0.1/ramp", "data", "sled"] {
        let (code, err) = run_err(&mut migrate(&dir, url));
        assert_eq!(code, 1, "{url}: {err}");
        assert!(err.contains("not a PostgreSQL URL"), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password is not shown: {err}");
    }
    let (code, err) = run_err(&mut migrate(
        &dir,
        "postgres://ramp@127.0.0.1/ramp?sslmode=on",
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sslmode `on` is not one of"), "{err}");

    // Nothing listens.
    let port = free_port();
    let (code, err) = run_err(&mut migrate(
        &dir,
        &format!("postgres://ramp@127.0.0.1:{port}/ramp"),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/ramp: Connection refused"
        )),
        "{err}"
    );

    // Something listens and never answers: the connect timeout bounds the wait.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let started = Instant::now();
    let (code, err) = run_err(&mut migrate(
        &dir,
        &format!("postgres://ramp@127.0.0.1:{port}/ramp?connect_timeout=1"),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "PostgreSQL at 127.0.0.1:{port}/ramp did not answer within 1s"
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn tls_is_used_and_checked_as_sslmode_says() {
    let pg = PgCluster::start_tls();
    let dir = TestDir::new();
    let ca = pg.ca().display().to_string();
    let url = pg.url();
    let localhost = pg.url_with("localhost", pg.password());
    // The server takes TCP connections with TLS only.
    let (code, err) = run_err(&mut migrate(&dir, &format!("{url}?sslmode=disable")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused user `ramp`: no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
    // Encrypted, the certificate not checked (libpq's require).
    assert_eq!(
        run_ok(&mut migrate(&dir, &format!("{url}?sslmode=require"))),
        APPLIED
    );
    // The chain checked, not the name (the certificate is for localhost, not 127.0.0.1).
    let verify_ca = format!("{url}?sslmode=verify-ca&sslrootcert={ca}");
    assert_eq!(run_ok(&mut migrate(&dir, &verify_ca)), ALREADY);
    // The chain and the name.
    let full = |url: &str| format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(run_ok(&mut migrate(&dir, &full(&localhost))), ALREADY);
    let (code, err) = run_err(&mut migrate(&dir, &full(&url)));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not valid for"), "{err}");
    // Without sslrootcert the system's roots are used, and none of them issued it.
    let (code, err) = run_err(&mut migrate(&dir, &format!("{url}?sslmode=verify-ca")));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("UnknownIssuer (the server's certificate does not chain to sslrootcert"),
        "{err}"
    );
}

#[test]
fn the_pool_is_bounded_and_every_connection_has_a_statement_timeout() {
    let pg = PgCluster::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let settings = PoolSettings {
            max_connections: 2,
            query_timeout: Duration::from_millis(300),
            wait_timeout: Duration::from_millis(300),
        };
        let pool = Pg::open(&pg.url(), settings).expect("open");
        let a = pool.client().await.expect("first connection");
        let timeout: String = a
            .query_one("SHOW statement_timeout", &[])
            .await
            .expect("SHOW")
            .get(0);
        assert_eq!(timeout, "300ms");
        let err = a
            .query_one("SELECT pg_sleep(5)", &[])
            .await
            .expect_err("cancelled by the server");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err:?}"
        );
        let b = pool.client().await.expect("second connection");
        let Err(err) = pool.client().await else {
            panic!("a third caller should wait, then give up");
        };
        assert_eq!(
            err.to_string(),
            format!(
                "PostgreSQL at 127.0.0.1:{}/ramp: every one of the 2 connections stayed busy for 300ms",
                pg.port()
            )
        );
        drop(b);
        let c = pool.client().await.expect("a connection given back is reused");
        let timeout: String = c
            .query_one("SHOW statement_timeout", &[])
            .await
            .expect("SHOW")
            .get(0);
        assert_eq!(timeout, "300ms");
    });
}
