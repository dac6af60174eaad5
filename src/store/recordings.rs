//! The ledger's recordings: where they are opened (this node's `data/recordings`, a
//! directory every node mounts, or object storage with this node's spool), and the
//! [`Ledger`] methods the service records and reads them through.

use std::path::Path;
use std::sync::Arc;

use super::{Ledger, Result};
use crate::recordings::files::{RecordingFile, Recordings, Tail};
use crate::recordings::place::Place;
use crate::recordings::remote::Remote;

/// Opens the recordings at `place` for the installation whose data is `data`.
pub(super) async fn open(data: &Path, place: &Place) -> Result<Recordings> {
    Ok(match place {
        Place::Local => Recordings::open(&data.join("recordings"))?,
        Place::Shared(dir) => Recordings::open_shared(dir, &data.join("recordings-mine"))?,
        Place::Object(url) => Recordings::open_remote(
            &data.join("recordings"),
            Arc::new(Remote::open(url).await?),
            &data.join("recordings-upload"),
        )?,
    })
}

impl Ledger {
    /// Starts the recording file of session `id`; an existing one is never overwritten.
    pub fn create_recording(&self, id: &str) -> Result<RecordingFile> {
        Ok(self.recordings.create(id)?)
    }

    /// Whether the recordings are in a directory other nodes share (so this node can read,
    /// and follow, the sessions other nodes record).
    pub fn recordings_shared(&self) -> bool {
        self.recordings.is_shared()
    }

    /// The recordings, when they go to object storage: for the task that uploads them.
    pub fn uploaded_recordings(&self) -> Option<Recordings> {
        self.recordings.remote().map(|_| self.recordings.clone())
    }

    /// With object storage: queues for upload every recording in this node's spool whose
    /// session the ledger no longer says is live (ended before a crash took its queue
    /// entry, or before this node uploaded its recordings); how many.
    pub async fn queue_finished_uploads(&self) -> Result<usize> {
        if self.recordings.remote().is_none() {
            return Ok(0);
        }
        let live: std::collections::HashSet<String> = self
            .live_sessions()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut queued = 0;
        for s in self.sessions().await? {
            if !live.contains(&s.id) && self.recordings.has(&s.id) {
                self.recordings.done(&s.id);
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Notes that these sessions' ends are in the ledger: this node no longer answers for
    /// their recordings (see [`Recordings::is_mine`]).
    pub fn recordings_done(&self, ids: &[String]) {
        for id in ids {
            self.recordings.done(id);
        }
    }

    /// Whether this node can delete session `id`'s recording now (see
    /// [`Recordings::removable`]).
    pub async fn recording_removable(&self, id: &str) -> Result<bool> {
        Ok(self.recordings.removable(id).await?)
    }

    /// Deletes session `id`'s recording (retention; the ledger says so first).
    pub async fn remove_recording(&self, id: &str) -> Result<()> {
        Ok(self.recordings.remove(id).await?)
    }

    /// Follows the recording of session `id` as it is written.
    pub fn tail_recording(&self, id: &str) -> Result<Tail> {
        Ok(self.recordings.tail(id)?)
    }

    /// Bytes free on the disk that holds the recordings, and where they are.
    pub fn recording_space(&self) -> Result<(u64, &Path)> {
        Ok((self.recordings.free_bytes()?, self.recordings.dir()))
    }
}
