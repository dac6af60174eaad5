//! Node leases (several nodes on one shared ledger): each node holds a lease on its name and
//! renews it every few seconds; a lease not renewed for longer than its term has lapsed, and
//! another node then ends what the lapsed node left live. Pure: the time and whether a
//! process runs are arguments.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long a lease lasts without renewal unless configured otherwise.
pub const DEFAULT_TERM: Duration = Duration::from_secs(15);

/// How many renewals fit in a term: a node renews every `term / RENEWALS_PER_TERM`, so a
/// few missed renewals (a slow database) do not lose it.
pub const RENEWALS_PER_TERM: u32 = 5;

/// A node's lease as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node's name (`serve --node`).
    pub node: String,
    /// The machine it runs on, and its process id there: a restart on the same machine
    /// takes over a lease whose process is gone without waiting for it to lapse.
    pub host: String,
    pub pid: u32,
    pub started: DateTime<Utc>,
    /// When it was last renewed.
    pub renewed: DateTime<Utc>,
}

impl Lease {
    /// Whether the lease went unrenewed for longer than `term` at `now`.
    pub fn lapsed(&self, now: DateTime<Utc>, term: Duration) -> bool {
        let term = chrono::TimeDelta::from_std(term).unwrap_or(chrono::TimeDelta::MAX);
        now.signed_duration_since(self.renewed) > term
    }
}

/// What a starting node may do with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds it: take it.
    Free,
    /// Someone held it but is gone (lapsed, or its process on this machine no longer
    /// runs): take it over, and end what it left live as one's own leftovers.
    TakeOver(String),
    /// Another process holds it and renews it: refuse to start, with why.
    Refused(String),
}

/// Whether node `me` (on `host`) may take the name `held` is a lease on. `running` says
/// whether a process id runs on this machine.
pub fn claim(
    held: Option<&Lease>,
    host: &str,
    running: impl Fn(u32) -> bool,
    now: DateTime<Utc>,
    term: Duration,
) -> Claim {
    let Some(l) = held else {
        return Claim::Free;
    };
    let ago = now.signed_duration_since(l.renewed).num_seconds().max(0);
    if l.lapsed(now, term) {
        return Claim::TakeOver(format!(
            "its lease lapsed {ago} s ago (host {}, pid {})",
            l.host, l.pid
        ));
    }
    if l.host == host && !running(l.pid) {
        return Claim::TakeOver(format!(
            "its process on this machine (pid {}) is gone",
            l.pid
        ));
    }
    Claim::Refused(format!(
        "node `{}` is already running (host {}, pid {}, lease renewed {ago} s ago): give this one another name with --node NAME (or RAMP_NODE, or `node:` in the config file), or stop that one; a node that dies gives its name up once its lease lapses ({} s)",
        l.node,
        l.host,
        l.pid,
        term.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn lease(host: &str, pid: u32, renewed: i64) -> Lease {
        Lease {
            node: "a".into(),
            host: host.into(),
            pid,
            started: at(0),
            renewed: at(renewed),
        }
    }

    /// `(held, now, expected)`: what a node on host `h1`, where only pid 7 runs, may do.
    fn check(held: Option<Lease>, now: i64, want: &str) {
        let got = claim(held.as_ref(), "h1", |pid| pid == 7, at(now), DEFAULT_TERM);
        let label = match &got {
            Claim::Free => "free".to_string(),
            Claim::TakeOver(why) => format!("take over: {why}"),
            Claim::Refused(why) => format!("refused: {why}"),
        };
        assert!(label.starts_with(want), "{held:?} at {now}: {label}");
    }

    #[test]
    fn a_name_is_free_taken_over_or_refused() {
        check(None, 0, "free");
        // Renewed 15 s ago is still fresh; 16 s is lapsed, wherever it ran.
        check(
            Some(lease("h2", 7, 0)),
            15,
            "refused: node `a` is already running (host h2, pid 7, lease renewed 15 s ago)",
        );
        check(
            Some(lease("h2", 7, 0)),
            16,
            "take over: its lease lapsed 16 s ago (host h2, pid 7)",
        );
        check(Some(lease("h1", 7, 0)), 16, "take over: its lease lapsed");
        // On this machine: a live process keeps it, a gone one gives it up at once.
        check(
            Some(lease("h1", 7, 10)),
            11,
            "refused: node `a` is already running (host h1, pid 7",
        );
        check(
            Some(lease("h1", 8, 10)),
            11,
            "take over: its process on this machine (pid 8) is gone",
        );
        // Another machine's process id says nothing here.
        check(Some(lease("h2", 8, 10)), 11, "refused:");
    }

    #[test]
    fn a_lease_lapses_after_its_term_not_before() {
        let l = lease("h1", 7, 100);
        let term = Duration::from_secs(15);
        assert!(!l.lapsed(at(100), term));
        assert!(!l.lapsed(at(115), term));
        assert!(l.lapsed(at(116), term));
        assert!(
            !l.lapsed(at(50), term),
            "renewed in the future: a clock behind"
        );
    }
}
