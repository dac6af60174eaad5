//! Each logged-in connection's watchdog: ends the connection at expiry or revocation,
//! warning shortly before expiry, and when the bastion shuts down.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use russh::server;
use tokio::sync::{oneshot, watch};

use crate::domain::login::Login;
use crate::service::Service;

/// The clock is checked every tick; the ledger and policies on every revocation and every
/// this many ticks (policy reloads), so idle connections cost little.
const RECHECK_TICKS: u32 = 10;

/// What one connection's watchdog watches and whom it tells.
pub struct Watchdog {
    pub service: Arc<Service>,
    pub login: Arc<Login>,
    pub handle: server::Handle,
    /// Fires when the connection is gone: the watchdog stops.
    pub gone: oneshot::Receiver<()>,
    /// Why the connection is being ended; every channel task watches it.
    pub cutoff: watch::Sender<Option<String>>,
    /// The warning before expiry.
    pub warning: watch::Sender<Option<String>>,
    /// The bastion is shutting down.
    pub stop: watch::Receiver<bool>,
}

impl Watchdog {
    /// Starts watching.
    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let Watchdog {
            service,
            login,
            handle,
            mut gone,
            cutoff,
            warning,
            mut stop,
        } = self;
        let mut revoked = service.revocations();
        let lifetime = login.valid_before.saturating_sub(login.valid_after);
        let warn_before = (lifetime / 4).clamp(1, 60);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut ticks = 0u32;
        // The certificate's end, or the grant's once an extension moved it later.
        let mut until = login.valid_before;
        let reason = loop {
            let revocation = tokio::select! {
                _ = tick.tick() => false,
                _ = revoked.changed() => true,
                _ = stop.changed() => break "the bastion is shutting down".to_string(),
                _ = &mut gone => return,
            };
            ticks += 1;
            let now = Utc::now();
            let secs = now.timestamp().max(0) as u64;
            let due = secs + warn_before >= until;
            if due || ticks.is_multiple_of(RECHECK_TICKS) {
                if let Some(end) = service.extended_until(&login, now).await {
                    if end > until {
                        until = end;
                        let _ = warning.send(Some(format!(
                            "access to {} extended: it now ends at {}",
                            login.target.name,
                            chrono::DateTime::<Utc>::from_timestamp(end as i64, 0)
                                .map(|t| t.format("%H:%M:%S UTC").to_string())
                                .unwrap_or_default()
                        )));
                    }
                }
            }
            if secs >= until {
                let what = match until == login.valid_before {
                    true => "the certificate expired",
                    false => "the grant ended",
                };
                break format!("access to {} ended: {what}", login.target.name);
            }
            if secs + warn_before >= until
                && !warning
                    .borrow()
                    .as_deref()
                    .is_some_and(|w| w.contains(" ends in "))
            {
                let left = until - secs;
                let _ = warning.send(Some(format!(
                    "access to {} ends in {left}s, when the {} ends",
                    login.target.name,
                    if until == login.valid_before {
                        "certificate"
                    } else {
                        "grant"
                    }
                )));
            }
            if !revocation && !ticks.is_multiple_of(RECHECK_TICKS) {
                continue;
            }
            if let Some(why) = service.recheck(&login, now).await {
                break format!("access to {} ended: {why}", login.target.name);
            }
        };
        tracing::info!(user = %login.user, target = %login.target.name, %reason, "cutting the connection off");
        let _ = cutoff.send(Some(reason.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, reason, String::new())
            .await;
    }
}
