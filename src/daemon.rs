//! `ramp-ca serve`: bring an installation up (initialising what is missing), serve until
//! SIGINT/SIGTERM, reload policies on SIGHUP, flush the ledger on the way out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::service::Service;
use crate::Error;

/// How often request nonces too old to matter are forgotten.
const NONCE_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a stop waits for queued webhook events (cut-off sessions among them).
const NOTIFY_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the API listens unless a flag or the config file says otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7400";
/// Where the bastion listens unless a flag or the config file says otherwise.
pub const DEFAULT_SSH: &str = "0.0.0.0:2222";

/// The service config file (`--config F`); flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// API listen address.
    pub api: Option<String>,
    /// Bastion listen address.
    pub ssh: Option<String>,
    /// Receivers of notifications (see [`crate::notify`]); checked as the file is read.
    #[serde(default)]
    pub webhooks: Vec<crate::notify::Webhook>,
    /// MiB kept free on the disk that holds `data/`: below it the bastion refuses new
    /// sessions and ends live ones (nothing runs unrecorded). Default 64.
    pub min_free_mib: Option<u64>,
    /// The web dashboard: session and link lifetimes, public address.
    #[serde(default)]
    pub dashboard: crate::dashboard::Settings,
    /// The bastion: limits per user.
    #[serde(default)]
    pub bastion: crate::bastion::Settings,
    /// Signed checkpoints of the audit chain: how often.
    #[serde(default)]
    pub audit: crate::checkpoint::writer::Settings,
    /// Overdue reviews: how often they are looked for.
    #[serde(default)]
    pub reviews: sweeps::Reviews,
    /// Recordings past their contract's `keep:`: how often, and how many a pass.
    #[serde(default)]
    pub retention: sweeps::Retention,
    /// The API and dashboard over HTTPS: certificate chain and key files (both).
    pub tls: Option<crate::tls::Settings>,
    /// Where the ledger is: `sled` (the default, under DIR/data) or a `postgres://` URL.
    pub store: Option<String>,
    /// PostgreSQL's connection pool on this node.
    #[serde(default)]
    pub store_pool: StorePool,
    /// Where recordings are kept: DIR/data/recordings (the default) or `file:///PATH`, a
    /// directory every node mounts.
    pub recordings: Option<String>,
    /// This node's name (default: the host name).
    pub node: Option<String>,
    /// How long a node's lease lasts unrenewed before other nodes end what it left live,
    /// like `15s` (PostgreSQL only).
    pub node_lease: Option<String>,
}

/// The `store_pool:` section: how many connections this node opens to PostgreSQL at most,
/// and how long a statement may run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorePool {
    /// Connections at most (a grant change holds one until it commits); callers beyond that
    /// wait up to the query timeout for one.
    pub max_connections: usize,
    /// The server-side `statement_timeout` of every statement, like `5s`.
    pub query_timeout: String,
}

impl Default for StorePool {
    fn default() -> StorePool {
        let d = crate::pgstore::PoolSettings::default();
        StorePool {
            max_connections: d.max_connections,
            query_timeout: format!("{}s", d.query_timeout.as_secs()),
        }
    }
}

impl StorePool {
    /// The pool's bounds, or what is wrong with them.
    pub fn settings(&self) -> Result<crate::pgstore::PoolSettings, String> {
        if !(2..=1000).contains(&self.max_connections) {
            return Err(format!(
                "store_pool.max_connections: {} is not between 2 and 1000",
                self.max_connections
            ));
        }
        let timeout = crate::domain::policy::parse_duration(&self.query_timeout)
            .filter(|d| *d >= std::time::Duration::from_secs(1))
            .ok_or_else(|| {
                format!(
                    "store_pool.query_timeout: `{}` is not a duration like 5s, 1m (at least 1s)",
                    self.query_timeout
                )
            })?;
        Ok(crate::pgstore::PoolSettings {
            max_connections: self.max_connections,
            query_timeout: timeout,
            wait_timeout: timeout,
        })
    }
}

impl Config {
    /// Reads and validates a config file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let invalid = |e: String| {
            Error::io(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("invalid config: {e}"),
            ))
        };
        let config: Config = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.dashboard.check().map_err(&invalid)?;
        config.audit.check().map_err(&invalid)?;
        config.reviews.every().map_err(&invalid)?;
        config.retention.check().map_err(&invalid)?;
        config.store_pool.settings().map_err(&invalid)?;
        Ok(config)
    }
}

/// What was given on `serve`'s command line; `None` where the flag was left out.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub api: Option<String>,
    pub ssh: Option<String>,
    pub min_free_mib: Option<u64>,
    pub config: Option<std::path::PathBuf>,
    /// `--store`, or `RAMP_STORE` when the flag is not given (clap reads the variable as the
    /// flag's value, so it ranks with the flag).
    pub store: Option<String>,
    /// `--recordings`, or `RAMP_RECORDINGS` (read by clap as the flag's value).
    pub recordings: Option<String>,
    /// `--node`, or `RAMP_NODE` (ranked with the flag, like `RAMP_STORE`).
    pub node: Option<String>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// A new installation gets demo identities (`--demo`).
    pub demo: bool,
}

/// The settings `serve` runs with. They are merged in [`Settings::merge`] and nowhere else:
/// a flag (or its environment variable) beats the config file, which beats the default, for
/// every option.
#[derive(Debug)]
pub struct Settings {
    pub api: SocketAddr,
    pub ssh: SocketAddr,
    /// Bytes kept free on the recording disk.
    pub min_free: u64,
    pub webhooks: Vec<crate::notify::Webhook>,
    pub dashboard: crate::dashboard::Settings,
    pub bastion: crate::bastion::Settings,
    /// How often the audit chain's head is signed when it grew (config only).
    pub checkpoint_every: std::time::Duration,
    /// How often overdue reviews are looked for (config only).
    pub review_check_every: std::time::Duration,
    /// Retention's passes: how often, and at most how many removals each (config only).
    pub retention_every: std::time::Duration,
    pub retention_per_pass: usize,
    /// Where the ledger is.
    pub store: crate::store::Location,
    /// Where recordings are kept.
    pub recordings: crate::recordings::place::Place,
    /// The API's certificate and key when it serves HTTPS; `None` for plain HTTP.
    pub tls: Option<crate::tls::Settings>,
    /// This node's name.
    pub node: String,
    /// How long this node's lease lasts unrenewed (config only).
    pub node_lease: std::time::Duration,
}

impl Settings {
    /// Reads the config file named by the flags (if any) and merges: flag > file > default.
    pub fn load(flags: &Flags) -> Result<Settings, Error> {
        let file = match &flags.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        Settings::merge(flags, file)
    }

    /// Flag > file > default, option by option.
    pub fn merge(flags: &Flags, file: Config) -> Result<Settings, Error> {
        let pick = |flag: &Option<String>, file: Option<String>, default: &str| {
            flag.clone().or(file).unwrap_or_else(|| default.to_string())
        };
        Ok(Settings {
            api: parse_addr("--api", &pick(&flags.api, file.api, DEFAULT_API))?,
            ssh: parse_addr("--ssh", &pick(&flags.ssh, file.ssh, DEFAULT_SSH))?,
            min_free: flags
                .min_free_mib
                .or(file.min_free_mib)
                .map_or(crate::recordings::writer::DEFAULT_MIN_FREE, |mib| {
                    mib.saturating_mul(1 << 20)
                }),
            webhooks: file.webhooks,
            dashboard: file.dashboard,
            bastion: file.bastion,
            checkpoint_every: file.audit.every().map_err(|e| {
                Error::io("audit")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
            review_check_every: file.reviews.every().map_err(|e| {
                Error::io("reviews")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
            retention_every: file
                .retention
                .check()
                .and_then(|()| file.retention.every())
                .map_err(|e| {
                    Error::io("retention")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?,
            retention_per_pass: file.retention.per_pass,
            store: crate::store::Location::parse(
                flags.store.as_deref().or(file.store.as_deref()),
                file.store_pool.settings().map_err(|e| {
                    Error::io("store_pool")(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        e,
                    ))
                })?,
            )
            .map_err(|e| {
                Error::io("--store")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
            recordings: crate::recordings::place::Place::parse(
                flags.recordings.as_deref().or(file.recordings.as_deref()),
            )
            .map_err(|e| {
                Error::io("--recordings")(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
            tls: merge_tls(flags, file.tls)?,
            node: merge_node(flags.node.as_deref(), file.node.as_deref())?,
            node_lease: match &file.node_lease {
                None => crate::domain::lease::DEFAULT_TERM,
                Some(text) => crate::domain::policy::parse_duration(text)
                    .filter(|d| *d >= std::time::Duration::from_secs(2))
                    .ok_or_else(|| {
                        Error::io("node_lease")(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("`{text}` is not a duration like 15s, 1m (at least 2s)"),
                        ))
                    })?,
            },
        })
    }
}

/// The node's name: the flag (or `RAMP_NODE`), else the file's, else the host name; a
/// name is 1-64 letters, digits, `.`, `-`, `_` (it goes into logs, labels and records).
fn merge_node(flag: Option<&str>, file: Option<&str>) -> Result<String, Error> {
    let name = match flag.or(file).map(str::trim) {
        Some(n) => n.to_string(),
        None => crate::service::host_name(),
    };
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) {
        return Err(Error::Usage(format!(
            "--node `{}`: a node name is 1 to 64 letters, digits, `.`, `-` or `_`",
            crate::shown::Shown(&name)
        )));
    }
    Ok(name)
}

/// The certificate and the key, each flag over the file's; both or neither.
fn merge_tls(
    flags: &Flags,
    file: Option<crate::tls::Settings>,
) -> Result<Option<crate::tls::Settings>, Error> {
    let (file_cert, file_key) = file.map(|t| (t.cert, t.key)).unzip();
    let cert = flags.tls_cert.clone().or(file_cert);
    let key = flags.tls_key.clone().or(file_key);
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::Settings { cert, key })),
        (None, None) => Ok(None),
        (Some(cert), None) => Err(Error::Usage(format!(
            "--tls-cert {} needs --tls-key F, the certificate's private key (or `tls:` in the config file)",
            cert.display()
        ))),
        (None, Some(key)) => Err(Error::Usage(format!(
            "--tls-key {} needs --tls-cert F, the certificate chain it belongs to (or `tls:` in the config file)",
            key.display()
        ))),
    }
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, Error> {
    text.parse().map_err(|_| {
        Error::io(flag)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{text}` is not an address like 127.0.0.1:7400"),
        ))
    })
}

/// Runs the daemon until a stop signal.
pub async fn serve(dir: &Path, flags: &Flags) -> Result<(), Error> {
    let config = Settings::load(flags)?;
    let (api_addr, ssh_addr, min_free) = (config.api, config.ssh, config.min_free);
    // Before anything is created or bound: a bad certificate or key stops `serve` at once.
    let tls = match &config.tls {
        Some(files) => {
            let cert = crate::tls::ServerCert::load(files)?;
            Some((cert.server_config()?, cert))
        }
        None => None,
    };
    let done = crate::install::init::init(dir, flags.demo)?;
    for path in &done.created {
        tracing::info!(path = %path.display(), "created");
    }
    for who in &done.people {
        tracing::info!(%who, "registered in policies/people.yaml");
    }
    if done.kept_policies.is_none() && done.people.is_empty() {
        tracing::warn!("nobody is registered yet: add people to policies/people.yaml (their public key and roles), then reload with SIGHUP; `serve --demo` in an empty directory makes demo identities to try it");
    }
    if let Some(policies) = &done.kept_policies {
        tracing::info!(policies = %policies.display(), "using the policy set there (no examples written into it)");
    }
    tracing::info!(ledger = %config.store.shown(), node = %config.node, recordings = %config.recordings.shown(), "opening the ledger");
    let service =
        Arc::new(Service::open_with(dir, &config.store, &config.node, &config.recordings).await?);
    // Before anything is bound or recovered: a name another running node holds is refused.
    let lease = service.claim_node(config.node_lease).await?;
    if let Some(path) = service.ensure_bastion_cert(Utc::now()).await? {
        tracing::info!(path = %path.display(), "signed the bastion host certificate");
    }
    match service.chain_report().await {
        Ok(r) if r.first_bad.is_none() => {
            tracing::info!(records = r.records, "audit chain intact")
        }
        Ok(r) => {
            tracing::error!(bad = ?r.first_bad, "AUDIT CHAIN BROKEN; run `ramp-ca audit verify`")
        }
        Err(e) => tracing::error!(error = %e, "cannot read the audit chain"),
    }
    let notifier = crate::notify::Notifier::start(service.clone(), &config.webhooks);
    let checkpoints =
        crate::checkpoint::writer::Writer::start(service.clone(), config.checkpoint_every).await;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(Error::io(api_addr.to_string()))?;
    let bound = listener
        .local_addr()
        .map_err(Error::io(api_addr.to_string()))?;
    let ssh_listener = tokio::net::TcpListener::bind(ssh_addr)
        .await
        .map_err(Error::io(ssh_addr.to_string()))?;
    let ssh_bound = ssh_listener
        .local_addr()
        .map_err(Error::io(ssh_addr.to_string()))?;
    // Before anyone can know the daemon is up: until they are handled, these signals kill it
    // without a reload or a drain.
    let mut hup = signal(SignalKind::hangup()).map_err(Error::io("SIGHUP"))?;
    let stops = (
        signal(SignalKind::terminate()).map_err(Error::io("SIGTERM"))?,
        signal(SignalKind::interrupt()).map_err(Error::io("SIGINT"))?,
    );
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(api = %format!("{scheme}://{bound}"), bastion = %ssh_bound, "listening");
    if ssh_bound.ip().is_unspecified() && bound.ip().is_loopback() {
        // The defaults differ on purpose; say so, since it surprises people.
        tracing::info!(
            "the bastion listens on every address (engineers' ssh reaches it there); the API only on loopback, since anyone who reaches it may ask for certificates: expose it deliberately (--api, with --tls-cert and --tls-key)"
        );
    }
    if tls.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(api = %bound, "the API is plain HTTP off loopback: dashboard cookies and answers cross the network in the clear; give --tls-cert and --tls-key");
    }
    crate::oncall_watch::watch_oncall(service.clone(), dir.join("policies").join("oncall.yaml"));
    // Tests and scripts read these two lines to find the ports.
    println!("ramp-ca: API on {scheme}://{bound}");
    println!("ramp-ca: bastion on {ssh_bound}");

    let reloader = service.clone();
    let server_cert = tls.as_ref().map(|(_, cert)| cert.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload_policies() {
                Ok(()) => tracing::info!("policies reloaded"),
                Err(e) => {
                    tracing::error!("policies NOT reloaded, the old ones stay in force:\n{e}")
                }
            }
            if let Some(cert) = &server_cert {
                match cert.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %cert.files().cert.display(), "TLS certificate reloaded")
                    }
                    Err(e) => tracing::error!(
                        "TLS certificate NOT reloaded, the old one stays in use: {e}"
                    ),
                }
            }
        }
    });
    let sweeper = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NONCE_SWEEP);
        loop {
            tick.tick().await;
            match sweeper.forget_old_nonces(Utc::now()).await {
                Ok(n) if n > 0 => tracing::debug!(forgotten = n, "old request nonces"),
                Err(e) => tracing::warn!(error = %e, "cannot forget old request nonces"),
                _ => {}
            }
        }
    });
    sweeps::check_reviews(service.clone(), config.review_check_every);
    sweeps::sweep_retention(
        service.clone(),
        config.retention_every,
        config.retention_per_pass,
    );
    // The lease is kept until the bastion has written its sessions' ends, then released.
    let (lease_stop, lease_stopped) = tokio::sync::watch::channel(false);
    let leaseholder = tokio::spawn(service.clone().keep_lease(lease, lease_stopped));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal(stops).await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let uploads = service.upload_recordings().await;
    let recorders = crate::recordings::writer::Recorders::new(service.clone(), min_free);
    let dashboard = crate::dashboard::Dashboard::new(
        service.clone(),
        recorders.clone(),
        &config.dashboard,
        tls.is_some(),
    )
    .map_err(|e| Error::io("dashboard")(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let bastion = tokio::spawn(crate::bastion::run(
        ssh_listener,
        service.clone(),
        recorders,
        config.bastion.clone(),
        stopped(stop_rx.clone()),
    ));
    let routes = crate::api::router(service.clone()).merge(crate::dashboard::router(dashboard));
    let tls_config = tls.map(|(config, _)| config);
    crate::api::run(listener, routes, tls_config, stopped(stop_rx))
        .await
        .map_err(Error::io(bound.to_string()))?;
    match bastion.await {
        Ok(Err(e)) => tracing::error!(error = %e, "bastion failed"),
        Err(e) => tracing::error!(error = %e, "bastion task failed"),
        Ok(Ok(())) => {}
    }
    // After the bastion wrote its sessions' ends: their recordings go out (bounded).
    if let Some(uploads) = uploads {
        uploads.stop().await;
    }
    let _ = lease_stop.send(true);
    let _ = leaseholder.await;
    // After the bastion wrote its sessions' ends, before the webhooks stop: the last
    // checkpoint covers the stop and goes out.
    checkpoints.stop().await;
    if let Some(notifier) = notifier {
        notifier.stop(NOTIFY_DRAIN).await;
    }
    service.on_disk().await?;
    tracing::info!("stopped; ledger flushed");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal((mut term, mut int): (Signal, Signal)) {
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stop signal received, draining");
}

mod sweeps;
#[cfg(test)]
mod tests;
