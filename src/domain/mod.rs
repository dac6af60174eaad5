//! The rules, as plain data and pure functions: no IO, no clock (`now` and the RNG are
//! arguments), so every rule is tested deterministically.
//!
//! - [`policy`]: YAML ramp contracts -> validated model; `decide(request, held, now)`.
//! - [`grant`]: requests and grants and how they change (approve, deny, revoke, close, the
//!   grants that climbed from one and fall with it).
//! - [`cert`]: certificates: the key id, options <-> extensions, the validity window,
//!   minting and the checks a verifier makes.
//! - [`flags`]: a contract's flag rules run over a session as it happens (bounded cost).
//! - [`krl`]: OpenSSH key revocation lists.
//! - [`audit`]: the audit chain (records, hashes, walking it) and the closed vocabulary of
//!   audited actions with their typed details.
//! - [`lease`]: node leases on a shared ledger: who may use a name, when a node is gone.
//! - [`login`]: who may log in where through the bastion, and why a login is refused.
//! - [`report`]: the auditors' report per contract and step over a period.
//! - [`retention`]: when a session's recording may be deleted (`keep:`, never before its
//!   review), and the record that says it was.
//! - [`review`]: after a session: when its review is due, who may sign it off, the queue.
//! - [`session`]: a recorded session's metadata, as the ledger, the pages and the exports
//!   know it.

pub mod audit;
pub mod cert;
pub mod flags;
pub mod grant;
pub mod krl;
pub mod lease;
pub mod login;
pub mod notice;
pub mod policy;
pub mod report;
pub mod retention;
pub mod review;
pub mod session;

/// A closed vocabulary (grant states, audited actions, refusal reasons...): every word, and
/// its label in one `match`; labels are read back through the same list, never a second one.
pub trait Vocabulary: Sized + Copy + 'static {
    /// Every word, in the order listings show them.
    const ALL: &'static [Self];

    /// The word's label, as records, bodies and metrics carry it.
    fn label(self) -> &'static str;

    /// The word a label names.
    fn from_label(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|w| w.label() == text)
    }
}
