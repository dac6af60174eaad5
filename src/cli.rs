//! The command line: flags (clap) and what each command does with them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use crate::client::{self, Client, ClientError};
use crate::grant::State;
use crate::recording::{self, Event as RecEvent, SessionMeta};
use crate::service::{
    GrantView, GrepBody, Outcome, RequestBody, RevokeBody, SessionFilter, SignHostBody,
};
use crate::shown::Shown;
use crate::store::{AuditRecord, AuditReport, Revocation};
use crate::{keys, policy};

/// ramp-ca: staged, short-lived, audited SSH access.
#[derive(Debug, Parser)]
#[command(name = "ramp-ca", version, about, max_term_width = 100)]
pub struct Cli {
    /// Installation root: keys/, policies/, data/.
    #[arg(long, global = true, env = "RAMP_DIR", default_value = ".")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach and sign for the daemon.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Daemon URL.
    #[arg(long, env = "RAMP_SERVER", default_value = "http://127.0.0.1:7400")]
    pub server: String,
    /// Identity key that signs the request (default ~/.ssh/id_ed25519, or ssh-agent).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `sign` and `request` ask for.
#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    #[arg(long)]
    pub contract: Option<String>,
    /// Default: the contract's first step.
    #[arg(long)]
    pub step: Option<String>,
    /// Like 30m; at most the step's max_ttl (default: the step's max_ttl).
    #[arg(long)]
    pub ttl: Option<String>,
    #[arg(long)]
    pub reason: Option<String>,
}

impl StepArgs {
    /// The request body, certifying the signing key when `certify`.
    fn body(self, certify: bool) -> Result<RequestBody> {
        let contract = self.contract.ok_or_else(|| {
            CliError::Usage("--contract C is required (or --grant ID for sign)".into())
        })?;
        Ok(RequestBody {
            contract,
            step: self.step,
            ttl: self.ttl,
            reason: self.reason,
            certify,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create keys/, example policies and demo identities (never overwrites a key).
    Init,
    /// Run the CA API (and bastion) until SIGINT/SIGTERM; initialises what is missing first.
    Serve {
        /// API listen address [default: 127.0.0.1:7400; beats the config file's `api:`].
        #[arg(long, value_name = "ADDR")]
        api: Option<String>,
        /// Bastion listen address [default: 0.0.0.0:2222; beats the config file's `ssh:`].
        #[arg(long, value_name = "ADDR")]
        ssh: Option<String>,
        /// MiB kept free on the disk that holds `data/`: below it new sessions are
        /// refused and live ones ended [default: 64].
        #[arg(long, value_name = "MIB")]
        min_free_mib: Option<u64>,
        /// Service config file (YAML); every flag given beats the file's value.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check or explain policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Request a step and write `<key>-cert.pub` once granted.
    Sign {
        #[command(flatten)]
        ask: StepArgs,
        /// Get a certificate from an existing active grant instead of requesting.
        #[arg(long, conflicts_with_all = ["contract", "step", "ttl", "reason"])]
        grant: Option<String>,
        /// Wait for approvals, then write the certificate.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "15m")]
        timeout: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Request a step without minting a certificate yet.
    Request {
        #[command(flatten)]
        ask: StepArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Approve a pending request.
    Approve {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Deny a pending request (or withdraw your own).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a one-time login link to the web dashboard (it expires within minutes).
    Dashboard {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List grants and pending requests you may see.
    Grants {
        /// Include expired, denied and revoked ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a certificate, a grant (and its certificates) or everything a user holds.
    Revoke {
        #[arg(long, group = "what")]
        serial: Option<u64>,
        #[arg(long, group = "what")]
        grant: Option<String>,
        #[arg(long, group = "what")]
        user: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write an OpenSSH KRL of every revoked certificate.
    Krl {
        /// Output file (default DIR/revoked.krl).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Sign a target's host key with host-ca; writes `<name>-cert.pub` beside the key.
    SignHost {
        #[arg(long)]
        name: String,
        #[arg(long)]
        pubkey: PathBuf,
        /// Validity (default 365d).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Read or verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print what targets and clients need to trust this CA.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Review recorded sessions (ramp-admin or ramp-auditor; every read is audited).
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The ledger's storage: create or upgrade a PostgreSQL schema.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Which sessions a listing or search covers.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// Only sessions started this recently, like 1h.
    #[arg(long)]
    pub since: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<SessionFilter> {
        let since = match self.since {
            Some(s) => Some(
                policy::parse_duration(&s)
                    .ok_or_else(|| {
                        CliError::Usage(format!("--since: bad duration `{s}` (like 1h)"))
                    })?
                    .as_secs() as i64,
            ),
            None => None,
        };
        Ok(SessionFilter {
            user: self.user,
            target: self.target,
            since,
        })
    }
}

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// asciicast v2, for `asciinema play`.
    Asciicast,
    /// Metadata and every event as JSON.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List recorded sessions.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one session's metadata.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Replay a session's output with its real timing.
    Play {
        id: String,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause kept between two events.
        #[arg(long, default_value = "2s")]
        idle_cap: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Export a session (to stdout, or --out F).
    Export {
        id: String,
        #[arg(long, value_enum, default_value = "asciicast")]
        format: ExportFormat,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Search recordings' input and output for a text.
    Grep {
        pattern: String,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory (default DIR/policies); exit 1 listing every problem.
    Check { path: Option<PathBuf> },
    /// Show the decision for a request and the reasons.
    Explain {
        #[arg(long)]
        user: String,
        #[arg(long)]
        contract: String,
        #[arg(long)]
        step: Option<String>,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Assume the user holds an active grant of these steps (repeatable).
        #[arg(long)]
        holding: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, newest last.
    List {
        /// Only records this recent, like 1h.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Verify the hash chain and the recordings' seals; exit 1 naming the first bad record
    /// (and every recording that does not match).
    Verify {
        /// Also check the chain against signed checkpoints kept elsewhere: a file (one or
        /// more checkpoints) or a directory of `*.checkpoint` files; repeatable.
        #[arg(long, value_name = "F")]
        checkpoint: Vec<PathBuf>,
        /// The audit-signer public key the checkpoints must be signed with (`ramp-ca
        /// trust audit-signer`); default: the key the daemon reports.
        #[arg(long, value_name = "KEY.pub", requires = "checkpoint")]
        signer: Option<PathBuf>,
        /// Compare the recordings' seals with the chain, but do not read and hash the
        /// recording files.
        #[arg(long)]
        skip_recordings: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Get a checkpoint of the chain's head signed by the service, to keep elsewhere.
    Checkpoint {
        /// Write it to this file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// sshd_config lines and the node-ca key for targets.
    Sshd,
    /// The @cert-authority line for clients' known_hosts.
    KnownHosts,
    /// The public key that signs audit checkpoints, for auditors to pin.
    AuditSigner,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create or upgrade the schema of a PostgreSQL ledger (versioned migrations, each
    /// applied once however many nodes run this at a time).
    Migrate {
        /// postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=...], as libpq takes it.
        #[arg(long, env = "RAMP_STORE")]
        store: String,
    },
}

/// Why a command failed; the exit code follows from it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Refused or invalid: exit 1.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Lib(#[from] crate::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<crate::keys::KeyError> for CliError {
    fn from(e: crate::keys::KeyError) -> Self {
        CliError::Lib(e.into())
    }
}

type Result<T = ()> = std::result::Result<T, CliError>;

/// Runs one command.
pub async fn run(cli: Cli) -> Result {
    let dir = cli.dir;
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "ramp-ca", &mut std::io::stdout());
            Ok(())
        }
        Command::Init => {
            let done = crate::init::init(&dir)?;
            let keys = crate::keys::Keys::load(&dir.join("keys"))?;
            let store = crate::store::Store::open(&dir.join("data")).map_err(crate::Error::from)?;
            let cert = crate::init::ensure_bastion_cert(&dir, &keys, &store, Utc::now())?;
            store.flush().map_err(crate::Error::from)?;
            for path in done.created.iter().chain(cert.iter()) {
                println!("created {}", path.display());
            }
            match &done.kept_policies {
                Some(policies) => println!(
                    "{} holds a policy set: left as it is (examples are written into a new, empty policies directory only)",
                    policies.display()
                ),
                None => println!(
                    "wrote example policies into {} (a new installation)",
                    dir.join("policies").display()
                ),
            }
            if done.created.is_empty() && cert.is_none() {
                println!("{} is already initialised; nothing changed", dir.display());
            }
            Ok(())
        }
        Command::Serve {
            api,
            ssh,
            min_free_mib,
            config,
        } => {
            let flags = crate::daemon::Flags {
                api,
                ssh,
                min_free_mib,
                config,
            };
            crate::daemon::serve(&dir, &flags)
                .await
                .map_err(CliError::Lib)
        }
        Command::Policy(cmd) => policy_command(&dir, cmd),
        Command::Store(StoreCommand::Migrate { store }) => {
            let done = crate::pgstore::migrate_url(&store)
                .await
                .map_err(crate::Error::from)?;
            println!("{done}");
            Ok(())
        }
        Command::Trust(TrustCommand::Sshd) => {
            print!("{}", crate::trust::sshd(&dir)?);
            Ok(())
        }
        Command::Trust(TrustCommand::KnownHosts) => {
            print!("{}", crate::trust::known_hosts(&dir)?);
            Ok(())
        }
        Command::Trust(TrustCommand::AuditSigner) => {
            print!("{}", crate::trust::audit_signer(&dir)?);
            Ok(())
        }
        Command::Sign {
            ask,
            grant,
            wait,
            timeout,
            client,
        } => {
            let timeout = policy::parse_duration(&timeout)
                .ok_or_else(|| CliError::Usage(format!("--timeout: bad duration `{timeout}`")))?;
            sign(&client, ask, grant, wait, timeout).await
        }
        Command::Request { ask, client: opts } => {
            let body = ask.body(false)?;
            let client = connect(&opts).await?;
            let out: Outcome = client
                .call(Method::POST, "/v1/requests", Some(&body))
                .await?;
            emit(&opts, &out, || describe_grant(&out.grant))
        }
        Command::Approve { id, client: opts } => {
            let client = connect(&opts).await?;
            let out: Outcome = client
                .call(
                    Method::POST,
                    &format!("/v1/grants/{id}/approve"),
                    Some(&json!({})),
                )
                .await?;
            emit(&opts, &out, || describe_grant(&out.grant))
        }
        Command::Deny {
            id,
            reason,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let out: GrantView = client
                .call(
                    Method::POST,
                    &format!("/v1/grants/{id}/deny"),
                    Some(&json!({ "reason": reason })),
                )
                .await?;
            emit(&opts, &out, || describe_grant(&out))
        }
        Command::Dashboard { client: opts } => {
            let client = connect(&opts).await?;
            let mut out: serde_json::Value = client
                .call(Method::POST, "/v1/dashboard/link", Some(&json!({})))
                .await?;
            if out["url"].is_null() {
                let path = out["path"].as_str().unwrap_or_default();
                out["url"] = json!(format!("{}{path}", opts.server.trim_end_matches('/')));
            }
            let url = out["url"].as_str().unwrap_or_default().to_string();
            let expires = out["expires"].as_str().unwrap_or_default().to_string();
            emit(&opts, &out, || {
                format!(
                    "{url}\n(open it once, before {expires}; it logs you in as the key's owner)\n"
                )
            })
        }
        Command::Grants { all, client: opts } => {
            let client = connect(&opts).await?;
            let path = if all {
                "/v1/grants?all=true"
            } else {
                "/v1/grants"
            };
            let out: Vec<GrantView> = client.call(Method::GET, path, None::<&()>).await?;
            emit(&opts, &out, || grants_table(&out, Utc::now()))
        }
        Command::Revoke {
            serial,
            grant,
            user,
            reason,
            client: opts,
        } => {
            if serial.is_none() && grant.is_none() && user.is_none() {
                return Err(CliError::Usage(
                    "revoke needs --serial N, --grant ID or --user U".into(),
                ));
            }
            let client = connect(&opts).await?;
            let body = RevokeBody {
                serial,
                grant,
                user,
                reason,
            };
            let out: Revocation = client.call(Method::POST, "/v1/revoke", Some(&body)).await?;
            emit(&opts, &out, || {
                format!(
                    "revoked {} certificate(s) {:?} and {} grant(s) {:?}\nship the new KRL to targets: ramp-ca krl\n",
                    out.serials.len(),
                    out.serials,
                    out.grants.len(),
                    out.grants
                )
            })
        }
        Command::Krl { out, client: opts } => {
            let client = connect(&opts).await?;
            let bytes = client.send(Method::GET, "/v1/krl", None::<&()>).await?;
            let path = out.unwrap_or_else(|| dir.join("revoked.krl"));
            write_atomic(&path, &bytes)?;
            emit(&opts, &json!({"path": path, "bytes": bytes.len()}), || {
                format!("wrote {} ({} bytes)\n", path.display(), bytes.len())
            })
        }
        Command::SignHost {
            name,
            pubkey,
            ttl,
            client: opts,
        } => {
            let public_key = std::fs::read_to_string(&pubkey).map_err(crate::Error::io(&pubkey))?;
            keys::parse_public(&public_key).map_err(|e| {
                CliError::Refused(format!(
                    "{}: not an OpenSSH public key: {e}",
                    pubkey.display()
                ))
            })?;
            let client = connect(&opts).await?;
            let body = SignHostBody {
                name,
                public_key,
                ttl,
            };
            let out: serde_json::Value = client
                .call(Method::POST, "/v1/hosts/sign", Some(&body))
                .await?;
            let cert = out["certificate"].as_str().unwrap_or_default();
            let path = host_cert_path(&pubkey);
            write_atomic(&path, format!("{cert}\n").as_bytes())?;
            emit(&opts, &json!({"path": path, "certificate": cert}), || {
                format!("wrote {}\n", path.display())
            })
        }
        Command::Sessions(cmd) => sessions_command(cmd).await,
        Command::Audit(AuditCommand::List {
            since,
            client: opts,
        }) => {
            let path = match since {
                Some(s) => {
                    let d = policy::parse_duration(&s).ok_or_else(|| {
                        CliError::Usage(format!("--since: bad duration `{s}` (like 1h)"))
                    })?;
                    format!("/v1/audit?since={}", d.as_secs())
                }
                None => "/v1/audit".into(),
            };
            let client = connect(&opts).await?;
            let out: Vec<AuditRecord> = client.call(Method::GET, &path, None::<&()>).await?;
            emit(&opts, &out, || audit_table(&out))
        }
        Command::Audit(AuditCommand::Verify {
            checkpoint,
            signer,
            skip_recordings,
            client: opts,
        }) => audit_verify(&opts, &checkpoint, signer.as_deref(), skip_recordings).await,
        Command::Audit(AuditCommand::Checkpoint { out, client: opts }) => {
            audit_checkpoint(&opts, out.as_deref()).await
        }
    }
}

/// `audit verify`: the daemon's verdict on the chain and the recordings' seals, then the
/// checkpoints given, checked here; exit 1 names every problem.
async fn audit_verify(
    opts: &ClientOpts,
    checkpoint: &[PathBuf],
    signer: Option<&Path>,
    skip_recordings: bool,
) -> Result {
    let client = connect(opts).await?;
    let path = if skip_recordings {
        "/v1/audit/verify?skip_recordings=true"
    } else {
        "/v1/audit/verify"
    };
    let out: AuditReport = client.call(Method::GET, path, None::<&()>).await?;
    if let Some(bad) = &out.first_bad {
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        return Err(CliError::Refused(format!(
            "audit chain broken at record {}: {}",
            bad.seq, bad.reason
        )));
    }
    let mut problems: Vec<String> = out
        .recordings
        .iter()
        .flat_map(|r| &r.bad)
        .map(|b| b.reason.clone())
        .collect();
    let checked = if checkpoint.is_empty() {
        Vec::new()
    } else {
        match verify_checkpoints(&client, checkpoint, signer).await {
            Ok(checked) => checked,
            Err(CliError::Refused(why)) => {
                problems.push(why);
                Vec::new()
            }
            Err(e) => return Err(e),
        }
    };
    let mut value = serde_json::to_value(&out).unwrap_or_default();
    if !checkpoint.is_empty() {
        value["checkpoints"] = json!(checked);
    }
    emit(opts, &value, || {
        let mut text = format!("audit chain intact: {} records\n", out.records);
        if let Some(r) = out.recordings.as_ref().filter(|r| r.bad.is_empty()) {
            text.push_str(&if r.files {
                format!("recordings intact: {} finished sessions, each file matching its seal in the audit chain\n", r.sessions)
            } else {
                format!("recording seals intact: {} finished sessions, each seal matching the audit chain (files not read)\n", r.sessions)
            });
        }
        for c in &checked {
            text.push_str(&format!("{c}\n"));
        }
        text
    })?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Refused(problems.join("\n")))
    }
}

/// `audit checkpoint`: one signed now, written to `out` or stdout.
async fn audit_checkpoint(opts: &ClientOpts, out: Option<&Path>) -> Result {
    let client = connect(opts).await?;
    let got: serde_json::Value = client
        .call(Method::GET, "/v1/audit/checkpoint", None::<&()>)
        .await?;
    // Written as read back, so only a well-formed checkpoint reaches the file or terminal.
    let text = crate::checkpoint::Signed::parse_all(got["checkpoint"].as_str().unwrap_or_default())
        .ok()
        .and_then(|all| all.into_iter().next())
        .map(|c| c.text())
        .ok_or_else(|| CliError::Refused("the daemon sent no well-formed checkpoint".into()))?;
    match &out {
        Some(path) => {
            write_atomic(path, text.as_bytes())?;
            emit(opts, &got, || {
                format!(
                    "wrote {}: record {} signed by {}\n",
                    path.display(),
                    got["seq"],
                    got["signer"].as_str().unwrap_or_default()
                )
            })
        }
        None if opts.json => emit(opts, &got, String::new),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Reads checkpoint files (a file may hold several; a directory, every `*.checkpoint` in
/// it), each named by its file (and its place in it when a file holds more than one).
fn read_checkpoints(paths: &[PathBuf]) -> Result<Vec<crate::checkpoint::Sourced>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(crate::Error::io(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "checkpoint"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(crate::Error::io(&file))?;
        let all = crate::checkpoint::Signed::parse_all(&text).map_err(|e| {
            CliError::Refused(format!("{}: not a ramp-ca checkpoint: {e}", file.display()))
        })?;
        let several = all.len() > 1;
        for (i, signed) in all.into_iter().enumerate() {
            let source = match several {
                true => format!("{}#{}", file.display(), i + 1),
                false => file.display().to_string(),
            };
            out.push(crate::checkpoint::Sourced { source, signed });
        }
    }
    if out.is_empty() {
        return Err(CliError::Refused(
            "--checkpoint: no checkpoint files found".into(),
        ));
    }
    Ok(out)
}

/// Checks checkpoints an auditor keeps against the chain, here rather than in the daemon:
/// each must be signed by the audit-signer (`--signer`, else the key the daemon reports),
/// and the records the daemon sends must re-hash, link, and reach every checkpoint's
/// record with its hash. Returns what matched; `Refused` names the first failure.
async fn verify_checkpoints(
    client: &Client,
    paths: &[PathBuf],
    signer: Option<&Path>,
) -> Result<Vec<CheckedCheckpoint>> {
    let checkpoints = read_checkpoints(paths)?;
    let key = match signer {
        Some(path) => keys::read_public(path)?,
        None => {
            let got: serde_json::Value = client
                .call(Method::GET, "/v1/audit/signer", None::<&()>)
                .await?;
            let line = got["signer_key"].as_str().unwrap_or_default();
            keys::parse_public(line).map_err(|e| {
                CliError::Refused(format!(
                    "the daemon reports no usable audit-signer key: {e}"
                ))
            })?
        }
    };
    for c in &checkpoints {
        c.signed.verify(&key).map_err(|e| {
            CliError::Refused(format!(
                "checkpoint {} (record {}) is refused: {e}",
                c.source, c.signed.checkpoint.seq
            ))
        })?;
    }
    let upto = checkpoints
        .iter()
        .map(|c| c.signed.checkpoint.seq)
        .max()
        .unwrap_or(0);
    let records: Vec<AuditRecord> = client
        .call(Method::GET, &format!("/v1/audit?upto={upto}"), None::<&()>)
        .await?;
    crate::checkpoint::check_chain(records, &checkpoints).map_err(|bad| {
        CliError::Refused(format!(
            "audit chain does not match its checkpoints at record {}: {}",
            bad.seq, bad.reason
        ))
    })?;
    let fingerprint = keys::fingerprint(&key);
    Ok(checkpoints
        .iter()
        .map(|c| CheckedCheckpoint {
            source: c.source.clone(),
            seq: c.signed.checkpoint.seq,
            at: c.signed.checkpoint.at,
            signer: fingerprint.clone(),
            pinned: signer.is_some(),
        })
        .collect())
}

/// A checkpoint the chain matches, as `audit verify --checkpoint` reports it.
#[derive(Debug, Serialize)]
struct CheckedCheckpoint {
    /// The file (and its place in it when a file holds several).
    source: String,
    /// The record it vouches for.
    seq: u64,
    at: DateTime<Utc>,
    /// The audit-signer key it is signed with.
    signer: String,
    /// Whether that key was given with `--signer` (else the daemon reported it).
    pinned: bool,
}

impl std::fmt::Display for CheckedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match self.pinned {
            true => "pinned with --signer",
            false => "the key the daemon reports; pin it with --signer KEY.pub",
        };
        write!(
            f,
            "checkpoint {}: record {} matches (signed {} by {}, {whose})",
            self.source,
            self.seq,
            rfc3339(self.at),
            self.signer
        )
    }
}

/// Prints JSON with `--json`, else the text `human` makes.
fn emit<T: Serialize>(opts: &ClientOpts, value: &T, human: impl FnOnce() -> String) -> Result {
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", human());
    }
    Ok(())
}

async fn connect(opts: &ClientOpts) -> Result<Client> {
    let path = opts.key.clone().unwrap_or_else(client::default_key_path);
    let signer = client::signer_for(&path).await?;
    Ok(Client::new(&opts.server, signer))
}

async fn sign(
    opts: &ClientOpts,
    ask: StepArgs,
    grant: Option<String>,
    wait: bool,
    timeout: Duration,
) -> Result {
    let key_path = opts.key.clone().unwrap_or_else(client::default_key_path);
    let body = match &grant {
        Some(_) => None,
        None => Some(ask.body(true)?),
    };
    let client = connect(opts).await?;
    let mut out: Outcome = match grant {
        // A pending request is waited on (or reported); anything else asks for a certificate.
        Some(id) => {
            let view: GrantView = client
                .call(Method::GET, &format!("/v1/grants/{id}"), None::<&()>)
                .await?;
            if view.state == State::Pending && !wait {
                return Err(CliError::Refused(format!(
                    "grant `{id}` is still pending: {} of {} approvals; wait for it with: ramp-ca sign --grant {id} --wait",
                    view.grant.approvals.len(),
                    view.grant.approvals_needed
                )));
            }
            if view.state == State::Pending {
                Outcome {
                    grant: view,
                    certificate: None,
                    serial: None,
                    reasons: Vec::new(),
                    existing: true,
                }
            } else {
                client
                    .call(
                        Method::POST,
                        &format!("/v1/grants/{id}/certificate"),
                        Some(&json!({})),
                    )
                    .await?
            }
        }
        None => {
            client
                .call(Method::POST, "/v1/requests", body.as_ref())
                .await?
        }
    };
    if out.certificate.is_none() && out.grant.state == State::Pending {
        let id = out.grant.grant.id.clone();
        let pick_up = format!(
            "ramp-ca sign --grant {id}{}",
            opts.key
                .as_ref()
                .map(|k| format!(" --key {}", k.display()))
                .unwrap_or_default()
        );
        if !wait {
            return emit(opts, &out, || {
                format!(
                    "{}{}once approved, pick the certificate up with: {pick_up}\n(or wait for it now: {pick_up} --wait)\n",
                    describe_grant(&out.grant),
                    reasons_text(&out.reasons)
                )
            });
        }
        eprintln!(
            "{}{}waiting for approval (up to {})...",
            describe_grant(&out.grant),
            reasons_text(&out.reasons),
            policy::format_duration(timeout)
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A long poll: the daemon answers once the request is decided, or after a while.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let poll = left
                .as_secs()
                .clamp(1, crate::service::MAX_GRANT_WAIT.as_secs());
            let view: GrantView = client
                .call(
                    Method::GET,
                    &format!("/v1/grants/{id}?wait={poll}"),
                    None::<&()>,
                )
                .await?;
            match view.state {
                State::Pending if tokio::time::Instant::now() < deadline => continue,
                State::Pending => {
                    return Err(CliError::Refused(format!(
                        "request {id} is still pending after {} ({} of {} approvals); it stays filed: pick the certificate up once approved with: {pick_up}",
                        policy::format_duration(timeout),
                        view.grant.approvals.len(),
                        view.grant.approvals_needed
                    )))
                }
                State::Active => break,
                other => {
                    let why = view
                        .grant
                        .closed
                        .map(|c| format!(" by {}: {}", c.by, c.reason))
                        .unwrap_or_default();
                    return Err(CliError::Refused(format!("request {id} was {other}{why}")));
                }
            }
        }
        out = client
            .call(
                Method::POST,
                &format!("/v1/grants/{id}/certificate"),
                Some(&json!({})),
            )
            .await?;
    }
    let Some(cert) = &out.certificate else {
        return Err(CliError::Refused(format!(
            "grant {} is {}; no certificate",
            out.grant.grant.id, out.grant.state
        )));
    };
    let path = keys::cert_path(&key_path);
    write_atomic(&path, format!("{cert}\n").as_bytes())?;
    let parsed = keys::read_certificate(&path)?;
    emit(
        opts,
        &json!({"grant": out.grant, "serial": out.serial, "certificate": cert, "path": path}),
        || {
            format!(
                "{}{}certificate serial {} for {} valid until {}\nwrote {}\n",
                describe_grant(&out.grant),
                if out.existing {
                    reasons_text(&out.reasons)
                } else {
                    String::new()
                },
                parsed.serial(),
                parsed.valid_principals().join(","),
                unix_time(parsed.valid_before()),
                path.display()
            )
        },
    )
}

/// Fetches a session's metadata and events, naming why (show, play, export) for the audit.
async fn fetch_session(
    client: &Client,
    id: &str,
    purpose: &str,
) -> Result<(SessionMeta, Vec<RecEvent>)> {
    let out: serde_json::Value = client
        .call(
            Method::GET,
            &format!("/v1/sessions/{id}?purpose={purpose}"),
            None::<&()>,
        )
        .await?;
    let bad = |why: String| {
        CliError::Client(ClientError::Refused {
            status: 0,
            message: format!("malformed session from the daemon: {why}"),
        })
    };
    let meta: SessionMeta =
        serde_json::from_value(out["session"].clone()).map_err(|e| bad(e.to_string()))?;
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        out["events"].as_str().unwrap_or_default(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let events = recording::decode_events(&raw).map_err(|e| bad(e.to_string()))?;
    Ok((meta, events))
}

async fn sessions_command(cmd: SessionsCommand) -> Result {
    match cmd {
        SessionsCommand::List {
            filter,
            client: opts,
        } => {
            let query = serde_urlencoded::to_string(filter.filter()?).unwrap_or_default();
            let client = connect(&opts).await?;
            let out: Vec<SessionMeta> = client
                .call(Method::GET, &format!("/v1/sessions?{query}"), None::<&()>)
                .await?;
            emit(&opts, &out, || sessions_table(&out))
        }
        SessionsCommand::Show { id, client: opts } => {
            let client = connect(&opts).await?;
            let (meta, events) = fetch_session(&client, &id, "show").await?;
            emit(&opts, &meta, || describe_session(&meta, events.len()))
        }
        SessionsCommand::Play {
            id,
            speed,
            idle_cap,
            client: opts,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                return Err(CliError::Usage("--speed must be a positive number".into()));
            }
            let cap = policy::parse_duration(&idle_cap)
                .ok_or_else(|| CliError::Usage(format!("--idle-cap: bad duration `{idle_cap}`")))?;
            let client = connect(&opts).await?;
            let (_, events) = fetch_session(&client, &id, "play").await?;
            let mut stdout = tokio::io::stdout();
            crate::review::play(&events, speed, cap, &mut stdout)
                .await
                .map_err(crate::Error::io("stdout"))?;
            Ok(())
        }
        SessionsCommand::Export {
            id,
            format,
            out,
            client: opts,
        } => {
            let client = connect(&opts).await?;
            let (meta, events) = fetch_session(&client, &id, "export").await?;
            let text = match format {
                ExportFormat::Asciicast => crate::review::to_asciicast(&meta, &events),
                ExportFormat::Json => {
                    serde_json::to_string_pretty(&crate::review::to_json(&meta, &events))
                        .unwrap_or_default()
                        + "\n"
                }
            };
            match out {
                Some(path) => write_atomic(&path, text.as_bytes()),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        SessionsCommand::Grep {
            pattern,
            filter,
            client: opts,
        } => {
            let body = GrepBody {
                pattern,
                filter: filter.filter()?,
            };
            let client = connect(&opts).await?;
            let hits: Vec<crate::review::Hit> = client
                .call(Method::POST, "/v1/sessions/grep", Some(&body))
                .await?;
            emit(&opts, &hits, || {
                let mut out = String::new();
                for h in &hits {
                    out.push_str(&format!(
                        "{} +{:.1}s: {}\n",
                        Shown(&h.session),
                        h.at_ms as f64 / 1000.0,
                        Shown(&h.line)
                    ));
                }
                if hits.is_empty() {
                    out.push_str("no matches\n");
                }
                out
            })
        }
    }
}

fn sessions_table(sessions: &[SessionMeta]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let mut out = format!(
        "{:<13} {:<20} {:<8} {:<18} {:<10} {:<12} {:<10} {}\n",
        "ID", "START", "USER", "PRINCIPAL@TARGET", "KIND", "STATE", "EXIT", "COMMAND"
    );
    for s in sessions {
        out.push_str(&format!(
            "{:<13} {:<20} {:<8} {:<18} {:<10} {:<12} {:<10} {}\n",
            Shown(&s.id),
            s.start.format("%Y-%m-%dT%H:%M:%SZ"),
            Shown(&s.user),
            Shown(&format!("{}@{}", s.principal, s.target)),
            Shown(&s.kind),
            s.state.to_string(),
            s.exit_status.map_or("-".into(), |c| c.to_string()),
            Shown(s.command.as_deref().unwrap_or(""))
        ));
    }
    out
}

fn describe_session(s: &SessionMeta, events: usize) -> String {
    let mut out = format!(
        "session   {}\nuser      {} (grant {}, serial {}, key id {})\nlogin     {}@{} from {}\nkind      {} {}\nstart     {}\nend       {}\nstate     {}{}\nexit      {}\nbytes     {} in, {} out, {} events\n",
        Shown(&s.id),
        Shown(&s.user),
        Shown(&s.grant),
        s.serial,
        Shown(&s.key_id),
        Shown(&s.principal),
        Shown(&s.target),
        Shown(&s.client),
        Shown(&s.kind),
        Shown(s.command.as_deref().unwrap_or("")),
        rfc3339(s.start),
        s.end.map(rfc3339).unwrap_or_else(|| "-".into()),
        s.state,
        s.end_reason
            .as_ref()
            .map(|r| format!(" ({})", Shown(r)))
            .unwrap_or_default(),
        s.exit_status.map_or("-".into(), |c| c.to_string()),
        s.bytes_in,
        s.bytes_out,
        events
    );
    for e in &s.env {
        out.push_str(&format!("env       {}\n", Shown(e)));
    }
    for f in &s.files {
        out.push_str(&format!("file      {}\n", Shown(f)));
    }
    out
}

fn policy_command(dir: &Path, cmd: PolicyCommand) -> Result {
    match cmd {
        PolicyCommand::Check { path } => {
            let path = path.unwrap_or_else(|| dir.join("policies"));
            let p = policy::load_dir(&path)
                .map_err(|e| CliError::Refused(format!("{e}\n{} problem(s) found", e.0.len())))?;
            println!(
                "{}: ok ({} users, {} hosts, {} contracts)",
                path.display(),
                p.users.len(),
                p.hosts.len(),
                p.contracts.len()
            );
            Ok(())
        }
        PolicyCommand::Explain {
            user,
            contract,
            step,
            ttl,
            reason,
            holding,
            json,
        } => {
            let p = policy::load_dir(&dir.join("policies")).map_err(crate::Error::from)?;
            let ttl = match ttl {
                Some(t) => Some(
                    policy::parse_duration(&t)
                        .ok_or_else(|| CliError::Usage(format!("--ttl: bad duration `{t}`")))?,
                ),
                None => None,
            };
            let now = Utc::now();
            let end = now + chrono::Duration::days(1);
            let held: Vec<policy::Held<'_>> = holding
                .iter()
                .map(|s| policy::Held {
                    contract: &contract,
                    step: s,
                    end,
                })
                .collect();
            let req = policy::Request {
                user: &user,
                contract: &contract,
                step: step.as_deref(),
                reason: reason.as_deref().or(Some("(explain)")),
                ttl,
            };
            let d = policy::decide(&p, &req, &held, now);
            let (verdict, refused) = match &d {
                policy::Decision::Grant { step, ttl, .. } => (
                    format!(
                        "GRANT {contract}/{step} for {}",
                        policy::format_duration(*ttl)
                    ),
                    false,
                ),
                policy::Decision::NeedsApproval {
                    step,
                    ttl,
                    from,
                    count,
                    ..
                } => (
                    format!(
                        "NEEDS APPROVAL {contract}/{step} for {}: {count} from {}",
                        policy::format_duration(*ttl),
                        from.join(", ")
                    ),
                    false,
                ),
                policy::Decision::Deny { reason, .. } => (format!("DENY: {reason}"), true),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"decision": verdict, "reasons": d.reasons()})
                    )
                    .unwrap_or_default()
                );
            } else {
                println!("{verdict}");
                for r in d.reasons() {
                    println!("  - {r}");
                }
                if reason.is_none() {
                    println!("  (assumed a reason was given; pass --reason to check it)");
                }
            }
            if refused {
                return Err(CliError::Refused("denied".into()));
            }
            Ok(())
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(crate::Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(crate::Error::io(path))?;
    Ok(())
}

/// `ssh_host_ed25519_key.pub` -> `ssh_host_ed25519_key-cert.pub`, as ssh-keygen names it.
fn host_cert_path(pubkey: &Path) -> PathBuf {
    let s = pubkey.to_string_lossy();
    PathBuf::from(format!("{}-cert.pub", s.strip_suffix(".pub").unwrap_or(&s)))
}

fn unix_time(secs: u64) -> String {
    DateTime::<Utc>::from_timestamp(secs as i64, 0).map_or_else(|| secs.to_string(), rfc3339)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The policy's reasons worth repeating to the person who asked (the last one: why this
/// answer), as an indented line.
fn reasons_text(reasons: &[String]) -> String {
    reasons
        .last()
        .map(|r| format!("  {}\n", Shown(r)))
        .unwrap_or_default()
}

fn describe_grant(g: &GrantView) -> String {
    let gr = &g.grant;
    let mut s = format!(
        "{} {}/{} for {}: {}",
        gr.id, gr.contract, gr.step, gr.user, g.state
    );
    match g.state {
        State::Active => s.push_str(&format!(
            " until {}",
            gr.end.map(rfc3339).unwrap_or_default()
        )),
        State::Pending => s.push_str(&format!(
            " ({} of {} approvals from {})",
            gr.approvals.len(),
            gr.approvals_needed,
            gr.approvals_from.join(", ")
        )),
        _ => {
            if let Some(c) = &gr.closed {
                s.push_str(&format!(" by {}: {}", Shown(&c.by), Shown(&c.reason)));
            }
        }
    }
    s.push('\n');
    s
}

fn grants_table(grants: &[GrantView], now: DateTime<Utc>) -> String {
    if grants.is_empty() {
        return "no grants\n".into();
    }
    let mut out = format!(
        "{:<13} {:<10} {:<24} {:<9} {:<10} {}\n",
        "ID", "USER", "CONTRACT/STEP", "STATE", "LEFT", "PRINCIPALS"
    );
    for g in grants {
        let left = match (g.state, g.grant.end) {
            (State::Active, Some(end)) => policy::format_duration(Duration::from_secs(
                (end - now).num_seconds().max(0) as u64,
            )),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<13} {:<10} {:<24} {:<9} {:<10} {}\n",
            g.grant.id,
            g.grant.user,
            format!("{}/{}", g.grant.contract, g.grant.step),
            g.state.to_string(),
            left,
            g.principals.join(",")
        ));
    }
    out
}

fn audit_table(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "{:>6} {} {:<10} {:<16} {:<14} {}\n",
            r.seq,
            r.at.format("%Y-%m-%dT%H:%M:%SZ"),
            Shown(&r.actor),
            Shown(&r.action),
            Shown(&r.subject),
            Shown(&r.detail.to_string())
        ));
    }
    if out.is_empty() {
        out.push_str("no audit records\n");
    }
    out
}
