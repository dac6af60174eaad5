//! The daemon's side of checkpoints: every `audit: {checkpoint_every: ...}` (default 5m)
//! when the chain grew, and once more at stop, sign the chain's head with the audit-signer
//! key, keep it in `data/checkpoints/` and announce it (webhook event `checkpoint`).
//! The signing, and the refusal to sign over a chain that no longer holds the last
//! checkpoint kept and runs on from it, are the service's (`Service::sign_checkpoint`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::Service;

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
        crate::domain::policy::parse_duration(&self.checkpoint_every)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                format!(
                    "audit.checkpoint_every: `{}` is not a duration like 5m, 1h (at least 1s)",
                    self.checkpoint_every
                )
            })
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
    pub async fn start(service: Arc<Service>, every: Duration) -> Writer {
        service.recall_checkpoints(false).await;
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
        self.service.checkpoint_if_grown(Utc::now()).await;
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
        service.checkpoint_if_grown(Utc::now()).await;
    }
}
