//! ramp-ca: an SSH certificate authority and recording bastion for staged, short-lived,
//! audited production access.
//!
//! The map, callers first; dependencies point down:
//! - [`cli`] (clap definitions in `cli::args`, each command's code beside), [`client`]
//!   (signed requests), [`auth`] (SSHSIG request signing and checking), [`agent`] (adding a
//!   certificate to ssh-agent with a lifetime).
//! - Adapters: [`api`] (HTTP), [`dashboard`] (the web pages), [`bastion`] (russh: thin
//!   Handler, watchdog, hop, one task per channel), [`notify`] (webhooks from typed audit
//!   actions), [`checkpoint`] (signed checkpoints of the chain and their schedule),
//!   [`metrics`], [`limits`] (the pre-auth gate), [`daemon`] (`serve`).
//! - [`wire`]: every route path and every HTTP and webhook body.
//! - [`service`]: the application layer, the only door to the ledger: every role check and
//!   every audit record.
//! - [`recordings`]: one home for recordings (format, where they are kept: this node's
//!   `data/`, a shared directory or object storage with its uploader; files, writer, export,
//!   search, screen).
//! - [`store`]: the ledger, one interface (`store::Ledger`) over two engines: sled under
//!   `data/` (embedded, one node; the only sled user) and [`pgstore`] (PostgreSQL, shared by
//!   several nodes; the only code that talks to PostgreSQL: connection, pool, migrations, the
//!   engine, LISTEN/NOTIFY, `store copy`'s target side). One write API, `Ledger::commit` (and `GrantChanges` for changes
//!   that decide on what they read), answering once the change is durable.
//! - [`domain`]: the rules, pure (no IO, no clock): policy, grants, certificates, KRL, the
//!   audit chain and its typed actions, logins and their refusals, recorded sessions, flag
//!   rules over a session, and when a session's review is due and who may give it.
//! - [`install`]: the installation as files (keys, policies, `init`, trust text);
//!   [`shown`]: user text escaped for terminals and logs; [`tls`]: rustls from PEM files
//!   (the API's certificate, the CAs a client trusts).
//!
//! Invariants: only `service` uses `store`; only `store` touches sled and decides what lives in
//! `data/`, only `pgstore` talks to PostgreSQL; no rule lives in an engine; `domain` does no IO
//! and reads no clock; `wire` is the only serde boundary for HTTP
//! and webhooks (stored records and wire bodies are separate types); nothing blocks a runtime
//! thread waiting for the disk. The README's Architecture section has the whole list.
pub mod agent;
pub mod api;
pub mod auth;
pub mod bastion;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dashboard;
pub mod domain;
mod error;
pub mod install;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod oncall_watch;
pub mod pgstore;
pub mod recordings;
pub mod service;
pub mod shown;
pub mod store;
pub mod tls;
pub mod wire;

pub use error::Error;
