//! PostgreSQL, the ledger several `ramp-ca serve` nodes share (issue 11): the connection
//! (a `postgres://` URL read as libpq reads it, TLS by its `sslmode`, a bounded pool whose
//! every connection has a statement timeout), the schema with its versioned migrations
//! ([`migrations`]), the engine behind [`crate::store::Ledger`] ([`PgLedger`]), LISTEN/NOTIFY
//! between nodes, and the target side of `store copy` ([`import`]). This module is the only
//! code that talks to PostgreSQL.

mod ledger;
mod listen;
pub mod migrations;
mod tls;
pub mod url;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError};
use deadpool_postgres::{RecyclingMethod, Runtime, TimeoutType};

pub use self::ledger::{import, Holder, PgLedger, PgTx};
pub use self::migrations::{migrate, Migrated};
pub use self::url::StoreUrl;

/// Errors of the PostgreSQL ledger; every message names the server (`HOST:PORT/DB`, never
/// the password) and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("store URL `{url}`: {why}")]
    BadUrl { url: String, why: String },
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// No connection: refused, unreachable, TLS failed.
    #[error("cannot connect to PostgreSQL at {target}: {why}")]
    Connect { target: String, why: String },
    #[error("PostgreSQL at {target} did not answer within {within:?} (connect_timeout in the store URL sets this bound)")]
    ConnectTimeout { target: String, within: Duration },
    #[error("PostgreSQL at {target} refused user `{user}`: {message}")]
    Auth {
        target: String,
        user: String,
        message: String,
    },
    /// The server answered the connection with an error other than authentication (no such
    /// database, too many connections, starting up).
    #[error("PostgreSQL at {target} refused the connection: {message}")]
    Refused { target: String, message: String },
    #[error(
        "PostgreSQL at {target}: every one of the {max} connections stayed busy for {waited:?}"
    )]
    PoolBusy {
        target: String,
        max: usize,
        waited: Duration,
    },
    #[error("PostgreSQL at {target}: {message}")]
    Query { target: String, message: String },
    #[error("the database at {target} has schema version {database}, newer than this ramp-ca knows (version {binary}): run a ramp-ca release that knows version {database}; nothing was changed")]
    SchemaTooNew {
        target: String,
        database: i32,
        binary: i32,
    },
    #[error("the database at {target} has migration {version} applied as {applied}, but this ramp-ca's migration {version} is {ours}: the database was migrated by another build; nothing was changed")]
    MigrationMismatch {
        target: String,
        version: i32,
        applied: String,
        ours: String,
    },
    #[error("PostgreSQL at {target}: migration {name} failed and none of it was applied: {why}")]
    Migration {
        target: String,
        name: &'static str,
        why: String,
    },
}

type Result<T> = std::result::Result<T, PgError>;

impl PgError {
    /// When the error means the database cannot be reached now (refused, silent, shutting
    /// down or starting up, the connection lost, every connection busy), what to tell a
    /// caller: the server and why, and that it is worth trying again shortly.
    pub fn outage(&self) -> Option<String> {
        let (target, why) = match self {
            PgError::Connect { target, why } => (target, why.clone()),
            PgError::ConnectTimeout { target, within } => {
                (target, format!("no answer within {within:?}"))
            }
            PgError::Refused { target, message } if message.contains("the database system is") => {
                (target, message.clone())
            }
            PgError::PoolBusy { target, max, .. } => (
                target,
                format!("all {max} of this node's connections are busy"),
            ),
            PgError::Query { target, message } if lost(message) => (target, message.clone()),
            _ => return None,
        };
        Some(format!(
            "the ledger (PostgreSQL at {target}) is unreachable: {why}; try again shortly"
        ))
    }
}

/// Whether a statement's failure is the connection's, not the statement's: closed, reset,
/// unanswered, or the server going away (SQLSTATE class 08, 57P01-57P03).
fn lost(message: &str) -> bool {
    const SIGNS: [&str; 9] = [
        "connection closed",
        "Connection reset",
        "Broken pipe",
        "no answer within",
        "SQLSTATE 08",
        "SQLSTATE 57P01",
        "SQLSTATE 57P02",
        "SQLSTATE 57P03",
        "error communicating with the server",
    ];
    SIGNS.iter().any(|s| message.contains(s))
}

/// How many connections a node opens and how long its queries may take. Every connection
/// sets `statement_timeout` when it opens, so no query runs unbounded on the server.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections this node holds at most; callers beyond that wait for one.
    pub max_connections: usize,
    /// The server-side `statement_timeout` of every query (migrations set their own).
    pub query_timeout: Duration,
    /// How long a caller waits for a free connection before giving up.
    pub wait_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            max_connections: 16,
            query_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
        }
    }
}

/// A transaction left open by a node that stopped talking (a partition, a stuck task) is
/// ended by the server after this, releasing its locks.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool of connections to one PostgreSQL database.
pub struct Pg {
    /// At most `settings.max_connections` connections, opened on demand.
    pool: Pool,
    /// What the URL says, for messages and bounds.
    url: StoreUrl,
    /// The bounds the pool was built with, for waiting and messages.
    settings: PoolSettings,
    /// TLS as the URL says, for connections outside the pool (the listener's).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Pg {
    /// Parses the URL and prepares the pool; connects on first use, so a database that is
    /// down is reported by the first [`Pg::client`].
    pub fn open(url: &str, settings: PoolSettings) -> Result<Pg> {
        let url = StoreUrl::parse(url)?;
        let tls = tls::connector(&url)?;
        let manager = Manager::from_config(
            url.config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Notices (`... already exists, skipping`) would only be logged; warnings still are.
        let session = format!(
            "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}; \
             SET client_min_messages = warning",
            settings.query_timeout.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.wait_timeout))
            .create_timeout(Some(url.connect_timeout))
            .recycle_timeout(Some(settings.query_timeout))
            .post_create(Hook::async_fn(move |client, _| {
                let session = session.clone();
                Box::pin(async move {
                    client
                        .batch_execute(&session)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| PgError::Connect {
                target: url.target.clone(),
                why: e.to_string(),
            })?;
        Ok(Pg {
            pool,
            url,
            settings,
            tls,
        })
    }

    /// `HOST:PORT/DB`, for messages.
    pub fn target(&self) -> &str {
        &self.url.target
    }

    /// A connection from the pool, opening one if none is free and the pool is not full;
    /// bounded by the wait timeout and the URL's connect timeout.
    pub async fn client(&self) -> Result<Object> {
        let hosts = self.url.config.get_hosts().len().max(1) as u32;
        let bound = self.settings.wait_timeout + self.url.connect_timeout * hosts;
        let connect_timeout = || PgError::ConnectTimeout {
            target: self.url.target.clone(),
            within: self.url.connect_timeout,
        };
        match tokio::time::timeout(bound, self.pool.get()).await {
            Err(_) => Err(connect_timeout()),
            Ok(Ok(client)) => Ok(client),
            Ok(Err(PoolError::Backend(e))) => Err(self.connect_error(&e)),
            Ok(Err(PoolError::Timeout(TimeoutType::Wait))) => Err(PgError::PoolBusy {
                target: self.url.target.clone(),
                max: self.settings.max_connections,
                waited: self.settings.wait_timeout,
            }),
            Ok(Err(PoolError::Timeout(_))) => Err(connect_timeout()),
            Ok(Err(PoolError::PostCreateHook(HookError::Backend(e)))) => Err(self.query_error(&e)),
            Ok(Err(e)) => Err(PgError::Connect {
                target: self.url.target.clone(),
                why: e.to_string(),
            }),
        }
    }

    /// What a failed connection attempt means, by what the server said, if anything.
    fn connect_error(&self, e: &tokio_postgres::Error) -> PgError {
        let target = self.url.target.clone();
        if let Some(db) = e.as_db_error() {
            let message = db_text(db);
            // Class 28: invalid authorization (bad password, no pg_hba.conf entry).
            if db.code().code().starts_with("28") {
                return PgError::Auth {
                    target,
                    user: self.url.user().to_string(),
                    message,
                };
            }
            return PgError::Refused { target, message };
        }
        if timed_out(e) {
            return PgError::ConnectTimeout {
                target,
                within: self.url.connect_timeout,
            };
        }
        PgError::Connect {
            target,
            why: cause_text(e),
        }
    }

    /// What a failed statement means: the server's message and SQLSTATE, or what broke.
    pub(crate) fn query_error(&self, e: &tokio_postgres::Error) -> PgError {
        let message = match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db_text(db), db.code().code()),
            None => cause_text(e),
        };
        PgError::Query {
            target: self.url.target.clone(),
            message,
        }
    }
}

/// `ramp-ca store migrate`: creates or upgrades the schema at `url` on one connection.
pub async fn migrate_url(url: &str) -> Result<Migrated> {
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    migrate(&Pg::open(url, settings)?).await
}

/// The server's message with its detail and hint.
fn db_text(db: &tokio_postgres::error::DbError) -> String {
    let mut text = db.message().to_string();
    for extra in [db.detail(), db.hint()].into_iter().flatten() {
        text.push_str("; ");
        text.push_str(extra);
    }
    text
}

/// What broke, every cause in the chain; tokio-postgres's own "error connecting to server"
/// is left out (the message says that already), and an answer that is not PostgreSQL's
/// protocol says so.
fn cause_text(e: &tokio_postgres::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    if parts.len() > 1 && parts[0] == "error connecting to server" {
        parts.remove(0);
    }
    let mut text = parts.join(": ");
    let garbled = [
        "error parsing response",
        "unexpected message",
        "bytes remaining on stream",
    ];
    if garbled.iter().any(|g| text.contains(g)) {
        text.push_str(" (is it PostgreSQL that listens there?)");
    } else if text.contains("UnknownIssuer") {
        text.push_str(" (the server's certificate does not chain to sslrootcert, or without it to the system's CA certificates)");
    }
    text
}

/// Whether a connection attempt ended on tokio-postgres's own connect timeout.
fn timed_out(e: &tokio_postgres::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}
