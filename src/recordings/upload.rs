//! With object storage (see [`super::remote`]): the task that copies this node's spool out.
//! Every [`UPLOAD_EVERY`] it uploads what each live recording gained since the last pass as
//! a segment (so another node can follow it), and each sealed recording in the upload queue
//! as one object, after which the spool file and its queue entry go. Nothing is removed
//! before its upload succeeded: a failure is logged and retried with a backoff doubling up
//! to [`MAX_BACKOFF`], and `ramp_recordings_upload_pending` counts what waits.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::files::{RecordingError, Recordings};
use crate::metrics::Metrics;

/// How often live recordings gain a segment (when they grew) and sealed ones are uploaded.
pub const UPLOAD_EVERY: Duration = Duration::from_secs(2);
/// The longest wait before retrying a failed upload.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At a clean stop, the last pass waits at most this long for the object store.
pub const FINAL_PASS: Duration = Duration::from_secs(10);

/// Where one recording's upload stands.
#[derive(Default)]
struct Progress {
    /// Bytes of the spool file uploaded as segments.
    sent: u64,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// Not before then, after a failure.
    retry_at: Option<Instant>,
}

impl Progress {
    fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let backoff = UPLOAD_EVERY * 2u32.saturating_pow(self.failures.min(8));
        self.retry_at = Some(now + backoff.min(MAX_BACKOFF));
    }
}

/// The upload task, while it runs.
pub struct Uploader {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Uploader {
    /// Starts uploading `recordings`' spool, if they are kept in object storage.
    pub fn start(recordings: Recordings, metrics: Arc<Metrics>) -> Option<Uploader> {
        recordings.remote()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(recordings, metrics, stopped));
        Some(Uploader { stop, task })
    }

    /// Stops after one last pass (bounded by [`FINAL_PASS`]); what is left stays in the
    /// spool and goes out at the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(recordings: Recordings, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut tick = tokio::time::interval(UPLOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        pass(&recordings, &metrics, &mut progress).await;
    }
    for p in progress.values_mut() {
        p.retry_at = None;
    }
    let last = pass(&recordings, &metrics, &mut progress);
    if tokio::time::timeout(FINAL_PASS, last).await.is_err() {
        tracing::warn!(
            "recordings not all uploaded at stop; they stay in the spool and go at the next start"
        );
    }
}

/// Names in a directory that are session ids (optionally with `suffix`), sorted.
fn ids_in(dir: &Path, suffix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .filter(|id| !id.is_empty() && !id.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

/// Bytes `from..` of a spool file, and its length.
fn tail_of(path: &Path, from: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    if len > from {
        file.seek(SeekFrom::Start(from))?;
        file.take(len - from).read_to_end(&mut bytes)?;
    }
    Ok((bytes, len))
}

/// One pass over the queue of sealed recordings, then the live ones.
async fn pass(
    recordings: &Recordings,
    metrics: &Metrics,
    progress: &mut HashMap<String, Progress>,
) {
    let Some((remote, queue)) = recordings.remote() else {
        return;
    };
    let (remote, queue) = (remote.clone(), queue.to_path_buf());
    let now = Instant::now();
    let sealed = ids_in(&queue, "");
    let mut pending = 0;
    for id in &sealed {
        let Ok(path) = recordings.path(id) else {
            let _ = std::fs::remove_file(queue.join(id));
            continue;
        };
        let p = progress.entry(id.clone()).or_default();
        if !p.due(now) {
            pending += 1;
            continue;
        }
        let uploaded = match std::fs::read(&path) {
            Ok(bytes) => remote.put_sealed(id, bytes).await,
            // Uploaded and removed before a crash took the queue entry with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RecordingError::Io {
                path: path.display().to_string(),
                source: e,
            }),
        };
        match uploaded {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(queue.join(id));
                progress.remove(id);
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot upload the sealed recording; it stays in the spool and is retried");
                metrics.recording_upload_failed();
                p.failed(now);
                pending += 1;
            }
        }
    }
    for id in ids_in(recordings.dir(), ".rec") {
        if sealed.contains(&id) {
            continue;
        }
        let Ok(path) = recordings.path(&id) else {
            continue;
        };
        let p = progress.entry(id.clone()).or_default();
        let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else {
            continue;
        };
        if len <= p.sent {
            continue;
        }
        if !p.due(now) {
            pending += 1;
            continue;
        }
        let from = p.sent;
        let uploaded = match tail_of(&path, from) {
            Ok((bytes, len)) => remote.put_segment(&id, from, bytes).await.map(|()| len),
            Err(e) => Err(RecordingError::Io {
                path: path.display().to_string(),
                source: e,
            }),
        };
        match uploaded {
            Ok(len) => {
                p.sent = len;
                p.failures = 0;
                p.retry_at = None;
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot upload the live recording's latest part; retried");
                metrics.recording_upload_failed();
                p.failed(now);
                pending += 1;
            }
        }
    }
    // Recordings gone from the spool (sealed and uploaded) need no progress kept.
    progress.retain(|id, _| recordings.has(id) || sealed.contains(id));
    metrics.set_recording_uploads_pending(pending);
}
