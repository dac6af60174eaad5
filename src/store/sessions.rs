//! Recorded sessions in the ledger: their metadata, their recording files, and what a daemon
//! that died left behind.

use std::path::Path;

use super::{all, decode, seals, Result, Store, StoreError};
use crate::domain::session::{SessionMeta, SessionState, INTERRUPTED_REASON};
use crate::recordings::files::{RecordingFile, Tail};
use crate::recordings::format::{decode_events, Event};

/// What a daemon that died left behind, found at the next start (see
/// [`Store::interrupted`]).
#[derive(Debug, Default)]
pub struct Interrupted {
    /// Sessions it left live, now interrupted with their recordings sealed as they are on
    /// disk: each still needs the audit record that ends it.
    pub sealed: Vec<SessionMeta>,
    /// Metadata to write back as it is: finished sessions linked to the record that ended
    /// them, and live ones the chain had ended, put back as the chain says.
    pub repaired: Vec<SessionMeta>,
}

impl Store {
    pub fn session(&self, id: &str) -> Result<Option<SessionMeta>> {
        self.sessions
            .get(id.as_bytes())?
            .map(|b| decode("sessions", id.as_bytes(), &b))
            .transpose()
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionMeta>> {
        let mut out: Vec<SessionMeta> = all("sessions", &self.sessions)?;
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A session's events in order, checked against its seal: the one in its metadata,
    /// which must be the one in the audit record that ended the session.
    pub fn session_events(&self, meta: &SessionMeta) -> Result<Vec<Event>> {
        let seal = self.audited_seal(meta)?;
        let bytes = self.recordings.read(&meta.id, seal.as_ref())?;
        decode_events(&bytes).map_err(|e| StoreError::Corrupt {
            tree: "recordings",
            key: meta.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Starts the recording file of session `id`; an existing one is never overwritten.
    pub fn create_recording(&self, id: &str) -> Result<RecordingFile> {
        Ok(self.recordings.create(id)?)
    }

    /// Follows the recording of session `id` as it is written.
    pub fn tail_recording(&self, id: &str) -> Result<Tail> {
        Ok(self.recordings.tail(id)?)
    }

    /// Bytes free on the disk that holds the recordings, and where they are.
    pub fn recording_space(&self) -> Result<(u64, &Path)> {
        Ok((self.recordings.free_bytes()?, self.recordings.dir()))
    }

    /// Seals the recordings of sessions left `live` by a daemon that died, as they are on
    /// disk (a half-written last event is cut off), and marks them interrupted. A session the
    /// chain already ended is not sealed again (its metadata was set back to `live`): its
    /// seal is taken back from the chain, so a changed recording is still found. Finished
    /// sessions that name no end record (from older versions) are linked to theirs, so
    /// reads need not search the chain. One pass over the chain, only when needed.
    pub fn interrupted(&self) -> Result<Interrupted> {
        let (live, unlinked): (Vec<SessionMeta>, Vec<SessionMeta>) = self
            .sessions()?
            .into_iter()
            .filter(|s| s.state == SessionState::Live || s.sealed_in.is_none())
            .partition(|s| s.state == SessionState::Live);
        let mut out = Interrupted::default();
        if live.is_empty() && unlinked.is_empty() {
            return Ok(out);
        }
        let ended = self.session_ends()?;
        for mut s in unlinked {
            if let Some(end) = ended.get(&s.id).and_then(|e| e.first()) {
                s.sealed_in = Some(end.seq);
                out.repaired.push(s);
            }
        }
        for mut s in live {
            if let Some(end) = ended.get(&s.id).and_then(|e| e.first()) {
                tracing::error!(session = %s.id, record = end.seq, "the ledger says this session is live but the audit chain ended it; its metadata was altered");
                out.repaired.push(seals::restore_from(s, end));
                continue;
            }
            let sealed = self.recordings.seal_interrupted(&s.id)?;
            s.state = SessionState::Interrupted;
            s.end_reason = Some(INTERRUPTED_REASON.into());
            // The metadata may lag the file by one flush; the file is the truth.
            s.bytes_in = sealed.bytes_in;
            s.bytes_out = sealed.bytes_out;
            s.recording = Some(sealed.seal);
            out.sealed.push(s);
        }
        Ok(out)
    }
}
