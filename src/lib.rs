//! ramp-ca: an SSH certificate authority and recording bastion for staged, short-lived,
//! audited production access.
//!
//! Layers, dependencies pointing one way:
//! - [`policy`]: YAML ramp contracts -> validated model; `decide(request, grants, now)`. Pure.
//! - [`grant`]: requests and grants as plain data. Pure.
//! - [`ca`]: grant + key + now -> OpenSSH certificate; verification. Pure.
//! - [`krl`]: OpenSSH key revocation lists. Pure.
//! - [`auth`]: SSHSIG-signed requests, both the signing and the checking half.
//! - [`keys`]: key files (0600, never overwritten); [`init`], [`trust`]: set-up helpers.
//! - [`recording`]: session metadata and timed events, and their encoding. Pure.
//! - [`review`]: asciicast/JSON export, search and timed playback of recordings.
//! - [`store`]: the only sled user: grants, serials, certificates, revocations, the audit chain,
//!   session recordings, kept checkpoints.
//! - [`pgstore`]: PostgreSQL, the ledger several nodes will share: connection (URL, TLS, a
//!   bounded pool with statement timeouts) and versioned schema migrations. Not served from
//!   yet; the only code that talks to PostgreSQL.
//! - [`checkpoint`]: the audit chain's head signed with the audit-signer key (SSHSIG), and
//!   checking a chain against such checkpoints. Pure but its `writer` (the daemon's schedule).
//! - [`service`]: what the daemon does for a verified caller; [`api`]: its HTTP adapter;
//!   [`bastion`]: the russh server that checks certificates, hops to targets and records;
//!   [`dashboard`]: the web pages on the API port (one-time login links, live state over
//!   server-sent events, terminal screens rendered server-side); [`daemon`]: `serve`,
//!   signals and shutdown; [`limits`]: the accept step both servers share,
//!   with how many connections that have not shown who they are may wait, and how fast one
//!   address may open them (the bookkeeping pure, the clock an argument).
//! - [`notify`]: webhooks for what people act on, fed by the audit stream, off every
//!   request's path; [`metrics`]: counters bumped where things happen, `/metrics` text.
//! - [`client`], [`cli`]: the command line; [`shown`]: user text escaped for terminals and logs.
pub mod api;
pub mod auth;
pub mod bastion;
pub mod ca;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dashboard;
mod error;
pub mod grant;
pub mod init;
pub mod keys;
pub mod krl;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod pgstore;
pub mod policy;
pub mod recording;
pub mod review;
pub mod service;
pub mod shown;
pub mod store;
pub mod trust;

pub use error::Error;
