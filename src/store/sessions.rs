//! What a daemon that died left behind in the ledger: sessions it left live, found at the
//! next start.

use super::seals::{self, Ends};
use super::{on_thread, Ledger, Result};
use crate::domain::session::{SessionMeta, SessionState, INTERRUPTED_REASON};

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
    /// reads need not search the chain. With a shared ledger, a live session this node did not
    /// record (its recording is not in this node's directory, or, in a directory nodes share,
    /// not noted as this node's) is another node's and is left alone. The chain's end
    /// records are read only when there is something to look at.
    pub async fn interrupted(&self) -> Result<Interrupted> {
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
            } else if self.is_shared() && !self.recordings.is_mine(&s.id) {
                tracing::debug!(session = %s.id, "live on another node (this node did not record it)");
            } else {
                to_seal.push(s);
            }
        }
        let recordings = self.recordings.clone();
        out.sealed = on_thread(move || {
            to_seal
                .into_iter()
                .map(|mut s| {
                    let sealed = recordings.seal_interrupted(&s.id)?;
                    s.state = SessionState::Interrupted;
                    s.end_reason = Some(INTERRUPTED_REASON.into());
                    // The metadata may lag the file by one flush; the file is the truth.
                    s.bytes_in = sealed.bytes_in;
                    s.bytes_out = sealed.bytes_out;
                    s.recording = Some(sealed.seal);
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        Ok(out)
    }
}
