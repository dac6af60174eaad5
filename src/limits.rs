//! Admission limits for connections that have not shown who they are yet: how many may wait
//! at once, in total and from one source, and how fast one source may open connections that
//! never log in. The bookkeeping ([`Gate`]) is pure and takes the clock as an argument; both
//! servers accept through [`accept`], and hold the [`Admission`] while the connection waits.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How many connections a [`Gate`] lets wait, and how fast.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// What the gate counts, for messages ("connections not logged in").
    pub what: &'static str,
    /// Connections waiting at once, from everyone.
    pub total: usize,
    /// Connections waiting at once from one source (see [`source_of`]).
    pub per_source: usize,
    /// Each source's budget of connections that never log in; `None` for no rate limit.
    pub rate: Option<Rate>,
    /// Sources remembered at most, so a spread-out flood cannot grow the table without bound;
    /// a new source past it is let in untracked (only `total` holds it back).
    pub max_sources: usize,
}

/// A token bucket: a new connection takes a token, and gets it back when it logs in
/// ([`Admission::logged_in`]), so only connections that never log in spend the budget.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Tokens a quiet source starts with.
    pub burst: u32,
    /// Tokens given back each second, up to `burst`.
    pub per_second: u32,
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// `total` connections are waiting already.
    Full,
    /// `per_source` connections from this source are waiting already.
    SourceFull,
    /// This source has spent its [`Rate`] budget.
    RateLimited,
}

/// A refusal as the servers report it: to the client, and (at most once a second) to the log.
#[derive(Clone, Debug)]
pub struct TurnedAway {
    pub why: Cap,
    /// The source the limit applied to.
    pub source: IpAddr,
    what: &'static str,
    /// Set on the refusal that should be logged: how many were refused unlogged before it.
    pub log: Option<u64>,
}

impl fmt::Display for TurnedAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, source) = (self.what, self.source);
        match self.why {
            Cap::Full => write!(f, "too many {what}; try again later"),
            Cap::SourceFull => write!(f, "too many {what} from {source}; try again later"),
            Cap::RateLimited => {
                write!(f, "too many new connections from {source}; slow down")
            }
        }
    }
}

/// The key a source is counted under: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64, the smallest block a site is given, since one host can hold a whole /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// One source's count and budget.
#[derive(Debug)]
struct Source {
    /// Its connections waiting now.
    waiting: usize,
    /// Its tokens at `at`, in millionths (whole numbers keep the arithmetic exact).
    tokens: u64,
    at: Instant,
}

/// One token, in the millionths [`Source::tokens`] counts.
const TOKEN: u64 = 1_000_000;

impl Rate {
    fn full(self) -> u64 {
        u64::from(self.burst) * TOKEN
    }
}

impl Source {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let nanos = now.saturating_duration_since(self.at).as_nanos();
        let earned = nanos * u128::from(rate.per_second) * u128::from(TOKEN) / 1_000_000_000;
        self.tokens = u64::try_from(u128::from(self.tokens) + earned)
            .unwrap_or(u64::MAX)
            .min(rate.full());
        self.at = now;
    }

    /// Nothing to remember: no connection waiting and a full bucket, as for a new source.
    fn forgettable(&mut self, rate: Option<Rate>, now: Instant) -> bool {
        if let Some(rate) = rate {
            self.refill(rate, now);
            self.waiting == 0 && self.tokens >= rate.full()
        } else {
            self.waiting == 0
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    /// Connections waiting now, from everyone.
    waiting: usize,
    sources: HashMap<IpAddr, Source>,
    /// When the table was last swept of forgettable sources.
    swept: Option<Instant>,
    /// When a refusal was last logged, and how many were refused since.
    logged: Option<Instant>,
    unlogged: u64,
}

/// Counts waiting connections against [`Limits`].
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    state: Mutex<Tally>,
}

/// A connection let in; it counts as waiting until it logs in or is dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    /// The source it is counted under, when the table had room for it.
    source: Option<IpAddr>,
    /// Already taken off the count.
    released: bool,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::new(Tally::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, Tally> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections waiting now.
    pub fn waiting(&self) -> usize {
        self.state().waiting
    }

    /// Lets a connection from `peer` in, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Result<Admission, TurnedAway> {
        let limits = self.limits;
        let key = source_of(peer);
        let mut state = self.state();
        if state.waiting >= limits.total {
            return Err(self.refuse(&mut state, Cap::Full, key, now));
        }
        if !state.sources.contains_key(&key) && state.sources.len() >= limits.max_sources {
            state.sweep(limits.rate, now);
        }
        let tracked = state.sources.contains_key(&key) || state.sources.len() < limits.max_sources;
        if tracked {
            let source = state.sources.entry(key).or_insert(Source {
                waiting: 0,
                tokens: limits.rate.map_or(0, Rate::full),
                at: now,
            });
            let mut refused = None;
            if let Some(rate) = limits.rate {
                source.refill(rate, now);
                if source.tokens < TOKEN {
                    refused = Some(Cap::RateLimited);
                } else {
                    // Turned away or not, the attempt spends a token: a source beating on its
                    // cap is flooding.
                    source.tokens -= TOKEN;
                }
            }
            if refused.is_none() && source.waiting >= limits.per_source {
                refused = Some(Cap::SourceFull);
            }
            if let Some(why) = refused {
                return Err(self.refuse(&mut state, why, key, now));
            }
            source.waiting += 1;
        } else if state.logged.is_none_or(|t| now >= t + LOG_EVERY) {
            state.logged = Some(now);
            tracing::warn!(sources = limits.max_sources, %peer, "too many sources to track; letting one in untracked");
        }
        state.waiting += 1;
        Ok(Admission {
            gate: self.clone(),
            source: tracked.then_some(key),
            released: false,
        })
    }

    fn refuse(&self, state: &mut Tally, why: Cap, source: IpAddr, now: Instant) -> TurnedAway {
        let log = if state.logged.is_none_or(|t| now >= t + LOG_EVERY) {
            state.logged = Some(now);
            Some(std::mem::take(&mut state.unlogged))
        } else {
            state.unlogged += 1;
            None
        };
        TurnedAway {
            why,
            source,
            what: self.limits.what,
            log,
        }
    }

    fn release(&self, source: Option<IpAddr>, refund: bool) {
        let limits = self.limits;
        let mut state = self.state();
        state.waiting = state.waiting.saturating_sub(1);
        let Some(key) = source else { return };
        let Some(entry) = state.sources.get_mut(&key) else {
            return;
        };
        entry.waiting = entry.waiting.saturating_sub(1);
        match limits.rate {
            Some(rate) if refund => entry.tokens = (entry.tokens + TOKEN).min(rate.full()),
            Some(_) => {}
            // Without a budget there is nothing to remember once nothing waits.
            None if entry.waiting == 0 => {
                state.sources.remove(&key);
            }
            None => {}
        }
    }
}

/// The next connection `gate` lets in, or `None` once `shutdown` completes. A refused one is
/// logged (at most once a second, as `server`) and handed to `refuse`, to be told why.
pub async fn accept<F: Future<Output = ()>>(
    server: &str,
    listener: &TcpListener,
    gate: &Arc<Gate>,
    shutdown: &mut Pin<&mut F>,
    mut refuse: impl FnMut(TcpStream, &TurnedAway),
) -> Option<(TcpStream, SocketAddr, Admission)> {
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.as_mut() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: give connections time to end.
                    tracing::warn!(server, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match gate.admit(peer.ip(), Instant::now()) {
            Ok(admission) => return Some((socket, peer, admission)),
            Err(refusal) => {
                if let Some(more) = refusal.log {
                    tracing::warn!(server, %peer, reason = %refusal, refused_unlogged_before = more, "connection refused");
                }
                refuse(socket, &refusal);
            }
        }
    }
}

/// Refusals are logged at most this often (with a count of the ones in between), so a flood
/// cannot flood the log too.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The table is swept of forgettable sources at most this often when it is full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Tally {
    fn sweep(&mut self, rate: Option<Rate>, now: Instant) {
        if self.swept.is_some_and(|t| now < t + SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        self.sources.retain(|_, s| !s.forgettable(rate, now));
    }
}

impl Admission {
    /// The connection logged in: it stops counting as waiting and its token comes back.
    pub fn logged_in(mut self) {
        self.released = true;
        self.gate.release(self.source, true);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.released {
            self.gate.release(self.source, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        per_second: 2,
    };

    fn limits(rate: Option<Rate>) -> Limits {
        Limits {
            what: "connections",
            total: 4,
            per_source: 2,
            rate,
            max_sources: 3,
        }
    }

    /// Runs `script`, steps separated by spaces, against a gate and compares what each step
    /// gave with `expected`:
    /// `N` (a digit): a connection from 10.0.0.N, giving `ok`, `full`, `source` or `rate`;
    /// `+` / `-`: the oldest connection still waiting logs in / goes away, giving `.`;
    /// `wMS`: the clock moves MS milliseconds on, giving `.`.
    fn check(limits: Limits, script: &str, expected: &str) {
        let gate = Gate::new(limits);
        let start = Instant::now();
        let mut now = start;
        let mut waiting = std::collections::VecDeque::<Admission>::new();
        let mut got = Vec::new();
        for step in script.split_whitespace() {
            let outcome = match step {
                "+" => {
                    if let Some(a) = waiting.pop_front() {
                        a.logged_in();
                    }
                    "."
                }
                "-" => {
                    waiting.pop_front();
                    "."
                }
                w if w.starts_with('w') => {
                    now += Duration::from_millis(w[1..].parse().unwrap());
                    "."
                }
                n => {
                    let ip = IpAddr::from([10, 0, 0, n.parse().unwrap()]);
                    match gate.admit(ip, now) {
                        Ok(a) => {
                            waiting.push_back(a);
                            "ok"
                        }
                        Err(r) => match r.why {
                            Cap::Full => "full",
                            Cap::SourceFull => "source",
                            Cap::RateLimited => "rate",
                        },
                    }
                }
            };
            got.push(outcome);
        }
        assert_eq!(got.join(" "), expected, "script: {script}");
        drop(waiting);
        assert_eq!(gate.waiting(), 0, "script: {script}");
    }

    #[test]
    fn caps_in_total_and_per_source() {
        let l = limits(None);
        check(l, "1 1 1", "ok ok source");
        check(l, "1 1 - 1", "ok ok . ok");
        check(l, "1 1 + 1", "ok ok . ok");
        check(l, "1 2 3 3 4", "ok ok ok ok full");
        check(l, "1 2 3 3 4 - 4", "ok ok ok ok full . ok");
    }

    #[test]
    fn only_connections_that_never_log_in_spend_the_budget() {
        let l = limits(Some(RATE));
        // Logins give their token back, however many and however fast.
        check(
            l,
            "1 + 1 + 1 + 1 + 1 + 1 +",
            "ok . ok . ok . ok . ok . ok .",
        );
        // Three that go away spend the burst; two tokens a second come back.
        check(
            l,
            "1 - 1 - 1 - 1 w499 1 w1 1 1",
            "ok . ok . ok . rate . rate . ok rate",
        );
        // Beating on the cap spends tokens too; another source keeps its own budget.
        check(l, "1 1 1 1 2", "ok ok source rate ok");
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let l = limits(Some(RATE));
        // 1..3 spent a token each and still wait: 4 comes in untracked, capped by `total` only.
        check(l, "1 2 3 4 4", "ok ok ok ok full");
        // Once 1..3 are gone and their buckets full again, a sweep makes room for 4.
        check(
            l,
            "1 2 3 - - - w1000 4 4 4",
            "ok ok ok . . . . ok ok source",
        );
    }

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        let check = |ip: &str, expected: &str| {
            assert_eq!(source_of(ip.parse().unwrap()).to_string(), expected, "{ip}");
        };
        check("10.1.2.3", "10.1.2.3");
        check("::ffff:10.1.2.3", "10.1.2.3");
        check("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::");
        check("::1", "::");
    }
}
