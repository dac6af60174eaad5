//! ramp-ca: an SSH certificate authority for staged, short-lived, audited production access.
//!
//! Layers, dependencies pointing one way:
//! - [`policy`]: YAML ramp contracts -> validated model; `decide(request, grants, now)`. Pure.
//! - [`ca`]: grant + key + now -> OpenSSH certificate; verification. Pure.
//! - [`krl`]: OpenSSH key revocation lists from the ledger's revocations. Pure.
//! - [`store`]: the only sled user: grants, serials, certificates, revocations, the audit chain.
//! - [`api`]: the HTTP daemon, every request SSHSIG-signed ([`auth`]).
//! - [`client`], [`cli`]: the command line that talks to the daemon or reads the installation.
pub mod auth;
pub mod ca;
pub mod grant;
pub mod keys;
pub mod krl;
pub mod policy;
pub mod store;
