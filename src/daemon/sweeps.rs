//! The daemon's periodic passes over the session metadata after sessions end: overdue
//! reviews (announced once, the review gauges counted) and retention (recordings past their
//! contract's `keep:`). Their intervals are the config's `reviews:` and `retention:`
//! sections, so tests (and small installations) can shorten them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use crate::service::Service;

/// Parses an interval setting of at least 1 s, naming the key when it is wrong.
fn interval(key: &str, text: &str) -> Result<Duration, String> {
    crate::domain::policy::parse_duration(text)
        .filter(|d| *d >= Duration::from_secs(1))
        .ok_or_else(|| format!("{key}: `{text}` is not a duration like 30s, 5m (at least 1s)"))
}

/// The `reviews:` section of the service config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reviews {
    /// How often overdue reviews are looked for (and announced, once each) and the review
    /// gauges counted: one read of the session metadata each time.
    pub check_every: String,
}

impl Default for Reviews {
    fn default() -> Reviews {
        Reviews {
            check_every: "30s".into(),
        }
    }
}

impl Reviews {
    pub fn every(&self) -> Result<Duration, String> {
        interval("reviews.check_every", &self.check_every)
    }
}

/// The `retention:` section of the service config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// How often recordings past their contract's `keep:` are looked for: one read of the
    /// session metadata each time (none while no contract sets `keep:`).
    pub sweep_every: String,
    /// At most this many recordings removed a pass (the rest wait for the next).
    pub per_pass: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            sweep_every: "5m".into(),
            per_pass: 100,
        }
    }
}

impl Retention {
    pub fn every(&self) -> Result<Duration, String> {
        interval("retention.sweep_every", &self.sweep_every)
    }

    /// Whether the settings make sense, with what is wrong.
    pub fn check(&self) -> Result<(), String> {
        self.every()?;
        if !(1..=10_000).contains(&self.per_pass) {
            return Err(format!(
                "retention.per_pass: {} is not between 1 and 10000",
                self.per_pass
            ));
        }
        Ok(())
    }
}

/// Checks for overdue reviews every `every`, from the first tick on.
pub fn check_reviews(service: Arc<Service>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = service.check_reviews(Utc::now()).await {
                tracing::warn!(error = %e, "cannot check for overdue reviews");
            }
        }
    });
}

/// Removes recordings past their `keep:` every `every`, at most `per_pass` a pass; files
/// whose removal is recorded but could not be deleted (or that a crash left) are tried
/// again each pass.
pub fn sweep_retention(service: Arc<Service>, every: Duration, per_pass: usize) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What a crash between a pass's commit and its deletions left.
        let mut undeleted = match service.leftover_removals(per_pass).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for recordings left by an interrupted retention pass");
                Vec::new()
            }
        };
        loop {
            tick.tick().await;
            if !undeleted.is_empty() {
                undeleted = service.delete_removed_recordings(&undeleted).await;
            }
            match service.sweep_retention(Utc::now(), per_pass).await {
                Ok(swept) => {
                    if !swept.removed.is_empty() {
                        tracing::info!(
                            removed = swept.removed.len(),
                            awaiting_review = swept.awaiting_review,
                            "recordings removed by retention"
                        );
                    }
                    undeleted.extend(swept.failed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot sweep recordings for retention"),
            }
        }
    });
}
