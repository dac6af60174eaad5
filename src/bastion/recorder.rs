//! Recording off the data path: proxies append events to an in-memory buffer; one flusher
//! writes every live session's buffer to the ledger and syncs it to disk at least every
//! second. A full buffer makes its proxy wait (a bounded queue); a failed write marks the
//! recorder failed, and its proxy ends the session rather than run it unrecorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use crate::recording::{encode_event, EventKind, SessionMeta, SessionState};
use crate::service::Service;
use crate::store::Event;

/// How often buffers go to disk at the latest (sooner when one fills); the durability
/// promise is one second.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// A proxy waits once its session's unflushed events exceed this.
pub const MAX_BUFFER: usize = 8 * 1024 * 1024;

/// One session's recording.
pub struct Recorder {
    pub id: String,
    /// When the session started, for event times.
    started: tokio::time::Instant,
    inner: Mutex<Inner>,
    /// Signalled after each flush, for proxies waiting on a full buffer.
    flushed: Notify,
    /// Wakes the flusher early when this buffer is full, so a busy session is not held to
    /// one buffer per tick.
    wake: Arc<Notify>,
    /// Set when a write failed; the session must end.
    failed: AtomicBool,
}

/// What the flusher has not written yet.
struct Inner {
    buf: Vec<u8>,
    /// Next chunk number.
    seq: u64,
    meta: SessionMeta,
    /// Metadata changed since the last write.
    dirty: bool,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, kind: EventKind, data: &[u8]) {
        let at = self.started.elapsed().as_millis() as u64;
        let mut inner = self.lock();
        encode_event(&mut inner.buf, at, kind, data);
        match kind {
            EventKind::Output => inner.meta.bytes_out += data.len() as u64,
            EventKind::Input => inner.meta.bytes_in += data.len() as u64,
            EventKind::Resize => {}
        }
        inner.dirty = true;
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
        let mut inner = self.lock();
        if !inner.meta.files.contains(&entry) && inner.meta.files.len() < 10_000 {
            inner.meta.files.push(entry);
            inner.dirty = true;
        }
    }

    /// Whether the recording can no longer be written.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits while the unflushed buffer is over its bound.
    pub async fn backpressure(&self) {
        loop {
            let notified = self.flushed.notified();
            if self.lock().buf.len() <= MAX_BUFFER || self.failed() {
                return;
            }
            self.wake.notify_one();
            notified.await;
        }
    }

    /// Ends the recording; the flusher writes the final state.
    pub fn finish(&self, exit_status: Option<u32>, reason: Option<String>) {
        let mut inner = self.lock();
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
        self.lock().meta.clone()
    }
}

/// Every live recording and the ledger they go to.
pub struct Recorders {
    service: Arc<Service>,
    live: Mutex<HashMap<String, Arc<Recorder>>>,
    /// Rung by a recorder whose buffer is full.
    wake: Arc<Notify>,
}

impl Recorders {
    pub fn new(service: Arc<Service>) -> Arc<Recorders> {
        Arc::new(Recorders {
            service,
            live: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Starts recording a session: its metadata is on disk, and audited, before it returns.
    pub fn start(&self, meta: SessionMeta) -> Result<Arc<Recorder>, crate::store::StoreError> {
        let store = &self.service.store;
        store.put_session(&meta)?;
        let detail = serde_json::json!({"target": meta.target, "principal": meta.principal, "kind": meta.kind,
            "command": meta.command, "grant": meta.grant, "serial": meta.serial, "client": meta.client});
        store.audit_events(
            vec![Event::new(&meta.user, "session-start", &meta.id, detail)],
            Utc::now(),
        )?;
        let rec = Arc::new(Recorder {
            id: meta.id.clone(),
            started: tokio::time::Instant::now(),
            inner: Mutex::new(Inner {
                buf: Vec::new(),
                seq: 0,
                meta,
                dirty: false,
            }),
            flushed: Notify::new(),
            wake: self.wake.clone(),
            failed: AtomicBool::new(false),
        });
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// The live recordings, for the dashboard and tests.
    pub fn live(&self) -> Vec<SessionMeta> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().map(|r| r.meta()).collect()
    }

    /// Writes every pending buffer and metadata change, then syncs to disk. Ended sessions
    /// are audited and forgotten once written.
    pub fn flush_all(&self) {
        let recorders: Vec<Arc<Recorder>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let store = &self.service.store;
        let mut ended = Vec::new();
        for rec in &recorders {
            let (chunk, seq, meta) = {
                let mut inner = rec.lock();
                if inner.buf.is_empty() && !inner.dirty {
                    continue;
                }
                let chunk = std::mem::take(&mut inner.buf);
                let seq = inner.seq;
                if !chunk.is_empty() {
                    inner.seq += 1;
                }
                inner.dirty = false;
                (chunk, seq, inner.meta.clone())
            };
            let written = (chunk.is_empty() || store.append_events(&rec.id, seq, &chunk).is_ok())
                && store.put_session(&meta).is_ok();
            if !written {
                tracing::error!(session = %rec.id, "cannot write the recording; ending the session");
                rec.failed.store(true, Ordering::SeqCst);
            }
            if meta.state != SessionState::Live {
                ended.push(meta);
            }
        }
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "cannot sync recordings to disk; ending live sessions");
            for rec in &recorders {
                rec.failed.store(true, Ordering::SeqCst);
            }
        }
        if !ended.is_empty() {
            let events = ended
                .iter()
                .map(|m| {
                    let detail = serde_json::json!({"exit_status": m.exit_status, "reason": m.end_reason,
                        "bytes_in": m.bytes_in, "bytes_out": m.bytes_out, "files": m.files});
                    Event::new(&m.user, "session-end", &m.id, detail)
                })
                .collect();
            if let Err(e) = store.audit_events(events, Utc::now()) {
                tracing::error!(error = %e, "cannot audit session ends");
            }
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            for m in &ended {
                live.remove(&m.id);
            }
        }
        for rec in &recorders {
            rec.flushed.notify_waiters();
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop` fires, then once more.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => break,
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.flush_all()).await;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.flush_all()).await;
    }
}
