//! What a daemon that died left behind in the ledger: sessions it left live, found at the
//! next start, or (on a shared ledger) by another node once the dead node's lease lapsed.

use std::time::Duration;

use super::seals::{self, Ends};
use super::{on_thread, Change, Engine, Ledger, Result};
use crate::domain::audit::AuditRecord;
use crate::domain::lease::{Claim, Lease};
use crate::domain::session::{SessionMeta, SessionState, INTERRUPTED_REASON};
use crate::pgstore::{Holder, PgTx};
use crate::recordings::files::Recordings;

/// What a daemon that died left behind, found at the next start (see
/// [`Ledger::interrupted`]).
#[derive(Debug, Default)]
pub struct Interrupted {
    /// Sessions it left live, now interrupted with their recordings sealed as they are on
    /// disk: each still needs the audit record that ends it.
    pub sealed: Vec<SessionMeta>,
    /// Metadata to write back as it is: finished sessions linked to the record that ended
    /// them, and live ones the chain had ended, put back as the chain says.
    pub repaired: Vec<SessionMeta>,
}

/// Sessions left live, and finished sessions that name no end record (from older versions).
fn to_look_at(sessions: Vec<SessionMeta>) -> (Vec<SessionMeta>, Vec<SessionMeta>) {
    sessions
        .into_iter()
        .filter(|s| s.state == SessionState::Live || s.sealed_in.is_none())
        .partition(|s| s.state == SessionState::Live)
}

impl Ledger {
    /// Seals the recordings of sessions left `live` by a daemon that died, as they are on
    /// disk (a half-written last event is cut off), and marks them interrupted. A session the
    /// chain already ended is not sealed again (its metadata was set back to `live`): its
    /// seal is taken back from the chain, so a changed recording is still found. Finished
    /// sessions that name no end record (from older versions) are linked to theirs, so
    /// reads need not search the chain. A live session of another node (`node`) is left
    /// alone; one from before node names is this node's when it recorded it (its recording
    /// is here, or noted as this node's in a directory nodes share; or the ledger is not
    /// shared). The chain's end records are read only when there is something
    /// to look at.
    pub async fn interrupted(&self, node: &str) -> Result<Interrupted> {
        let (live, unlinked) = to_look_at(self.sessions().await?);
        let mut out = Interrupted::default();
        if live.is_empty() && unlinked.is_empty() {
            return Ok(out);
        }
        // The chain, then the sessions again: a session another node ends meanwhile is then
        // seen ended in both (an end and its metadata commit together).
        let ends: Ends = self.session_ends().await?;
        let (live, unlinked) = to_look_at(self.sessions().await?);
        for mut s in unlinked {
            if let Some(end) = ends.of(&s.id).first() {
                s.sealed_in = Some(end.seq);
                out.repaired.push(s);
            }
        }
        let mut to_seal = Vec::new();
        for s in live {
            if let Some(end) = ends.of(&s.id).first() {
                tracing::error!(session = %s.id, record = end.seq, "the ledger says this session is live but the audit chain ended it; its metadata was altered");
                out.repaired.push(seals::restore_from(s, end));
            } else if s.node.as_deref().is_some_and(|n| n != node) {
                tracing::debug!(session = %s.id, node = ?s.node, "live on another node");
            } else if s.node.is_none() && self.is_shared() && !self.recordings.is_mine(&s.id) {
                tracing::debug!(session = %s.id, "live on another node (this node did not record it)");
            } else {
                to_seal.push(s);
            }
        }
        out.sealed = self
            .seal_as_found(to_seal, INTERRUPTED_REASON.into())
            .await?;
        Ok(out)
    }

    /// Marks sessions left live interrupted for `reason`. A recording this node has is
    /// sealed as it is on disk (a half-written last event cut off, the file being the truth
    /// where the metadata lags it by a flush); one it does not have (another node's disk)
    /// keeps the bytes of its last flush, unsealed.
    async fn seal_as_found(
        &self,
        sessions: Vec<SessionMeta>,
        reason: String,
    ) -> Result<Vec<SessionMeta>> {
        let recordings: Recordings = self.recordings.clone();
        on_thread(move || {
            sessions
                .into_iter()
                .map(|mut s| {
                    if recordings.has(&s.id) {
                        let sealed = recordings.seal_interrupted(&s.id)?;
                        s.bytes_in = sealed.bytes_in;
                        s.bytes_out = sealed.bytes_out;
                        s.recording = Some(sealed.seal);
                    }
                    s.state = SessionState::Interrupted;
                    s.end_reason = Some(reason.clone());
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    /// Claims this node's name (see [`crate::domain::lease::claim`]); on sled, one node
    /// and no leases: always free.
    pub async fn claim_lease(
        &self,
        me: &Holder,
        term: Duration,
        running: impl Fn(u32) -> bool,
    ) -> Result<Claim> {
        match &self.engine {
            Engine::Sled(_) => Ok(Claim::Free),
            Engine::Postgres(p) => p.claim_lease(me, term, running).await,
        }
    }

    /// Renews this node's lease; false when another node had ended it meanwhile.
    pub async fn renew_lease(&self, me: &Holder) -> Result<bool> {
        match &self.engine {
            Engine::Sled(_) => Ok(true),
            Engine::Postgres(p) => p.renew_lease(me).await,
        }
    }

    /// Gives this node's name up, at a clean stop.
    pub async fn release_lease(&self, me: &Holder) -> Result<()> {
        match &self.engine {
            Engine::Sled(_) => Ok(()),
            Engine::Postgres(p) => p.release_lease(me).await,
        }
    }

    /// Leases not renewed for longer than `term`.
    pub async fn lapsed_leases(&self, term: Duration) -> Result<Vec<Lease>> {
        match &self.engine {
            Engine::Sled(_) => Ok(Vec::new()),
            Engine::Postgres(p) => p.lapsed_leases(term).await,
        }
    }

    /// Starts ending what node `name` left live once its lease lapsed: `None` when it is no
    /// longer lapsed or another node is at it. What the node left live is marked interrupted
    /// for `reason` ([`TakeOver::found`]); commit the change that audits it with
    /// [`TakeOver::commit`], which also ends the lease, so one node does it once.
    pub async fn take_over(&self, name: &str, term: Duration) -> Result<Option<TakeOver<'_>>> {
        match &self.engine {
            Engine::Sled(_) => Ok(None),
            Engine::Postgres(p) => Ok(p.take_over(name, term).await?.map(|tx| TakeOver {
                ledger: self,
                node: name.to_string(),
                tx,
            })),
        }
    }
}

/// Ending a lapsed node's leftovers: a transaction holding its lease row.
pub struct TakeOver<'a> {
    ledger: &'a Ledger,
    /// The lapsed node.
    node: String,
    tx: PgTx<'a>,
}

impl TakeOver<'_> {
    /// The sessions the node left live, marked interrupted for `reason` (sealed when their
    /// recordings are here), each still needing the audit record that ends it.
    pub async fn found(&mut self, reason: String) -> Result<Interrupted> {
        let live = self.tx.live_sessions_of(&self.node).await?;
        Ok(Interrupted {
            sealed: self.ledger.seal_as_found(live, reason).await?,
            repaired: Vec::new(),
        })
    }

    /// Commits `change` (the sessions' ends and their records) and ends the lease.
    pub async fn commit(
        mut self,
        change: Change,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AuditRecord>> {
        self.tx.apply(&change, now).await?;
        self.tx.end_lease(&self.node).await?;
        self.tx.finish().await
    }
}
