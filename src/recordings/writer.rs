//! Recording off the data path: proxies append events to an in-memory buffer; one flusher
//! appends every live session's buffer to its recording file at least every half second
//! (sooner when a buffer fills), and a syncer makes the files durable every half second
//! without holding up the writes. A full buffer makes its proxy wait (a bounded queue). A
//! failed write, or a recording disk with less than the configured space free, fails the
//! recorder, and its proxy ends the session rather than run it unrecorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use super::files::{FileSync, RecordingFile};
use super::format::{encode_event, EventKind};
use crate::domain::session::{SessionMeta, SessionState};
use crate::metrics::Metrics;
use crate::service::{Service, ServiceError};

/// How often buffers are written at the latest (sooner when one fills), and how often
/// written recordings are synced to disk; the durability promise is one second.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// A proxy waits once its session's unwritten events exceed this.
pub const MAX_BUFFER: usize = 8 * 1024 * 1024;
/// Space kept free on the recording disk unless configured otherwise: below it new
/// sessions are refused and live ones ended, while the ledger still has room to record why.
pub const DEFAULT_MIN_FREE: u64 = 64 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One session's recording.
pub struct Recorder {
    pub id: String,
    /// When the session started, for event times.
    started: tokio::time::Instant,
    inner: Mutex<Inner>,
    /// Only the flusher writes the file.
    file: Mutex<RecordingFile>,
    syncer: FileSync,
    /// Written since the last sync.
    unsynced: AtomicBool,
    /// Signalled after each flush, for proxies waiting on a full buffer.
    flushed: Notify,
    /// Wakes the flusher early when this buffer is full, so a busy session is not held to
    /// one buffer per tick.
    wake: Arc<Notify>,
    /// Why the recording can no longer be written; the session must end.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    /// Bytes relayed and recording lag, for `/metrics`.
    metrics: Arc<Metrics>,
    /// Ends the connection the session runs on, with why (set by the bastion).
    ender: std::sync::OnceLock<tokio::sync::watch::Sender<Option<String>>>,
}

/// What the flusher has not written yet.
struct Inner {
    buf: Vec<u8>,
    meta: SessionMeta,
    /// Metadata changed since the last write.
    dirty: bool,
}

impl Recorder {
    fn push(&self, kind: EventKind, data: &[u8]) {
        let at = self.started.elapsed().as_millis() as u64;
        let mut inner = lock(&self.inner);
        encode_event(&mut inner.buf, at, kind, data);
        match kind {
            EventKind::Output => inner.meta.bytes_out += data.len() as u64,
            EventKind::Input => inner.meta.bytes_in += data.len() as u64,
            EventKind::Resize => {}
        }
        inner.dirty = true;
        drop(inner);
        if kind != EventKind::Resize {
            self.metrics.proxied(kind == EventKind::Input, data.len());
        }
        self.metrics.recording_buffered();
    }

    /// Bytes from the target to the client.
    pub fn output(&self, data: &[u8]) {
        self.push(EventKind::Output, data);
    }

    /// Bytes from the client to the target.
    pub fn input(&self, data: &[u8]) {
        self.push(EventKind::Input, data);
    }

    /// A terminal size change.
    pub fn resize(&self, cols: u32, rows: u32) {
        self.push(EventKind::Resize, format!("{cols}x{rows}").as_bytes());
    }

    /// A file an sftp/scp session touched (`op path`).
    pub fn file(&self, entry: String) {
        let mut inner = lock(&self.inner);
        if !inner.meta.files.contains(&entry) && inner.meta.files.len() < 10_000 {
            inner.meta.files.push(entry);
            inner.dirty = true;
        }
    }

    /// Whom to tell when someone ends the session: its connection's cut-off.
    pub fn ends_with(&self, cutoff: tokio::sync::watch::Sender<Option<String>>) {
        let _ = self.ender.set(cutoff);
    }

    /// Why the recording can no longer be written, once it cannot.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.failure).clone()
    }

    /// Marks the recording failed (the first reason stays).
    fn fail(&self, why: String) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(session = %self.id, %why, "ending the session: its recording failed");
            *failure = Some(why);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Waits while the unwritten buffer is over its bound.
    pub async fn backpressure(&self) {
        loop {
            let notified = self.flushed.notified();
            if lock(&self.inner).buf.len() <= MAX_BUFFER || self.failed.load(Ordering::SeqCst) {
                return;
            }
            self.wake.notify_one();
            notified.await;
        }
    }

    /// Ends the recording; the flusher writes the final state.
    pub fn finish(&self, exit_status: Option<u32>, reason: Option<String>) {
        let mut inner = lock(&self.inner);
        if inner.meta.state == SessionState::Live {
            inner.meta.state = SessionState::Ended;
            inner.meta.end = Some(Utc::now());
            inner.meta.exit_status = exit_status;
            inner.meta.end_reason = reason;
            inner.dirty = true;
        }
    }

    /// A copy of the metadata as it stands.
    pub fn meta(&self) -> SessionMeta {
        lock(&self.inner).meta.clone()
    }

    /// Appends what is buffered; on the session's end, seals the file. Returns the metadata
    /// to store, if it changed.
    fn write(&self) -> Option<SessionMeta> {
        let (chunk, mut meta) = {
            let mut inner = lock(&self.inner);
            if inner.buf.is_empty() && !inner.dirty {
                return None;
            }
            inner.dirty = false;
            (std::mem::take(&mut inner.buf), inner.meta.clone())
        };
        let mut file = lock(&self.file);
        if !chunk.is_empty() {
            match file.append(&chunk) {
                Ok(()) => self.unsynced.store(true, Ordering::SeqCst),
                Err(e) => self.fail(format!("cannot write the session recording ({e})")),
            }
        }
        if meta.state != SessionState::Live {
            let (seal, synced) = file.seal();
            meta.recording = Some(seal);
            if let Err(e) = synced {
                tracing::error!(session = %self.id, error = %e, "cannot sync the recording's end");
                let why = format!("the recording's last sync failed ({e})");
                meta.end_reason = Some(match meta.end_reason.take() {
                    Some(r) => format!("{r}; {why}"),
                    None => why,
                });
            }
        }
        Some(meta)
    }
}

/// Every live recording and the ledger they go to.
pub struct Recorders {
    service: Arc<Service>,
    live: Mutex<HashMap<String, Arc<Recorder>>>,
    /// Rung by a recorder whose buffer is full.
    wake: Arc<Notify>,
    /// Bytes kept free on the recording disk.
    min_free: u64,
    /// Sessions that ended (sealed) while the ledger could not be reached: their ends are
    /// recorded at the next flush that reaches it.
    unrecorded_ends: Mutex<Vec<SessionMeta>>,
}

impl Recorders {
    pub fn new(service: Arc<Service>, min_free: u64) -> Arc<Recorders> {
        Arc::new(Recorders {
            service,
            live: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            min_free,
            unrecorded_ends: Mutex::new(Vec::new()),
        })
    }

    /// Why no session may record now: the recording disk is (nearly) full.
    fn disk_full(&self) -> Option<String> {
        match self.service.recording_space() {
            Ok((free, dir)) if free < self.min_free => Some(format!(
                "the recording disk is full ({} MiB free in {}, {} MiB kept free)",
                free >> 20,
                dir.display(),
                self.min_free >> 20
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the free space on the recording disk");
                None
            }
        }
    }

    /// Starts recording a session: its file exists and its metadata is on disk, and
    /// audited, before it returns; refused when the recording disk is full.
    pub async fn start(&self, mut meta: SessionMeta) -> Result<Arc<Recorder>, String> {
        if let Some(why) = self.disk_full() {
            return Err(why);
        }
        let file = self
            .service
            .start_recording(&mut meta, Utc::now())
            .await
            .map_err(|e| e.to_string())?;
        let syncer = file.sync_handle().map_err(|e| e.to_string())?;
        let rec = Arc::new(Recorder {
            id: meta.id.clone(),
            started: tokio::time::Instant::now(),
            inner: Mutex::new(Inner {
                buf: Vec::new(),
                meta,
                dirty: false,
            }),
            file: Mutex::new(file),
            syncer,
            unsynced: AtomicBool::new(false),
            flushed: Notify::new(),
            wake: self.wake.clone(),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            metrics: self.service.metrics().clone(),
            ender: std::sync::OnceLock::new(),
        });
        let mut live = lock(&self.live);
        live.insert(rec.id.clone(), rec.clone());
        self.service.metrics().set_live_sessions(live.len());
        drop(live);
        Ok(rec)
    }

    /// The live recordings, for the dashboard and tests.
    pub fn live(&self) -> Vec<SessionMeta> {
        lock(&self.live).values().map(|r| r.meta()).collect()
    }

    /// Ends live session `id` (its connection) saying `why`; false when it is not live here.
    pub fn stop(&self, id: &str, why: String) -> bool {
        let Some(rec) = lock(&self.live).get(id).cloned() else {
            return false;
        };
        match rec.ender.get() {
            Some(cutoff) => {
                tracing::info!(session = %id, %why, "ending a session on request");
                cutoff.send_if_modified(|c| {
                    let first = c.is_none();
                    if first {
                        *c = Some(why);
                    }
                    first
                });
                true
            }
            None => false,
        }
    }

    /// Whether session `id` is still being recorded.
    pub fn is_live(&self, id: &str) -> bool {
        lock(&self.live).contains_key(id)
    }

    fn recorders(&self) -> Vec<Arc<Recorder>> {
        lock(&self.live).values().cloned().collect()
    }

    /// Writes every pending buffer to its file; returns the metadata that changed, of live
    /// sessions and of sessions that ended (sealed). When the disk is nearly full, every
    /// live session is failed.
    fn write_all(&self, recorders: &[Arc<Recorder>]) -> (Vec<SessionMeta>, Vec<SessionMeta>) {
        let full = self.disk_full();
        let (mut live, mut ended) = (Vec::new(), Vec::new());
        for rec in recorders {
            if let Some(why) = &full {
                rec.fail(why.clone());
            }
            let Some(meta) = rec.write() else { continue };
            if meta.state == SessionState::Live {
                live.push(meta);
            } else {
                ended.push(meta);
            }
        }
        (live, ended)
    }

    /// Writes every pending buffer and metadata change. Ended sessions are sealed, audited
    /// (with their seals, in one commit) and forgotten.
    pub async fn flush_all(self: &Arc<Self>) {
        let metrics = self.service.metrics().clone();
        metrics.recording_flush_started();
        let recorders = self.recorders();
        let (me, recs) = (self.clone(), recorders.clone());
        let written = tokio::task::spawn_blocking(move || me.write_all(&recs)).await;
        let (live, ended) = written.unwrap_or_default();
        // Buffers are drained: proxies waiting on a full one go on.
        for rec in &recorders {
            rec.flushed.notify_waiters();
        }
        if !live.is_empty() {
            let ids: Vec<String> = live.iter().map(|m| m.id.clone()).collect();
            match self.service.update_sessions(live, Utc::now()).await {
                // The ledger is away (an outage): the recordings go on on disk, and the
                // metadata is written again by a later flush or the session's end.
                Err(ServiceError::Ledger(e)) if e.outage().is_some() => {
                    for rec in recorders.iter().filter(|r| ids.contains(&r.id)) {
                        lock(&rec.inner).dirty = true;
                    }
                }
                Err(e) => {
                    for rec in recorders.iter().filter(|r| ids.contains(&r.id)) {
                        rec.fail(format!("cannot write the session's metadata ({e})"));
                    }
                }
                Ok(()) => {}
            }
        }
        let mut ended = ended;
        ended.splice(0..0, std::mem::take(&mut *lock(&self.unrecorded_ends)));
        if !ended.is_empty() {
            let gone: Vec<String> = ended.iter().map(|m| m.id.clone()).collect();
            match self.service.end_sessions(ended.clone(), Utc::now()).await {
                Ok(()) => {}
                Err(ServiceError::Ledger(e)) if e.outage().is_some() => {
                    // Sealed already: their ends are recorded once the ledger is back.
                    tracing::warn!(
                        sessions = ended.len(),
                        "session ends wait for the ledger: {e}"
                    );
                    lock(&self.unrecorded_ends).extend(ended);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record session ends in the ledger; keeping their metadata alone");
                    if let Err(e) = self.service.update_sessions(ended, Utc::now()).await {
                        tracing::error!(error = %e, "cannot write the ended sessions' metadata");
                    }
                }
            }
            let mut live = lock(&self.live);
            for id in &gone {
                live.remove(id);
            }
            metrics.set_live_sessions(live.len());
        }
        metrics.recording_flush_done();
    }

    /// Syncs what was written since the last sync: recording files, then the ledger.
    pub async fn sync_all(self: &Arc<Self>) {
        let recorders = self.recorders();
        let _ = tokio::task::spawn_blocking(move || {
            for rec in recorders {
                if rec.unsynced.swap(false, Ordering::SeqCst) {
                    if let Err(e) = rec.syncer.sync() {
                        rec.fail(format!("cannot sync the session recording to disk ({e})"));
                    }
                }
            }
        })
        .await;
        if let Err(e) = self.service.on_disk().await {
            tracing::error!(error = %e, "cannot sync the ledger; ending live sessions");
            for rec in self.recorders() {
                rec.fail(format!("cannot sync the ledger to disk ({e})"));
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] (and when a buffer fills) and syncs every
    /// [`FLUSH_EVERY`] until `stop` fires, then flushes and syncs once more.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let syncer = tokio::spawn(self.clone().sync_loop(stop.clone()));
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => break,
            }
            self.flush_all().await;
        }
        let _ = syncer.await;
        self.flush_all().await;
        self.sync_all().await;
    }

    async fn sync_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.sync_all().await;
        }
    }
}
