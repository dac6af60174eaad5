//! Recording files: one append-only file per session, in the directory the store keeps
//! them in (`data/recordings/`, beside the ledger's sled files). A file is a fixed header
//! line and then encoded events (see [`super::format`]), nothing else, so it costs a few bytes per event over what the session
//! carried. The ledger keeps each session's metadata; when a session ends, the file's length
//! and BLAKE3 hash go into that metadata and into the audit chain, so a changed or cut recording
//! is found when it is read.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{event_extent, whole_len, EventKind};
use super::remote::Remote;
use crate::domain::session::RecordingSeal;

/// The first bytes of every recording file.
pub const HEADER: &[u8] = b"ramp-ca recording v1\n";

/// Errors reading or writing recordings.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("recording {path} is not a ramp-ca recording (bad header)")]
    NotARecording { path: String },
    #[error("recording {path} does not match the ledger ({why}): it was changed or damaged after the session ended")]
    Mismatch { path: String, why: String },
    #[error("`{0}` is not a session id")]
    BadId(String),
    #[error("recordings at {url}: {why}")]
    Remote { url: String, why: String },
}

type Result<T> = std::result::Result<T, RecordingError>;

/// The directory of recording files.
#[derive(Debug, Clone)]
pub struct Recordings {
    dir: PathBuf,
    /// When `dir` is shared by several nodes: this node's own directory (under its
    /// `data/`) of one empty file per session it is recording, so that at start it seals
    /// only what it left live itself, never another node's session.
    mine: Option<PathBuf>,
    /// With object storage: where recordings go once written here (the spool), and this
    /// node's queue of sealed recordings still to upload (one empty file each, under its
    /// `data/`).
    remote: Option<(Arc<Remote>, PathBuf)>,
}

impl Recordings {
    /// Opens (creating, owner-only) the directory.
    pub fn open(dir: &Path) -> Result<Recordings> {
        let io = io_at(dir);
        std::fs::create_dir_all(dir).map_err(&io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(&io)?;
        }
        Ok(Recordings {
            dir: dir.to_path_buf(),
            mine: None,
            remote: None,
        })
    }

    /// Recordings written to the spool `dir` and uploaded to `remote`; `queue` is this
    /// node's directory of sealed recordings still to upload.
    pub fn open_remote(dir: &Path, remote: Arc<Remote>, queue: &Path) -> Result<Recordings> {
        let queue = Recordings::open(queue)?.dir;
        let mut recordings = Recordings::open(dir)?;
        recordings.remote = Some((remote, queue));
        Ok(recordings)
    }

    /// The object store and upload queue, with object storage.
    pub fn remote(&self) -> Option<(&Arc<Remote>, &Path)> {
        self.remote.as_ref().map(|(r, q)| (r, q.as_path()))
    }

    /// A recording's bytes (header included) from the object store, when it is kept there
    /// and not in the spool here; `None` without one.
    fn remote_bytes(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match &self.remote {
            Some((remote, _)) => remote.fetch_blocking(id),
            None => Ok(None),
        }
    }

    /// Opens a directory every node mounts (creating it if need be) and checks that this
    /// node may write there; `mine` is this node's own directory of the sessions it records.
    pub fn open_shared(dir: &Path, mine: &Path) -> Result<Recordings> {
        let io = io_at(dir);
        std::fs::create_dir_all(dir).map_err(&io)?;
        let probe = dir.join(format!(".probe-{}", hex::encode(rand::random::<[u8; 6]>())));
        std::fs::write(&probe, b"").map_err(io_at(&probe))?;
        let _ = std::fs::remove_file(&probe);
        let mut recordings = Recordings::open(mine)?;
        recordings.mine = Some(recordings.dir);
        recordings.dir = dir.to_path_buf();
        Ok(recordings)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of session `id`.
    pub fn path(&self, id: &str) -> Result<PathBuf> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(RecordingError::BadId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.rec")))
    }

    /// Whether session `id` has a recording file here.
    pub fn has(&self, id: &str) -> bool {
        self.path(id).is_ok_and(|p| p.exists())
    }

    /// Whether this node recorded session `id` (its file is here and, in a shared
    /// directory, this node noted it as its own).
    pub fn is_mine(&self, id: &str) -> bool {
        match &self.mine {
            None => self.has(id),
            Some(mine) => self.path(id).is_ok() && mine.join(id).exists(),
        }
    }

    /// Whether other nodes read these recordings too (a shared directory, or object
    /// storage).
    pub fn is_shared(&self) -> bool {
        self.mine.is_some() || self.remote.is_some()
    }

    /// Session `id`'s end is in the ledger: in a shared directory this node no longer
    /// answers for it; with object storage its recording is queued for upload whole.
    pub fn done(&self, id: &str) {
        if self.path(id).is_err() {
            return;
        }
        if let Some(mine) = &self.mine {
            let _ = std::fs::remove_file(mine.join(id));
        }
        if let Some((_, queue)) = &self.remote {
            if let Err(e) = std::fs::write(queue.join(id), b"") {
                tracing::error!(session = id, error = %e, "cannot queue the recording for upload; it stays in the spool");
            }
        }
    }

    /// Bytes free for recordings on the file system that holds them.
    pub fn free_bytes(&self) -> Result<u64> {
        fs4::available_space(&self.dir).map_err(io_at(&self.dir))
    }

    /// Starts a new, empty recording; an existing one is never overwritten.
    pub fn create(&self, id: &str) -> Result<RecordingFile> {
        let path = self.path(id)?;
        if let Some(mine) = &self.mine {
            let marker = mine.join(id);
            std::fs::write(&marker, b"").map_err(io_at(&marker))?;
        }
        let io = io_at(&path);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(&io)?;
        file.write_all(HEADER).map_err(&io)?;
        let synced = file.try_clone().map_err(&io)?;
        drop(io);
        Ok(RecordingFile {
            path,
            file,
            synced,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// A recording's events, checked against its seal when it has one.
    pub fn read(&self, id: &str, seal: Option<&RecordingSeal>) -> Result<Vec<u8>> {
        let path = self.path(id)?;
        let io = io_at(&path);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.remote_bytes(id)? {
                Some(b) => b,
                // A session refused before it recorded anything may have no file.
                None if seal.is_none() => return Ok(Vec::new()),
                None => return Err(io(e)),
            },
            Err(e) => return Err(io(e)),
        };
        if !bytes.starts_with(HEADER) {
            return Err(RecordingError::NotARecording {
                path: path.display().to_string(),
            });
        }
        bytes.drain(..HEADER.len());
        if let Some(seal) = seal {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&bytes);
            check_seal(&path, bytes.len() as u64, &hasher, seal)?;
        }
        Ok(bytes)
    }

    /// Checks a recording against its seal without holding it in memory (for verifying
    /// every recording at once); without a seal, only that it is a recording.
    pub fn check(&self, id: &str, seal: Option<&RecordingSeal>) -> Result<()> {
        let path = self.path(id)?;
        let io = io_at(&path);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.remote.is_some() => {
                // Kept in object storage: read whole, then checked the same way.
                return self.read(id, seal).map(drop);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && seal.is_none() => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut header = vec![0; HEADER.len()];
        if file.read_exact(&mut header).is_err() || header != HEADER {
            return Err(RecordingError::NotARecording {
                path: path.display().to_string(),
            });
        }
        let Some(seal) = seal else { return Ok(()) };
        let mut hasher = blake3::Hasher::new();
        let len = std::io::copy(&mut file, &mut hasher).map_err(&io)?;
        check_seal(&path, len, &hasher, seal)
    }

    /// Follows a recording as it is written, from its start.
    pub fn tail(&self, id: &str) -> Result<Tail> {
        let path = self.path(id)?;
        let source = match (File::open(&path), &self.remote) {
            (Ok(file), _) => Source::File(file),
            (Err(e), Some((remote, _))) if e.kind() == std::io::ErrorKind::NotFound => {
                Source::Remote {
                    remote: remote.clone(),
                    id: id.to_string(),
                    read: 0,
                    sealed: false,
                }
            }
            (Err(e), _) => return Err(io_at(&path)(e)),
        };
        Ok(Tail {
            path,
            source,
            header_left: HEADER.len(),
            partial: Vec::new(),
        })
    }

    /// Seals the recording of a session the bastion never ended (it crashed or was killed):
    /// cuts off an event that was half written when it died, and counts what is there.
    pub fn seal_interrupted(&self, id: &str) -> Result<Sealed> {
        let path = self.path(id)?;
        let io = io_at(&path);
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sealed::empty()),
            Err(e) => return Err(io(e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(&io)?;
        if !bytes.starts_with(HEADER) {
            // Died between creating the file and writing its header.
            file.set_len(0).map_err(&io)?;
            file.write_all(HEADER).map_err(&io)?;
            file.sync_data().map_err(&io)?;
            return Ok(Sealed::empty());
        }
        let events = &bytes[HEADER.len()..];
        let mut sealed = Sealed::empty();
        let mut at = 0;
        while let Some((kind, len)) = event_extent(&events[at..]) {
            match kind {
                EventKind::Output => sealed.bytes_out += len.data as u64,
                EventKind::Input => sealed.bytes_in += len.data as u64,
                EventKind::Resize => {}
            }
            at += len.total;
        }
        if at < events.len() {
            sealed.torn = (events.len() - at) as u64;
            file.set_len((HEADER.len() + at) as u64).map_err(&io)?;
            file.seek(SeekFrom::End(0)).map_err(&io)?;
            file.sync_data().map_err(&io)?;
        }
        sealed.seal = RecordingSeal {
            bytes: at as u64,
            blake3: blake3::hash(&events[..at]).to_hex().to_string(),
        };
        Ok(sealed)
    }
}

/// What [`Recordings::seal_interrupted`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub seal: RecordingSeal,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes of a half-written last event, cut off.
    pub torn: u64,
}

impl Sealed {
    fn empty() -> Sealed {
        Sealed {
            seal: RecordingSeal {
                bytes: 0,
                blake3: blake3::hash(b"").to_hex().to_string(),
            },
            bytes_in: 0,
            bytes_out: 0,
            torn: 0,
        }
    }
}

/// One session's recording being written. Appends go to the OS at once; [`FileSync`] makes
/// them durable from another thread, so a slow disk sync never holds up a write.
pub struct RecordingFile {
    path: PathBuf,
    file: File,
    /// The same open file, for syncing.
    synced: File,
    hasher: blake3::Hasher,
    len: u64,
}

impl RecordingFile {
    /// Appends encoded events.
    pub fn append(&mut self, events: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all(events) {
            // A partial write (disk full) is cut back, so the file stays whole events and
            // matches its seal.
            let _ = self.file.set_len(HEADER.len() as u64 + self.len);
            return Err(io_at(&self.path)(e));
        }
        self.hasher.update(events);
        self.len += events.len() as u64;
        Ok(())
    }

    /// A handle that syncs this file to disk.
    pub fn sync_handle(&self) -> Result<FileSync> {
        Ok(FileSync {
            path: self.path.clone(),
            file: self.synced.try_clone().map_err(io_at(&self.path))?,
        })
    }

    /// The last write of a session: the seal of everything appended, and whether the final
    /// sync to disk worked. The seal is returned either way, so the file is never left
    /// unchecked (it matches what was written, synced or not).
    pub fn seal(&mut self) -> (RecordingSeal, Result<()>) {
        let synced = self.file.sync_data().map_err(io_at(&self.path));
        let seal = RecordingSeal {
            bytes: self.len,
            blake3: self.hasher.finalize().to_hex().to_string(),
        };
        (seal, synced)
    }
}

/// Where a followed recording is read from.
enum Source {
    /// The file, here or in a directory the nodes share.
    File(File),
    /// Object storage (another node's session): `read` bytes of it so far.
    Remote {
        remote: Arc<Remote>,
        id: String,
        read: u64,
        /// The sealed object was read: nothing more comes.
        sealed: bool,
    },
}

/// A recording being followed (see [`Recordings::tail`]).
pub struct Tail {
    path: PathBuf,
    source: Source,
    /// Header bytes not yet skipped.
    header_left: usize,
    /// The start of an event whose rest is not written yet.
    partial: Vec<u8>,
}

impl Tail {
    /// Whether everything the recording will hold can be read now: always for a file (its
    /// writer appends before the session's end is committed); in object storage, once the
    /// sealed recording was uploaded and read.
    pub fn complete(&self) -> bool {
        match &self.source {
            Source::File(_) => true,
            Source::Remote { sealed, .. } => *sealed,
        }
    }

    /// Whole events written since the last call (possibly none).
    pub async fn read_new(&mut self) -> Result<Vec<u8>> {
        let mut fresh = Vec::new();
        match &mut self.source {
            Source::File(file) => {
                file.read_to_end(&mut fresh).map_err(io_at(&self.path))?;
            }
            Source::Remote {
                remote,
                id,
                read,
                sealed,
            } => {
                let (bytes, whole) = remote.fetch_from(id, *read).await?.unwrap_or_default();
                fresh = bytes;
                *read += fresh.len() as u64;
                *sealed = whole;
            }
        }
        let skip = self.header_left.min(fresh.len());
        self.header_left -= skip;
        self.partial.extend_from_slice(&fresh[skip..]);
        let rest = self.partial.split_off(whole_len(&self.partial));
        Ok(std::mem::replace(&mut self.partial, rest))
    }
}

/// Syncs one recording file to disk.
pub struct FileSync {
    path: PathBuf,
    file: File,
}

impl FileSync {
    /// Syncs, then lets the OS drop the synced pages from its cache: a recording is written
    /// once and rarely read soon, and reusing cache pages is much cheaper than taking fresh
    /// ones (measured: page-cache growth was 38% of the bastion's CPU in a bulk transfer).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io_at(&self.path))?;
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed);
        Ok(())
    }
}

/// Whether `len` bytes hashed by `hasher` are what `seal` says.
fn check_seal(path: &Path, len: u64, hasher: &blake3::Hasher, seal: &RecordingSeal) -> Result<()> {
    let why = if len != seal.bytes {
        format!("{len} bytes, the ledger says {}", seal.bytes)
    } else if hasher.finalize().to_hex().as_str() != seal.blake3 {
        "its BLAKE3 hash differs".to_string()
    } else {
        return Ok(());
    };
    Err(RecordingError::Mismatch {
        path: path.display().to_string(),
        why,
    })
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> RecordingError + '_ {
    move |source| RecordingError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::format::{decode_events, encode_event};

    #[test]
    fn a_recording_is_sealed_and_checked_and_a_torn_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let recs = Recordings::open(&tmp.path().join("recordings")).unwrap();
        let mut events = Vec::new();
        encode_event(&mut events, 0, EventKind::Output, b"hello\r\n");
        encode_event(&mut events, 5, EventKind::Input, b"ls\r");
        let mut file = recs.create("abc123").unwrap();
        file.append(&events).unwrap();
        let (seal, synced) = file.seal();
        synced.unwrap();
        assert_eq!(seal.bytes, events.len() as u64);
        assert_eq!(recs.read("abc123", Some(&seal)).unwrap(), events);
        assert!(recs.create("abc123").is_err(), "never overwritten");
        assert!(matches!(
            recs.read("../x", None),
            Err(RecordingError::BadId(_))
        ));

        // Changed after the seal: found.
        let path = recs.path("abc123").unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let err = recs.read("abc123", Some(&seal)).unwrap_err();
        assert!(err.to_string().contains("BLAKE3 hash differs"), "{err}");
        let err = recs.check("abc123", Some(&seal)).unwrap_err();
        assert!(err.to_string().contains("BLAKE3 hash differs"), "{err}");
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        recs.check("abc123", Some(&seal)).unwrap();
        raw.push(b'x');
        std::fs::write(&path, &raw).unwrap();
        let err = recs.check("abc123", Some(&seal)).unwrap_err();
        assert!(err.to_string().contains("bytes, the ledger says"), "{err}");

        // Killed mid-write: the half event is cut off, the rest counted.
        let mut file = recs.create("def456").unwrap();
        file.append(&events).unwrap();
        let mut half = Vec::new();
        encode_event(&mut half, 9, EventKind::Output, b"lost in the crash");
        file.append(&half[..10]).unwrap();
        drop(file);
        let sealed = recs.seal_interrupted("def456").unwrap();
        assert_eq!(sealed.torn, 10);
        assert_eq!((sealed.bytes_in, sealed.bytes_out), (3, 7));
        let kept = recs.read("def456", Some(&sealed.seal)).unwrap();
        assert_eq!(decode_events(&kept).unwrap().len(), 2);
        assert_eq!(recs.seal_interrupted("nofile").unwrap().seal.bytes, 0);

        // Following a recording yields whole events only, as they are written.
        let mut file = recs.create("ghi789").unwrap();
        let mut tail = recs.tail("ghi789").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(tail.read_new()).unwrap().is_empty());
        file.append(&events[..5]).unwrap();
        assert!(
            rt.block_on(tail.read_new()).unwrap().is_empty(),
            "half an event"
        );
        file.append(&events[5..]).unwrap();
        assert_eq!(rt.block_on(tail.read_new()).unwrap(), events);
    }
}
