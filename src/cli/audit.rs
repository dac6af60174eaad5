//! `audit list | verify | checkpoint`: the audit log as the daemon sends it, and the
//! checkpoints an auditor keeps, checked here against the records rather than in the
//! daemon.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use super::args::ListFormat;
use super::output::{audit_csv, audit_table, rfc3339};
use super::{connect, emit, since, write_atomic, AuditCommand, CliError, ClientOpts, Result};
use crate::checkpoint::{check_chain, Signed, Sourced};
use crate::client::Client;
use crate::domain::audit;
use crate::domain::cert::fingerprint;
use crate::install::keys;
use crate::wire::audit::{AuditRecord, AuditReport, CheckpointBody, SignerBody};
use crate::wire::{self as routes};

pub(super) async fn run(cmd: AuditCommand) -> Result {
    match cmd {
        AuditCommand::List {
            since: ago,
            actor,
            action,
            subject,
            oldest_first,
            format,
            client: opts,
        } => {
            let url = match ago {
                Some(s) => format!("{}?since={}", routes::AUDIT, since(&s)?.as_secs()),
                None => routes::AUDIT.into(),
            };
            let client = connect(&opts).await?;
            let mut out: Vec<AuditRecord> = client.call(Method::GET, &url, None::<&()>).await?;
            let has = |want: &Option<String>, value: &str| {
                want.as_deref().is_none_or(|w| value.contains(w))
            };
            out.retain(|r| {
                has(&actor, &r.actor) && has(&action, &r.action) && has(&subject, &r.subject)
            });
            if !oldest_first {
                out.reverse();
            }
            match format {
                ListFormat::Csv if !opts.json => {
                    print!("{}", audit_csv(&out));
                    Ok(())
                }
                ListFormat::Json => emit(&ClientOpts { json: true, ..opts }, &out, String::new),
                _ => emit(&opts, &out, || audit_table(&out)),
            }
        }
        AuditCommand::Verify {
            checkpoint,
            signer,
            skip_recordings,
            client: opts,
        } => verify(&opts, &checkpoint, signer.as_deref(), skip_recordings).await,
        AuditCommand::Checkpoint { out, client: opts } => checkpoint(&opts, out.as_deref()).await,
        AuditCommand::Checkpoints { client: opts } => {
            let client = connect(&opts).await?;
            let kept: Vec<String> = client
                .call(Method::GET, routes::AUDIT_CHECKPOINTS, None::<&()>)
                .await?;
            emit(&opts, &kept, || kept.concat())
        }
    }
}

/// `audit verify`: the daemon's verdict on the chain and the recordings' seals, then the
/// checkpoints given, checked here; exit 1 names every problem.
async fn verify(
    opts: &ClientOpts,
    checkpoint: &[PathBuf],
    signer: Option<&Path>,
    skip_recordings: bool,
) -> Result {
    let client = connect(opts).await?;
    let url = if skip_recordings {
        format!("{}?skip_recordings=true", routes::AUDIT_VERIFY)
    } else {
        routes::AUDIT_VERIFY.to_string()
    };
    let out: AuditReport = client.call(Method::GET, &url, None::<&()>).await?;
    if let Some(bad) = &out.first_bad {
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        return Err(CliError::Refused(format!(
            "audit chain broken at record {}: {}",
            bad.seq, bad.reason
        )));
    }
    let mut problems: Vec<String> = out
        .recordings
        .iter()
        .flat_map(|r| &r.bad)
        .map(|b| b.reason.clone())
        .collect();
    let checked = if checkpoint.is_empty() {
        Vec::new()
    } else {
        match verify_checkpoints(&client, checkpoint, signer).await {
            Ok(checked) => checked,
            Err(CliError::Refused(why)) => {
                problems.push(why);
                Vec::new()
            }
            Err(e) => return Err(e),
        }
    };
    let mut value = serde_json::to_value(&out).unwrap_or_default();
    if !checkpoint.is_empty() {
        value["checkpoints"] = json!(checked);
    }
    emit(opts, &value, || {
        let mut text = format!("audit chain intact: {} records\n", out.records);
        if let Some(r) = out.recordings.as_ref().filter(|r| r.bad.is_empty()) {
            text.push_str(&if r.files {
                format!("recordings intact: {} finished sessions, each file matching its seal in the audit chain\n", r.sessions)
            } else {
                format!("recording seals intact: {} finished sessions, each seal matching the audit chain (files not read)\n", r.sessions)
            });
            if r.elsewhere > 0 {
                text.push_str(&format!("recorded on other nodes: {} of them, their seals matching the chain; their files are on those nodes' disks (run audit verify against each)\n", r.elsewhere));
            }
            if r.removed > 0 {
                text.push_str(&format!("removed by retention: {} of them, each with its recording-removed record in the chain\n", r.removed));
            }
        }
        for c in &checked {
            text.push_str(&format!("{c}\n"));
        }
        text
    })?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Refused(problems.join("\n")))
    }
}

/// `audit checkpoint`: one signed now, written to `out` or stdout.
async fn checkpoint(opts: &ClientOpts, out: Option<&Path>) -> Result {
    let client = connect(opts).await?;
    let got: CheckpointBody = client
        .call(Method::GET, routes::AUDIT_CHECKPOINT, None::<&()>)
        .await?;
    // Written as read back, so only a well-formed checkpoint reaches the file or terminal.
    let text = Signed::parse_all(&got.checkpoint)
        .ok()
        .and_then(|all| all.into_iter().next())
        .map(|c| c.text())
        .ok_or_else(|| CliError::Refused("the daemon sent no well-formed checkpoint".into()))?;
    match &out {
        Some(path) => {
            write_atomic(path, text.as_bytes())?;
            emit(opts, &got, || {
                format!(
                    "wrote {}: record {} signed by {}\n",
                    path.display(),
                    got.seq,
                    got.signer
                )
            })
        }
        None if opts.json => emit(opts, &got, String::new),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Reads checkpoint files (a file may hold several; a directory, every `*.checkpoint` in
/// it), each named by its file (and its place in it when a file holds more than one).
fn read_checkpoints(paths: &[PathBuf]) -> Result<Vec<Sourced>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(crate::Error::io(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "checkpoint"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(crate::Error::io(&file))?;
        let all = Signed::parse_all(&text).map_err(|e| {
            CliError::Refused(format!("{}: not a ramp-ca checkpoint: {e}", file.display()))
        })?;
        let several = all.len() > 1;
        for (i, signed) in all.into_iter().enumerate() {
            let source = match several {
                true => format!("{}#{}", file.display(), i + 1),
                false => file.display().to_string(),
            };
            out.push(Sourced { source, signed });
        }
    }
    if out.is_empty() {
        return Err(CliError::Refused(
            "--checkpoint: no checkpoint files found".into(),
        ));
    }
    Ok(out)
}

/// Checks checkpoints an auditor keeps against the chain, here rather than in the daemon:
/// each must be signed by the audit-signer (`--signer`, else the key the daemon reports),
/// and the records the daemon sends must re-hash, link, and reach every checkpoint's
/// record with its hash. Returns what matched; `Refused` names the first failure.
async fn verify_checkpoints(
    client: &Client,
    paths: &[PathBuf],
    signer: Option<&Path>,
) -> Result<Vec<CheckedCheckpoint>> {
    let checkpoints = read_checkpoints(paths)?;
    let key = match signer {
        Some(path) => keys::read_public(path)?,
        None => {
            let got: SignerBody = client
                .call(Method::GET, routes::AUDIT_SIGNER, None::<&()>)
                .await?;
            keys::parse_public(&got.signer_key).map_err(|e| {
                CliError::Refused(format!(
                    "the daemon reports no usable audit-signer key: {e}"
                ))
            })?
        }
    };
    for c in &checkpoints {
        c.signed.verify(&key).map_err(|e| {
            CliError::Refused(format!(
                "checkpoint {} (record {}) is refused: {e}",
                c.source, c.signed.checkpoint.seq
            ))
        })?;
    }
    let upto = checkpoints
        .iter()
        .map(|c| c.signed.checkpoint.seq)
        .max()
        .unwrap_or(0);
    let records: Vec<AuditRecord> = client
        .call(
            Method::GET,
            &format!("{}?upto={upto}", routes::AUDIT),
            None::<&()>,
        )
        .await?;
    let records = records.into_iter().map(audit::AuditRecord::from);
    check_chain(records, &checkpoints).map_err(|bad| {
        CliError::Refused(format!(
            "audit chain does not match its checkpoints at record {}: {}",
            bad.seq, bad.reason
        ))
    })?;
    let fingerprint = fingerprint(&key);
    Ok(checkpoints
        .iter()
        .map(|c| CheckedCheckpoint {
            source: c.source.clone(),
            seq: c.signed.checkpoint.seq,
            at: c.signed.checkpoint.at,
            signer: fingerprint.clone(),
            pinned: signer.is_some(),
        })
        .collect())
}

/// A checkpoint the chain matches, as `audit verify --checkpoint` reports it.
#[derive(Debug, Serialize)]
struct CheckedCheckpoint {
    /// The file (and its place in it when a file holds several).
    source: String,
    /// The record it vouches for.
    seq: u64,
    at: DateTime<Utc>,
    /// The audit-signer key it is signed with.
    signer: String,
    /// Whether that key was given with `--signer` (else the daemon reported it).
    pinned: bool,
}

impl std::fmt::Display for CheckedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match self.pinned {
            true => "pinned with --signer",
            false => "the key the daemon reports; pin it with --signer KEY.pub",
        };
        write!(
            f,
            "checkpoint {}: record {} matches (signed {} by {}, {whose})",
            self.source,
            self.seq,
            rfc3339(self.at),
            self.signer
        )
    }
}
