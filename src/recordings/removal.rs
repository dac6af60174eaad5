//! Deleting a finished recording for retention (`keep:`): where it is kept decides who can
//! delete it. This node's own `data/recordings` holds only what it recorded, so another
//! node's recording is left to that node; a shared directory or object storage can be
//! cleared from any node. With object storage a recording still in this node's spool (not
//! uploaded yet) waits: deleting the object before its upload would let the upload bring
//! it back.

use super::files::{RecordingError, Recordings};

type Result<T> = std::result::Result<T, RecordingError>;

impl Recordings {
    /// Whether this node can delete session `id`'s recording now: its file is here, or
    /// (object storage) it is uploaded and not in this node's spool.
    pub async fn removable(&self, id: &str) -> Result<bool> {
        let here = self.has(id);
        match self.remote() {
            None => Ok(here),
            Some(_) if here => Ok(false),
            Some((remote, _)) => remote.has_sealed(id).await,
        }
    }

    /// Deletes session `id`'s recording; one already gone is fine (a removal repeated
    /// after a crash).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let path = self.path(id)?;
        let at = path.clone();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_file(&at) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| RecordingError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        removed.map_err(|source| RecordingError::Io {
            path: path.display().to_string(),
            source,
        })?;
        match self.remote() {
            Some((remote, _)) => remote.delete(id).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recording_here_or_shared_is_removed_once_and_again_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let local = Recordings::open(&dir.path().join("recordings")).unwrap();
        let shared =
            Recordings::open_shared(&dir.path().join("shared"), &dir.path().join("mine")).unwrap();
        for recordings in [local, shared] {
            assert!(!recordings.removable("s1").await.unwrap(), "no file yet");
            let mut file = recordings.create("s1").unwrap();
            file.append(b"x").unwrap();
            drop(file);
            assert!(recordings.removable("s1").await.unwrap());
            recordings.remove("s1").await.unwrap();
            assert!(!recordings.has("s1"));
            recordings.remove("s1").await.unwrap();
            assert!(
                recordings.remove("../etc").await.is_err(),
                "not a session id"
            );
        }
    }
}
