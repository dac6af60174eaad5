//! The daemon's side of checkpoints: every `audit: {checkpoint_every: ...}` (default 5m)
//! when the chain grew, and once more at stop, sign the chain's head with the audit-signer
//! key, keep it in `data/checkpoints/` and announce it (webhook event `checkpoint`).
//! Nothing is signed over a chain that no longer holds the last checkpoint kept and runs on
//! from it: the service never vouches for a rewrite.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Signed;
use crate::service::{Service, ServiceError};
use crate::store::Head;

/// The `audit:` section of the service config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How often the chain's head is signed when the chain grew, like `10m`.
    pub checkpoint_every: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            checkpoint_every: "5m".into(),
        }
    }
}

impl Settings {
    /// Whether the settings make sense, with what is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.every().map(|_| ())
    }

    /// The interval between checkpoints.
    pub fn every(&self) -> Result<Duration, String> {
        crate::policy::parse_duration(&self.checkpoint_every)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                format!(
                    "audit.checkpoint_every: `{}` is not a duration like 5m, 1h (at least 1s)",
                    self.checkpoint_every
                )
            })
    }
}

/// Signs the chain's head at `now`, once the chain is found to hold the last checkpoint
/// kept and to run on from it (the whole chain when none is kept yet); keeps the checkpoint
/// in `data/checkpoints/`, announcing it, when it is the first for its record.
pub fn sign_head(service: &Service, now: DateTime<Utc>) -> Result<Signed, ServiceError> {
    let store = &service.store;
    let from = store.checkpoints.trusted().unwrap_or_else(Head::genesis);
    let head = store.audit_extends(&from)?.map_err(|bad| {
        ServiceError::Conflict(format!(
            "the audit chain does not run on from its last checkpoint (record {}): {}; nothing is signed over it (run `ramp-ca audit verify --checkpoint` with the checkpoints you keep)",
            from.seq, bad.reason
        ))
    })?;
    let signed = Signed::sign(&service.keys.audit_signer, &head, now)
        .map_err(|e| ServiceError::Conflict(e.to_string()))?;
    if head.seq > 0 {
        store.checkpoints.keep(&signed)?;
    }
    Ok(signed)
}

/// Trusts the newest checkpoint in `data/checkpoints/` that the audit-signer signed, and
/// says loudly when the chain no longer runs on from it.
fn recall(service: &Service) {
    let store = &service.store;
    let key = service.keys.audit_signer.public_key();
    let stored = match store.checkpoints.stored() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the kept audit checkpoints");
            return;
        }
    };
    for (path, text) in stored {
        let checked = Signed::parse_all(&text).and_then(|mut all| {
            let c = all.remove(0);
            c.verify(key)?;
            Ok(c)
        });
        match checked {
            Ok(c) => {
                store.checkpoints.trust(c.checkpoint.head());
                break;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "a kept audit checkpoint is not what the audit-signer signed; skipping it")
            }
        }
    }
    let Some(from) = store.checkpoints.trusted() else {
        return;
    };
    match store.audit_extends(&from) {
        Ok(Ok(head)) => tracing::info!(
            checkpoint = from.seq,
            records = head.seq,
            "audit chain runs on from its last checkpoint"
        ),
        Ok(Err(bad)) => tracing::error!(
            checkpoint = from.seq,
            record = bad.seq,
            "AUDIT CHAIN REWRITTEN: it does not run on from its last checkpoint: {}; no checkpoint will be signed over it",
            bad.reason
        ),
        Err(e) => tracing::error!(error = %e, "cannot read the audit chain"),
    }
}

/// Signs and keeps a checkpoint when the chain grew since the last one; logs a failure.
fn write_if_grown(service: &Service, now: DateTime<Utc>) {
    match service.store.audit_head() {
        Ok(head)
            if head.seq == 0 || service.store.checkpoints.trusted().as_ref() == Some(&head) =>
        {
            return
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot read the audit chain's head");
            return;
        }
    }
    match sign_head(service, now) {
        Ok(c) => tracing::info!(record = c.checkpoint.seq, "audit checkpoint signed"),
        Err(e) => tracing::error!("AUDIT CHECKPOINT NOT SIGNED: {e}"),
    }
}

/// The running checkpoint writer.
pub struct Writer {
    service: Arc<Service>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Recalls the last checkpoint kept, then signs one every `every` when the chain grew.
    pub fn start(service: Arc<Service>, every: Duration) -> Writer {
        recall(&service);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(service.clone(), every, stopped));
        Writer {
            service,
            stop,
            task,
        }
    }

    /// Stops the schedule and signs the head once more when it grew, so the records of a
    /// stop (sessions ended by it) are covered too. Call it before the webhooks stop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || write_if_grown(&service, Utc::now())).await;
    }
}

async fn run(service: Arc<Service>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let s = service.clone();
        let _ = tokio::task::spawn_blocking(move || write_if_grown(&s, Utc::now())).await;
    }
}
