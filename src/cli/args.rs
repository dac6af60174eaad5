//! The command line's flags and subcommands (clap): what each command takes, not what it
//! does (that is [`super`]'s and its modules').

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// PEM file of the CA certificate(s) an https --server's certificate must chain to
    /// (instead of the system's).
    #[arg(long, env = "RAMP_CA_CERT", value_name = "F")]
    pub ca_cert: Option<PathBuf>,
    /// Identity key that signs the request (default ~/.ssh/id_ed25519, or ssh-agent).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `sign` and `request` ask for.
#[derive(Debug, Clone, Default, Args)]
pub struct StepArgs {
    /// The contract to ask a step of (required, unless `sign --grant ID`).
    #[arg(long, value_name = "C")]
    pub contract: Option<String>,
    /// Default: the contract's first step.
    #[arg(long)]
    pub step: Option<String>,
    /// Like 30m; at most the step's max_ttl (default: the step's max_ttl).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why you need it, like `INC-42 replica lag` (required by contracts that say so).
    #[arg(long)]
    pub reason: Option<String>,
    /// Ask for a window that opens later: RFC 3339 (2026-12-01T22:00:00Z) or +2h, at most
    /// 30 days ahead. Approvals may be given before it opens; its certificate is valid from
    /// the start.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create keys/ and, in a new installation, example policies (never overwrites a key).
    Init {
        /// Also make three demo identities (alice, bob, carol: keys under demo/, registered
        /// in policies/people.yaml), for trying it out; never in production.
        #[arg(long)]
        demo: bool,
    },
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
        /// Where the ledger is: sled under DIR/data [default], or
        /// postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=...] shared by several nodes
        /// [beats the config file's `store:`].
        #[arg(long, env = "RAMP_STORE", value_name = "URL")]
        store: Option<String>,
        /// Where recordings are kept: DIR/data/recordings [default], or file:///PATH, a
        /// directory every node mounts [beats the config file's `recordings:`].
        #[arg(long, env = "RAMP_RECORDINGS", value_name = "URL")]
        recordings: Option<String>,
        /// This node's name, shown with its sessions, in its audit records and metrics;
        /// on PostgreSQL one running node a name [default: the host name; beats the
        /// config file's `node:`].
        #[arg(long, env = "RAMP_NODE", value_name = "NAME")]
        node: Option<String>,
        /// Serve the API and dashboard over HTTPS with this PEM certificate chain (the
        /// server's certificate first); needs --tls-key [config: `tls: {cert, key}`].
        #[arg(long, value_name = "F")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert (PKCS#8, RSA or EC; unencrypted).
        #[arg(long, value_name = "F")]
        tls_key: Option<PathBuf>,
        /// A new installation gets demo identities (as `init --demo`).
        #[arg(long)]
        demo: bool,
    },
    /// Check or explain policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Request a step and write `<key>-cert.pub` once granted.
    Sign {
        #[command(flatten)]
        ask: StepArgs,
        /// Get a certificate from an existing active grant instead of requesting.
        #[arg(long, conflicts_with_all = ["contract", "step", "ttl", "reason", "start"])]
        grant: Option<String>,
        /// Wait for approvals, then write the certificate; for a window that opens later,
        /// also wait for its start (that wait is not cut by --timeout).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "15m")]
        timeout: String,
        /// Do not add the certificate to the running ssh-agent.
        #[arg(long)]
        no_agent: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Ask for more time on an active grant you hold; live sessions run on to the new end,
    /// and a fresh certificate is written as `sign` writes it.
    Extend {
        /// The grant's id (from `grants`; a unique prefix will do).
        grant: String,
        /// How much longer, like 30m (within the step's max_ttl from the grant's start).
        #[arg(long, required = true)]
        ttl: String,
        /// Why (the contract's reason rules apply).
        #[arg(long)]
        reason: Option<String>,
        /// Wait for the extension's approvals, then write the certificate.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "15m")]
        timeout: String,
        /// Do not add the certificate to the running ssh-agent.
        #[arg(long)]
        no_agent: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print an ssh_config block so plain `ssh TARGET` goes through the bastion, for the
    /// targets of the grants you hold, and the known_hosts line that trusts the bastion.
    SshConfig {
        /// The bastion as engineers reach it [default: --server's host, port 2222].
        #[arg(long, value_name = "HOST[:PORT]")]
        bastion: Option<String>,
        /// Write the block to this file (for `Include` in ~/.ssh/config) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// The pending request's id (from `grants`).
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Deny a pending request (or withdraw your own).
    Deny {
        /// The pending request's id (from `grants`).
        id: String,
        /// Why it is denied (told to the requester and audited).
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
        /// One certificate, by its serial.
        #[arg(long, group = "what")]
        serial: Option<u64>,
        /// A grant, with every certificate minted from it and the grants that climbed from it.
        #[arg(long, group = "what")]
        grant: Option<String>,
        /// Everything the user holds or asked for now.
        #[arg(long, group = "what")]
        user: Option<String>,
        /// Why (audited, and told to the user whose sessions it ends).
        #[arg(long)]
        reason: Option<String>,
        /// Only say what it would reach (grants ended or shortened, live sessions cut).
        #[arg(long)]
        dry_run: bool,
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
        /// The host's name in hosts.yaml (and the certificate's first principal).
        #[arg(long)]
        name: String,
        /// The host's public key file, like /etc/ssh/ssh_host_ed25519_key.pub.
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
    /// The access review's evidence (ramp-admin, ramp-auditor): per contract and step, the
    /// grants that became active, who approved them, their sessions, flags, and reviews
    /// done, late and missing.
    Report {
        /// The period: this far back from now.
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print what targets and clients need to trust this CA.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Recorded sessions: every one for ramp-admin and ramp-auditor, one's own for anyone
    /// (every read is audited); ending a live one.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The ledger's storage: create or upgrade a PostgreSQL schema.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Which sessions a listing or search covers.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this user's sessions.
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions to this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only sessions started this recently, like 1h.
    #[arg(long)]
    pub since: Option<String>,
    /// Only sessions a flag rule matched in.
    #[arg(long)]
    pub flagged: bool,
    /// Only sessions waiting for a review (pending or overdue).
    #[arg(long)]
    pub unreviewed: bool,
    /// Only sessions whose review is overdue.
    #[arg(long)]
    pub overdue: bool,
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
        /// The session's id (from `sessions list`).
        id: String,
        /// Its command timeline instead: exec command, lines typed (line editing applied),
        /// file operations and flags, each with its offset.
        #[arg(long)]
        commands: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Replay a session's output with its real timing.
    Play {
        /// The session's id (from `sessions list`).
        id: String,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause kept between two events.
        #[arg(long, default_value = "2s")]
        idle_cap: String,
        /// Start this far into the session, like 1m30s (what came before is shown at once).
        #[arg(long, value_name = "OFFSET")]
        from: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Export a session (to stdout, or --out F).
    Export {
        /// The session's id (from `sessions list`).
        id: String,
        /// What to export.
        #[arg(long, value_enum, default_value = "asciicast")]
        format: ExportFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// End a live session now, saying why (ramp-admin, a role that may approve its step, or
    /// its own user). Its user's terminal shows who ended it and why; audited.
    End {
        /// The session's id (from `sessions list`).
        id: String,
        /// Why: audited, and shown in the user's terminal.
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The review queue (sessions you may review, the one due first first), or, with an
    /// id, your verdict on one session (--ok or --concern, with --note): audited; a concern
    /// is announced.
    Review {
        /// The session to sign off; without it, the queue.
        id: Option<String>,
        /// Nothing wrong.
        #[arg(long, requires = "id", conflicts_with = "concern")]
        ok: bool,
        /// Something to follow up (announced as `review-concern`).
        #[arg(long, requires = "id")]
        concern: bool,
        /// What you saw: required with a verdict.
        #[arg(long, requires = "id")]
        note: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Search recordings' input, output and exec command lines for a text.
    Grep {
        /// The text to find in what was typed and printed (ANSI stripped), and in exec
        /// commands.
        pattern: String,
        /// Match regardless of case.
        #[arg(short = 'i', long)]
        ignore_case: bool,
        /// PATTERN is a regular expression (Rust regex syntax, linear time).
        #[arg(long)]
        regex: bool,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy directory (default DIR/policies); exit 1 listing every problem.
    Check {
        /// The policy directory [default: DIR/policies].
        path: Option<PathBuf>,
    },
    /// Show the decision for a request and the reasons.
    Explain {
        /// Who asks (a user in people.yaml).
        #[arg(long)]
        user: String,
        /// The contract asked.
        #[arg(long)]
        contract: String,
        /// The step asked [default: the contract's first].
        #[arg(long)]
        step: Option<String>,
        /// The ttl asked, like 30m [default: the step's max_ttl].
        #[arg(long)]
        ttl: Option<String>,
        /// The reason given (without it, a reason is assumed and said so).
        #[arg(long)]
        reason: Option<String>,
        /// Assume the user holds an active grant of these steps (repeatable).
        #[arg(long)]
        holding: Vec<String>,
        /// A window that opens later: RFC 3339 or +2h (as `sign --start`).
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Also explain asking for this much more time on the grant (as `extend --ttl`),
        /// once it is granted for --ttl.
        #[arg(long, value_name = "DURATION")]
        extend: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// Aligned columns with a header.
    Table,
    /// CSV with a header row, for spreadsheets.
    Csv,
    /// JSON, every field.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, newest first (as the dashboard's Audit page).
    List {
        /// Only records this recent, like 1h.
        #[arg(long)]
        since: Option<String>,
        /// Only records whose actor contains this text.
        #[arg(long)]
        actor: Option<String>,
        /// Only records whose action contains this text (like `revoke`, `session-`).
        #[arg(long)]
        action: Option<String>,
        /// Only records whose subject contains this text (a grant id, a session id).
        #[arg(long)]
        subject: Option<String>,
        /// Oldest first instead.
        #[arg(long)]
        oldest_first: bool,
        /// Output format (`--json` is the same as `--format json`).
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
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
    /// Every checkpoint the service kept (on PostgreSQL the one series all nodes share),
    /// newest first, as one text `audit verify --checkpoint F` reads.
    Checkpoints {
        #[command(flatten)]
        client: ClientOpts,
    },
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
    /// Copy an embedded installation's ledger (sled) into an empty PostgreSQL ledger, in one
    /// transaction: grants, certificates, revocations, nonces, sessions, the audit chain
    /// byte for byte, checkpoints; the serial sequence moves past every serial copied.
    Copy {
        /// The sled ledger: `sled` (DIR/data, the default), sled:///PATH, or a directory (an
        /// installation holding data/, or data/ itself). Stop its `serve` first.
        #[arg(long, value_name = "URL", default_value = "sled")]
        from: String,
        /// The empty PostgreSQL ledger: postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=...]
        /// (migrated first; one that holds anything is refused).
        #[arg(long, value_name = "URL")]
        to: String,
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

impl Command {
    /// The client options of a command that talks to the daemon.
    pub fn client(&self) -> Option<&ClientOpts> {
        match self {
            Command::Sign { client, .. }
            | Command::Extend { client, .. }
            | Command::Request { client, .. }
            | Command::Approve { client, .. }
            | Command::Deny { client, .. }
            | Command::Dashboard { client, .. }
            | Command::Grants { client, .. }
            | Command::Revoke { client, .. }
            | Command::Krl { client, .. }
            | Command::SignHost { client, .. }
            | Command::Report { client, .. }
            | Command::SshConfig { client, .. } => Some(client),
            Command::Audit(
                AuditCommand::List { client, .. }
                | AuditCommand::Verify { client, .. }
                | AuditCommand::Checkpoint { client, .. }
                | AuditCommand::Checkpoints { client, .. },
            ) => Some(client),
            Command::Sessions(
                SessionsCommand::List { client, .. }
                | SessionsCommand::Show { client, .. }
                | SessionsCommand::Play { client, .. }
                | SessionsCommand::Export { client, .. }
                | SessionsCommand::End { client, .. }
                | SessionsCommand::Review { client, .. }
                | SessionsCommand::Grep { client, .. },
            ) => Some(client),
            Command::Init { .. }
            | Command::Serve { .. }
            | Command::Policy(_)
            | Command::Trust(_)
            | Command::Store(_)
            | Command::Completions { .. } => None,
        }
    }

    /// Whether the command's output is JSON (`--json`), so its errors are too.
    pub fn json(&self) -> bool {
        match self {
            Command::Policy(PolicyCommand::Explain { json, .. }) => *json,
            other => other.client().is_some_and(|c| c.json),
        }
    }
}
