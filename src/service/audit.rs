//! The audit log for readers (admins and auditors), its verdict, and its signed
//! checkpoints: nothing is signed over a chain that no longer holds the last checkpoint kept
//! and runs on from it, so the service never vouches for a rewrite.

use chrono::{DateTime, Utc};

use super::access::Reading;
use super::{Result, Service, ServiceError};
use crate::checkpoint::Signed;
use crate::domain::audit::{AuditRecord, Head};
use crate::domain::session::seconds_before;
use crate::store::{AuditReport as Report, SealReport as Seals};
use crate::wire::audit::{
    AuditReport, BadRecord, BadRecording, CheckpointBody, SealReport, SignerBody,
};

impl From<Report> for AuditReport {
    fn from(r: Report) -> AuditReport {
        AuditReport {
            records: r.records,
            first_bad: r.first_bad.map(|b| BadRecord {
                seq: b.seq,
                reason: b.reason,
            }),
            recordings: r.recordings.map(SealReport::from),
        }
    }
}

impl From<Seals> for SealReport {
    fn from(r: Seals) -> SealReport {
        SealReport {
            sessions: r.sessions,
            files: r.files,
            removed: r.removed,
            elsewhere: r.elsewhere,
            bad: r
                .bad
                .into_iter()
                .map(|b| BadRecording {
                    session: b.session,
                    reason: b.reason,
                })
                .collect(),
        }
    }
}

/// What the dashboard's audit page narrows the log to.
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    /// Text the actor, action and subject must contain (each when given).
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    /// Seconds back.
    pub since: i64,
    /// Most records returned, newest first.
    pub limit: usize,
}

impl Service {
    /// Audit records since `since_secs` back from `now` (any value: absurd ones saturate),
    /// after the role check; admins and auditors.
    pub async fn audit(
        &self,
        who: &str,
        since_secs: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>> {
        self.require_reviewer(who, Reading::AuditLog)?;
        let since = since_secs.map_or(DateTime::<Utc>::MIN_UTC, |s| seconds_before(now, s));
        Ok(self.store.audit_since(since).await?)
    }

    /// Audit records 1 to `upto`, for admins and auditors: what a client checks its
    /// checkpoints against.
    pub async fn audit_upto(&self, who: &str, upto: u64) -> Result<Vec<AuditRecord>> {
        self.require_reviewer(who, Reading::AuditLog)?;
        Ok(self.store.audit_upto(upto).await?)
    }

    /// The dashboard's audit page: the records that match, newest first.
    pub async fn audit_search(
        &self,
        who: &str,
        search: &AuditSearch,
        now: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>> {
        self.require_reviewer(who, Reading::AuditPage)?;
        let want = |field: &Option<String>, value: &str| {
            field
                .as_deref()
                .filter(|f| !f.is_empty())
                .is_none_or(|f| value.contains(f))
        };
        let mut records: Vec<AuditRecord> = self
            .store
            .audit_since(seconds_before(now, search.since))
            .await?
            .into_iter()
            .filter(|r| {
                want(&search.actor, &r.actor)
                    && want(&search.action, &r.action)
                    && want(&search.subject, &r.subject)
            })
            .collect();
        records.reverse();
        records.truncate(search.limit);
        Ok(records)
    }

    /// Verifies the audit chain and every finished recording's seal against it (reading
    /// and hashing the files too when `read_files`), for admins and auditors.
    pub async fn verify_audit(&self, who: &str, read_files: bool) -> Result<AuditReport> {
        self.require_reviewer(who, Reading::AuditLog)?;
        let mut report = self.store.verify_audit().await?;
        let here = (!self.store.recordings_shared()).then_some(self.node.as_str());
        report.recordings = Some(self.store.verify_recordings(read_files, here).await?);
        Ok(report.into())
    }

    /// The chain alone, verified, for the dashboard's audit page (after its role check).
    pub async fn verify_chain(&self, who: &str) -> Result<AuditReport> {
        self.require_reviewer(who, Reading::AuditPage)?;
        Ok(self.store.verify_audit().await?.into())
    }

    /// The chain's verdict as the daemon logs it at start.
    pub async fn chain_report(&self) -> Result<AuditReport> {
        Ok(self.store.verify_audit().await?.into())
    }

    /// A checkpoint of the audit chain's head signed now, for admins and auditors (see
    /// [`Service::sign_checkpoint`]).
    pub async fn audit_checkpoint(&self, who: &str, now: DateTime<Utc>) -> Result<CheckpointBody> {
        self.require_reviewer(who, Reading::AuditLog)?;
        let signed = self.sign_checkpoint(now).await?;
        let c = &signed.checkpoint;
        Ok(CheckpointBody {
            at: c.at,
            checkpoint: signed.text(),
            hash: c.hash.clone(),
            seq: c.seq,
            signer: c.signer.clone(),
            signer_key: self.signer_line(),
        })
    }

    /// The audit-signer's public key, which every checkpoint must be signed with.
    pub fn audit_signer(&self) -> SignerBody {
        SignerBody {
            fingerprint: crate::domain::cert::fingerprint(self.keys.audit_signer.public_key()),
            signer_key: self.signer_line(),
        }
    }

    fn signer_line(&self) -> String {
        self.keys
            .audit_signer
            .public_key()
            .to_openssh()
            .unwrap_or_default()
    }

    /// Signs the chain's head at `now`, once the chain is found to hold the last checkpoint
    /// kept and to run on from it (the whole chain when none is kept yet); keeps the
    /// checkpoint in `data/checkpoints/`, announcing it, when it is the first for its record.
    pub async fn sign_checkpoint(&self, now: DateTime<Utc>) -> Result<Signed> {
        let kept = self.store.checkpoints().clone();
        let from = kept.trusted().unwrap_or_else(Head::genesis);
        let head = self.store.audit_extends(&from).await?.map_err(|bad| {
            ServiceError::Conflict(format!(
                "the audit chain does not run on from its last checkpoint (record {}): {}; nothing is signed over it (run `ramp-ca audit verify --checkpoint` with the checkpoints you keep)",
                from.seq, bad.reason
            ))
        })?;
        let signed = Signed::sign(&self.keys.audit_signer, &head, now)
            .map_err(|e| ServiceError::Conflict(e.to_string()))?;
        if head.seq > 0 {
            self.store.keep_checkpoint(&signed).await?;
        }
        Ok(signed)
    }

    /// The checkpoints kept (the shared series on PostgreSQL, this node's files on sled),
    /// newest first, for admins and auditors: what `audit verify --checkpoint` checks.
    pub async fn kept_checkpoints(&self, who: &str) -> Result<Vec<String>> {
        self.require_reviewer(who, Reading::AuditLog)?;
        let kept = self.store.stored_checkpoints(true).await?;
        Ok(kept.into_iter().map(|(_, text)| text).collect())
    }

    /// Trusts the newest checkpoint kept that the audit-signer signed, and says loudly when
    /// the chain no longer runs on from it (when `quiet`, only then).
    pub async fn recall_checkpoints(&self, quiet: bool) {
        let kept = self.store.checkpoints();
        let key = self.keys.audit_signer.public_key();
        let stored = match self.store.stored_checkpoints(false).await {
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
                    kept.trust(c.checkpoint.head());
                    break;
                }
                Err(e) => {
                    tracing::error!(%path, error = %e, "a kept audit checkpoint is not what the audit-signer signed; skipping it")
                }
            }
        }
        let Some(from) = kept.trusted() else {
            return;
        };
        match self.store.audit_extends(&from).await {
            Ok(Ok(head)) if !quiet => tracing::info!(
                checkpoint = from.seq,
                records = head.seq,
                "audit chain runs on from its last checkpoint"
            ),
            Ok(Ok(_)) => {}
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
    pub async fn checkpoint_if_grown(&self, now: DateTime<Utc>) {
        if self.store.is_shared() {
            // Another node may have signed this head already: one checkpoint a head.
            self.recall_checkpoints(true).await;
        }
        match self.store.audit_head().await {
            Ok(head)
                if head.seq == 0 || self.store.checkpoints().trusted().as_ref() == Some(&head) =>
            {
                return
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit chain's head");
                return;
            }
        }
        match self.sign_checkpoint(now).await {
            Ok(c) => tracing::info!(record = c.checkpoint.seq, "audit checkpoint signed"),
            Err(e) => tracing::error!("AUDIT CHECKPOINT NOT SIGNED: {e}"),
        }
    }
}
