//! The command line: [`args`] says what each command takes; the modules here do the work.
//! Local commands ([`Command::Init`], `serve`, `policy`, `trust`) read `--dir`; client
//! commands talk to the daemon through [`crate::client`], over the paths and bodies of
//! [`crate::wire`], and print text or `--json` (`output`).

pub mod args;
mod audit;
mod extend;
mod grants;
mod output;
mod policy;
mod review;
mod sessions;
mod ssh_config;

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;

use crate::client::{self, Client, ClientError};

pub use self::args::{
    AuditCommand, Cli, ClientOpts, Command, ExportFormat, FilterArgs, PolicyCommand,
    SessionsCommand, StepArgs, StoreCommand, TrustCommand,
};

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
            CliError::Usage(_) | CliError::Lib(crate::Error::Usage(_)) => 2,
            _ => 1,
        }
    }
}

impl From<crate::install::keys::KeyError> for CliError {
    fn from(e: crate::install::keys::KeyError) -> Self {
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
        Command::Init { demo } => init(&dir, demo).await,
        Command::Serve {
            api,
            ssh,
            min_free_mib,
            config,
            store,
            recordings,
            node,
            tls_cert,
            tls_key,
            demo,
        } => {
            let flags = crate::daemon::Flags {
                api,
                ssh,
                min_free_mib,
                config,
                store,
                recordings,
                node,
                tls_cert,
                tls_key,
                demo,
            };
            crate::daemon::serve(&dir, &flags)
                .await
                .map_err(CliError::Lib)
        }
        Command::Policy(cmd) => policy::run(&dir, cmd),
        Command::Store(StoreCommand::Migrate { store }) => {
            let done = crate::pgstore::migrate_url(&store)
                .await
                .map_err(crate::Error::from)?;
            println!("{done}");
            Ok(())
        }
        Command::Store(StoreCommand::Copy { from, to }) => store_copy(&dir, &from, &to).await,
        Command::Trust(cmd) => {
            let text = match cmd {
                TrustCommand::Sshd => crate::install::trust::sshd(&dir)?,
                TrustCommand::KnownHosts => crate::install::trust::known_hosts(&dir)?,
                TrustCommand::AuditSigner => crate::install::trust::audit_signer(&dir)?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Sign {
            ask,
            grant,
            wait,
            timeout,
            no_agent,
            client,
        } => {
            let timeout = crate::domain::policy::parse_duration(&timeout)
                .ok_or_else(|| CliError::Usage(format!("--timeout: bad duration `{timeout}`")))?;
            grants::sign(&client, ask, grant, wait, timeout, !no_agent).await
        }
        Command::Extend {
            grant,
            ttl,
            reason,
            wait,
            timeout,
            no_agent,
            client,
        } => {
            let timeout = crate::domain::policy::parse_duration(&timeout)
                .ok_or_else(|| CliError::Usage(format!("--timeout: bad duration `{timeout}`")))?;
            let body = crate::wire::grants::ExtendBody {
                ttl,
                reason,
                certify: false,
            };
            extend::extend(&client, &grant, body, wait, timeout, !no_agent).await
        }
        Command::SshConfig {
            bastion,
            out,
            client,
        } => ssh_config::ssh_config(&client, bastion.as_deref(), out.as_deref()).await,
        Command::Request { ask, client } => grants::request(&client, ask).await,
        Command::Approve { id, client } => grants::approve(&client, &id).await,
        Command::Deny { id, reason, client } => grants::deny(&client, &id, reason).await,
        Command::Dashboard { client } => grants::dashboard(&client).await,
        Command::Grants { all, client } => grants::list(&client, all).await,
        Command::Revoke {
            serial,
            grant,
            user,
            reason,
            dry_run,
            client,
        } => {
            let body = crate::wire::grants::RevokeBody {
                serial,
                grant,
                user,
                reason,
                dry_run,
            };
            grants::revoke(&client, body).await
        }
        Command::Krl { out, client } => {
            let path = out.unwrap_or_else(|| dir.join("revoked.krl"));
            grants::krl(&client, &path).await
        }
        Command::SignHost {
            name,
            pubkey,
            ttl,
            client,
        } => grants::sign_host(&client, name, &pubkey, ttl).await,
        Command::Sessions(cmd) => sessions::run(cmd).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Report {
            since,
            format,
            client,
        } => review::report(&since, format, client).await,
    }
}

/// `init`: what is missing under `dir`, and what was done.
async fn init(dir: &Path, demo: bool) -> Result {
    let (done, cert) = crate::service::initialise(dir, demo, Utc::now()).await?;
    for path in done.created.iter().chain(cert.iter()) {
        println!("created {}", path.display());
    }
    for who in &done.people {
        println!("registered {who} in policies/people.yaml");
    }
    if done.kept_policies.is_none() && done.people.is_empty() {
        println!(
            "nobody is registered yet: add each person to {} (their public key and roles), check with `ramp-ca policy check`, then start `ramp-ca serve` (or reload it with SIGHUP); `ramp-ca init --demo` in an empty directory makes demo identities to try it",
            dir.join("policies/people.yaml").display()
        );
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

/// Prints JSON with `--json`, else the text `human` makes.
/// `store copy`: the embedded ledger at `from` into the empty PostgreSQL ledger at `to`.
async fn store_copy(dir: &Path, from: &str, to: &str) -> Result {
    let source = crate::store::copy::Source::parse(Some(from), dir).map_err(CliError::Usage)?;
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(CliError::Usage(format!(
            "--to `{}`: store copy writes into PostgreSQL (postgres://USER@HOST:PORT/DB); copying into sled is not supported",
            crate::pgstore::url::redact(to)
        )));
    }
    crate::pgstore::StoreUrl::parse(to).map_err(crate::Error::from)?;
    let copied = crate::store::copy::copy(&source, to)
        .await
        .map_err(crate::Error::from)?;
    println!(
        "copied {} into {}:\n{copied}",
        source.data.display(),
        crate::store::Location::Postgres {
            url: to.to_string(),
            pool: Default::default()
        }
        .shown()
    );
    let recordings = source.data.join("recordings");
    println!(
        "recordings stay files: serve with --recordings pointing at {} (or copy its *.rec files where --recordings points)",
        recordings.display()
    );
    Ok(())
}

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

/// `--since`'s duration.
fn since(text: &str) -> Result<std::time::Duration> {
    crate::domain::policy::parse_duration(text)
        .ok_or_else(|| CliError::Usage(format!("--since: bad duration `{text}` (like 1h)")))
}

/// A client for the daemon, signing with `--key` (or ssh-agent).
async fn connect(opts: &ClientOpts) -> Result<Client> {
    let path = key_path(opts);
    let signer = client::signer_for(&path).await?;
    Ok(Client::new(&opts.server, opts.ca_cert.as_deref(), signer)?)
}

/// The identity key: `--key`, else `~/.ssh/id_ed25519`.
fn key_path(opts: &ClientOpts) -> PathBuf {
    opts.key.clone().unwrap_or_else(client::default_key_path)
}

/// Writes a file whole or not at all.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(crate::Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(crate::Error::io(path))?;
    Ok(())
}
