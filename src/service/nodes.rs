//! This node among the others on a shared ledger: its name (`serve --node`), its lease,
//! ending what a node whose lease lapsed left live, and whether the ledger can be reached.
//! On sled (one node) a lease is always this node's and nobody lapses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::sessions::interrupted_change;
use super::{Result, Service, ServiceError};
use crate::domain::lease::{Claim, RENEWALS_PER_TERM};
use crate::domain::session::{lapsed_reason, SessionMeta};
use crate::pgstore::Holder;
use crate::store::StoreError;

/// This machine's host name, the default node name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

/// Whether process `pid` runs on this machine (it may be another user's).
fn running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// This node's lease: who holds it and for how long it lasts unrenewed.
#[derive(Debug, Clone)]
pub struct Node {
    pub holder: Holder,
    pub term: Duration,
}

impl Service {
    /// Why the ledger cannot be reached, while the last attempt says it cannot.
    pub fn ledger_down(&self) -> Option<String> {
        self.ledger_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Remembers whether the ledger answered, from a call's error (`None`: it answered).
    pub(super) fn note_ledger(&self, error: Option<&StoreError>) {
        let down = match error {
            None => None,
            Some(e) => match e.outage() {
                Some(why) => Some(why),
                None => return,
            },
        };
        let mut state = self.ledger_down.lock().unwrap_or_else(|e| e.into_inner());
        match (&*state, &down) {
            (None, Some(why)) => tracing::error!(
                "{why}; new logins are refused until it is back, live sessions go on"
            ),
            (Some(_), None) => tracing::info!("the ledger is reachable again"),
            _ => {}
        }
        *state = down;
    }

    /// Claims this node's name for `term`: refused (with why) while another process holds
    /// it and renews it.
    pub async fn claim_node(&self, term: Duration) -> Result<Node> {
        let holder = Holder {
            node: self.node.clone(),
            host: host_name(),
            pid: std::process::id(),
            instance: hex::encode(rand::random::<[u8; 8]>()),
        };
        match self.store.claim_lease(&holder, term, running).await? {
            Claim::Free => {}
            Claim::TakeOver(why) => {
                tracing::warn!(node = %self.node, "taking the node's name over: {why}")
            }
            Claim::Refused(why) => return Err(ServiceError::Conflict(why)),
        }
        Ok(Node { holder, term })
    }

    /// Gives the name up at a clean stop.
    pub async fn release_node(&self, node: &Node) {
        if let Err(e) = self.store.release_lease(&node.holder).await {
            tracing::warn!(error = %e, "cannot release this node's lease; other nodes will find it lapsed");
        }
    }

    /// Ends what the nodes whose lease lapsed left live: each of their live sessions marked
    /// interrupted (sealed if its recording is here, else as of its last flush) with a
    /// `session-interrupted` record naming this node and why, and their leases ended, one
    /// node each, once.
    pub async fn end_lapsed_nodes(
        &self,
        term: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionMeta>> {
        let mut ended = Vec::new();
        for lease in self.store.lapsed_leases(term).await? {
            if lease.node == self.node {
                continue;
            }
            let Some(mut t) = self.store.take_over(&lease.node, term).await? else {
                continue;
            };
            let why = lapsed_reason(&lease.node, term.as_secs());
            let found = t.found(why.clone()).await?;
            let (change, sessions) = interrupted_change(found, &self.node, Some(&why));
            t.commit(change, now).await?;
            tracing::warn!(node = %lease.node, sessions = sessions.len(), host = %lease.host, pid = lease.pid, "a node's lease lapsed: its live sessions are marked interrupted");
            ended.extend(sessions);
        }
        Ok(ended)
    }

    /// Renews this node's lease every `term / RENEWALS_PER_TERM` until `stop` fires, then
    /// releases it. Once it has renewed for a whole term without a failure, it also ends
    /// what lapsed nodes left live: after an outage every lease looks lapsed, and the nodes
    /// still running get a term to renew theirs first.
    pub async fn keep_lease(self: Arc<Self>, node: Node, mut stop: watch::Receiver<bool>) {
        let every = node.term / RENEWALS_PER_TERM;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let renewed = self.store.renew_lease(&node.holder).await;
            self.note_ledger(renewed.as_ref().err());
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %self.node, "this node's lease had lapsed and another node ended its live sessions in the ledger (was it cut off from the database?); it holds its name again")
                }
                Err(e) => {
                    healthy_since = None;
                    tracing::debug!(error = %e, "cannot renew this node's lease");
                    continue;
                }
            }
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() < node.term {
                continue;
            }
            if let Err(e) = self.end_lapsed_nodes(node.term, Utc::now()).await {
                tracing::warn!(error = %e, "cannot end what lapsed nodes left live");
            }
        }
        self.release_node(&node).await;
    }
}
