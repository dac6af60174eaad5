//! Retention: recordings past their contract's `keep:` are deleted, never before the review
//! their session needs is done, each deletion written in the audit chain first
//! (`recording-removed`, with the session's metadata marked in the same commit).
//!
//! A pass reads the session metadata once and removes at most `limit` recordings. Which
//! recordings go is decided again under the ledger's lock (the one grant changes take: a
//! mutex on sled, an advisory lock every PostgreSQL node takes), on the metadata read inside
//! it, so two nodes sweeping at once never remove one recording twice. The file goes after
//! the commit: a crash in between leaves a file the chain calls removed (nothing reads it,
//! and the first pass after a restart deletes it), never a file gone without its record.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Result, Service};
use crate::domain::audit::Entry;
use crate::domain::grant::SERVICE_ACTOR;
use crate::domain::retention::{self, Hold, RecordingRemoved, Removed, Retention};
use crate::store::Change;

/// What one retention pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Sessions whose recordings were removed (audited, then deleted).
    pub removed: Vec<String>,
    /// Recordings past `keep:` kept because their review is still waiting.
    pub awaiting_review: usize,
    /// Removals recorded whose files could not be deleted yet: retry with
    /// [`Service::delete_removed_recordings`].
    pub failed: Vec<String>,
}

impl Service {
    /// One retention pass at `now`, removing at most `limit` recordings (see the module's
    /// doc). Without a contract that sets `keep:` it reads nothing.
    pub async fn sweep_retention(&self, now: DateTime<Utc>, limit: usize) -> Result<Swept> {
        let policies = self.policies();
        let keeps: HashMap<&str, Duration> = policies
            .contracts
            .values()
            .filter_map(|c| Some((c.name.as_str(), c.keep?)))
            .collect();
        let mut swept = Swept::default();
        if keeps.is_empty() || limit == 0 {
            return Ok(swept);
        }
        let mut due = Vec::new();
        for s in self.store.sessions().await? {
            let Some(contract) = retention::contract_of(&s) else {
                continue;
            };
            let keep = keeps.get(contract.as_str()).copied();
            match retention::decide(&s, keep, now) {
                Retention::Remove { .. } if due.len() < limit => {
                    if let Some(keep) = keep {
                        due.push((s.id, contract, keep));
                    }
                }
                Retention::Keep(Hold::AwaitingReview(_)) => swept.awaiting_review += 1,
                _ => {}
            }
        }
        // Only what this node can delete: another node's own recordings stay for it, and a
        // recording not uploaded yet waits for its upload.
        let mut here = Vec::new();
        for (id, contract, keep) in due {
            match self.store.recording_removable(&id).await {
                Ok(true) => here.push((id, contract, keep)),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "retention cannot tell whether the recording can be removed; tried again next pass")
                }
            }
        }
        if here.is_empty() {
            return Ok(swept);
        }
        let mut change = Change::default();
        let mut tx = self.store.grant_changes().await?;
        for (id, contract, keep) in here {
            // Read again under the lock: another node may have removed it, or the policy
            // changed since the listing.
            let Some(mut s) = tx.session(&id).await? else {
                continue;
            };
            if !matches!(
                retention::decide(&s, Some(keep), now),
                Retention::Remove { .. }
            ) {
                continue;
            }
            let removal = RecordingRemoved::of(&s, &contract, keep, &self.node);
            change
                .entries
                .push(Entry::new(SERVICE_ACTOR, &s.id, removal));
            s.removed = Some(Removed {
                at: now,
                record: 0,
                contract,
                keep_secs: keep.as_secs(),
            });
            swept.removed.push(s.id.clone());
            change.removed.push((s, change.entries.len() - 1));
        }
        if !change.entries.is_empty() {
            tx.commit(change, now).await?;
        }
        tx.finish().await?;
        swept.failed = self.delete_removed_recordings(&swept.removed).await;
        Ok(swept)
    }

    /// Recordings whose removal the ledger holds but whose files this node still sees: what
    /// a crash between a pass's commit and its deletions (or a restart forgetting failed
    /// deletions) left. Only the newest `limit` removals are looked at: one interrupted
    /// pass removes no more. The daemon deletes them in its first pass after a start.
    pub async fn leftover_removals(&self, limit: usize) -> Result<Vec<String>> {
        let mut removed: Vec<(DateTime<Utc>, String)> = self
            .store
            .sessions()
            .await?
            .into_iter()
            .filter_map(|s| Some((s.removed.as_ref()?.at, s.id)))
            .collect();
        removed.sort_unstable_by(|a, b| b.cmp(a));
        let mut left = Vec::new();
        for (_, id) in removed.into_iter().take(limit) {
            if self.store.recording_removable(&id).await.unwrap_or(false) {
                left.push(id);
            }
        }
        Ok(left)
    }

    /// Deletes the recordings of sessions whose removal the ledger holds; returns those
    /// that could not be deleted (logged), for a later try.
    pub async fn delete_removed_recordings(&self, ids: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for id in ids {
            if let Err(e) = self.store.remove_recording(id).await {
                tracing::warn!(session = %id, error = %e, "cannot delete a recording retention removed; tried again next pass");
                failed.push(id.clone());
            }
        }
        failed
    }
}
