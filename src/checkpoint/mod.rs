//! Signed checkpoints of the audit chain. The chain's hashes are public and unkeyed, so
//! whoever can write the ledger can rewrite a record and re-hash everything after it; a
//! checkpoint is the chain's head (a record's sequence number and hash) signed with the
//! service's `audit-signer` key as an SSHSIG (namespace [`NAMESPACE`]), kept where the
//! ledger's writer cannot reach it. A chain that no longer has that hash at that record was
//! rewritten, whoever re-hashed it.
//!
//! A checkpoint is text: five lines, signed as they are (what `ssh-keygen -Y verify` reads
//! on stdin), then the armored signature:
//!
//! ```text
//! ramp-ca audit checkpoint v1
//! seq: 42
//! hash: 3f2a...   (hex SHA-256, the record's chain hash)
//! at: 2026-12-01T10:00:00Z
//! signer: SHA256:...   (the audit-signer key's fingerprint)
//! -----BEGIN SSH SIGNATURE-----
//! ...
//! -----END SSH SIGNATURE-----
//! ```
//!
//! Pure: no IO, no clock (the time is an argument). [`writer`] signs them in the daemon.

pub mod writer;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::domain::audit::{AuditRecord, BadRecord, ChainWalk, Head};
use crate::domain::cert::fingerprint;

/// The SSHSIG namespace of checkpoints (`ssh-keygen -Y verify -n ramp-ca-audit`).
pub const NAMESPACE: &str = "ramp-ca-audit";
/// The first line of every checkpoint.
pub const TITLE: &str = "ramp-ca audit checkpoint v1";
const PEM_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const PEM_END: &str = "-----END SSH SIGNATURE-----";

/// Why a checkpoint cannot be read, made or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("line {line}: {why}")]
    Parse { line: usize, why: String },
    #[error("the checkpoint ends early; expected {0}")]
    Truncated(String),
    #[error("cannot sign the checkpoint: {0}")]
    Sign(String),
    #[error("it is signed by {found}, not by the audit-signer key {expected}")]
    WrongSigner { found: String, expected: String },
    #[error("its signature does not verify with the audit-signer key {key}: {why}")]
    BadSignature { key: String, why: String },
}

/// What a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The record it vouches for: records 1 to `seq` are as they were when it was signed.
    pub seq: u64,
    /// That record's chain hash.
    pub hash: String,
    /// When it was signed (whole seconds).
    pub at: DateTime<Utc>,
    /// The SHA-256 fingerprint of the key that signed it.
    pub signer: String,
}

impl Checkpoint {
    /// The signed text.
    fn message(&self) -> String {
        format!(
            "{TITLE}\nseq: {}\nhash: {}\nat: {}\nsigner: {}\n",
            self.seq,
            self.hash,
            self.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.signer
        )
    }

    /// The chain point it vouches for.
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// A checkpoint with its signature, as signed or as read from a file.
#[derive(Debug, Clone)]
pub struct Signed {
    pub checkpoint: Checkpoint,
    /// The five lines exactly as signed.
    message: String,
    signature: SshSig,
}

impl Signed {
    /// Signs the chain point `head` at `at` with the audit-signer `key`.
    pub fn sign(
        key: &PrivateKey,
        head: &Head,
        at: DateTime<Utc>,
    ) -> Result<Signed, CheckpointError> {
        let checkpoint = Checkpoint {
            seq: head.seq,
            hash: head.hash.clone(),
            at: at.with_nanosecond(0).unwrap_or(at),
            signer: fingerprint(key.public_key()),
        };
        let message = checkpoint.message();
        let signature = key
            .sign(NAMESPACE, HashAlg::Sha512, message.as_bytes())
            .map_err(|e| CheckpointError::Sign(e.to_string()))?;
        Ok(Signed {
            checkpoint,
            message,
            signature,
        })
    }

    /// The checkpoint as a file holds it: the signed lines, then the armored signature.
    pub fn text(&self) -> String {
        let pem = self
            .signature
            .to_pem(LineEnding::LF)
            .expect("an SSHSIG always encodes");
        let mut text = format!("{}{pem}", self.message);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// Reads every checkpoint in `text` (one, or several one after another; blank lines
    /// and `#` comments between them are skipped).
    pub fn parse_all(text: &str) -> Result<Vec<Signed>, CheckpointError> {
        let mut out = Vec::new();
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();
        loop {
            while lines
                .peek()
                .is_some_and(|(_, l)| l.trim().is_empty() || l.starts_with('#'))
            {
                lines.next();
            }
            if lines.peek().is_none() {
                break;
            }
            out.push(parse_one(&mut lines)?);
        }
        if out.is_empty() {
            return Err(CheckpointError::Parse {
                line: 1,
                why: format!("no checkpoint here (one starts with `{TITLE}`)"),
            });
        }
        Ok(out)
    }

    /// Checks that the audit-signer `key` signed this checkpoint, as it says.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        let expected = fingerprint(key);
        let used = fingerprint(&PublicKey::from(self.signature.public_key().clone()));
        for found in [&used, &self.checkpoint.signer] {
            if *found != expected {
                return Err(CheckpointError::WrongSigner {
                    found: found.clone(),
                    expected,
                });
            }
        }
        key.verify(NAMESPACE, self.message.as_bytes(), &self.signature)
            .map_err(|e| CheckpointError::BadSignature {
                key: expected,
                why: e.to_string(),
            })
    }
}

/// One checkpoint from `lines`, which start at its title.
fn parse_one<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Result<Signed, CheckpointError> {
    let mut next = |want: &str| -> Result<(usize, &'a str), CheckpointError> {
        lines
            .next()
            .ok_or_else(|| CheckpointError::Truncated(want.to_string()))
    };
    let bad = |line: usize, why: String| CheckpointError::Parse { line, why };
    let (line, title) = next(TITLE)?;
    if title != TITLE {
        return Err(bad(line, format!("expected `{TITLE}`, found `{title}`")));
    }
    let mut field = |name: &str| -> Result<(usize, String), CheckpointError> {
        let (line, text) = next(&format!("`{name}: ...`"))?;
        let value = text
            .strip_prefix(name)
            .and_then(|t| t.strip_prefix(": "))
            .ok_or_else(|| bad(line, format!("expected `{name}: ...`, found `{text}`")))?;
        Ok((line, value.to_string()))
    };
    let (line, seq) = field("seq")?;
    let seq = seq
        .parse::<u64>()
        .map_err(|_| bad(line, format!("`{seq}` is not a record number")))?;
    let (line, hash) = field("hash")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(line, format!("`{hash}` is not a hex SHA-256")));
    }
    let (line, at) = field("at")?;
    let at = DateTime::parse_from_rfc3339(&at)
        .map_err(|e| bad(line, format!("`{at}` is not an RFC 3339 time ({e})")))?
        .with_timezone(&Utc);
    let (_, signer) = field("signer")?;
    let checkpoint = Checkpoint {
        seq,
        hash,
        at,
        signer,
    };
    // Signed exactly as written; a checkpoint this code wrote reads back the same.
    let message = checkpoint.message();
    let (line, begin) = next(PEM_BEGIN)?;
    if begin != PEM_BEGIN {
        return Err(bad(
            line,
            format!("expected `{PEM_BEGIN}`, found `{begin}`"),
        ));
    }
    let mut pem = format!("{PEM_BEGIN}\n");
    loop {
        let (line, text) = next(PEM_END)?;
        pem.push_str(text);
        pem.push('\n');
        if text == PEM_END {
            let signature = SshSig::from_pem(&pem)
                .map_err(|e| bad(line, format!("the signature is unreadable: {e}")))?;
            return Ok(Signed {
                checkpoint,
                message,
                signature,
            });
        }
    }
}

/// A checkpoint and where it came from (a file), for messages.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub source: String,
    pub signed: Signed,
}

impl Sourced {
    fn describe(&self) -> String {
        format!(
            "checkpoint {} (signed {})",
            self.source,
            self.signed
                .checkpoint
                .at
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Walks `records` from record 1, in order, checking every link, and checks each
/// checkpoint against the record it vouches for; returns how many records were walked
/// (it stops after the newest checkpoint), or the first record that breaks. Signatures
/// are checked apart ([`Signed::verify`]).
pub fn check_chain(
    records: impl IntoIterator<Item = AuditRecord>,
    checkpoints: &[Sourced],
) -> Result<u64, BadRecord> {
    let mut order: Vec<&Sourced> = checkpoints.iter().collect();
    order.sort_by_key(|c| c.signed.checkpoint.seq);
    let newest = order.last().map_or(0, |c| c.signed.checkpoint.seq);
    let mut pending = order.into_iter().peekable();
    let mut last_good: Option<&Sourced> = None;
    let mut walk = ChainWalk::from(Head::genesis());
    let mut records = records.into_iter();
    loop {
        let at = walk.at().clone();
        while let Some(c) = pending.next_if(|c| c.signed.checkpoint.seq == at.seq) {
            if c.signed.checkpoint.hash != at.hash {
                let after = last_good
                    .filter(|g| g.signed.checkpoint.seq > 0)
                    .map(|g| {
                        format!(
                            ", after record {} ({} still matches)",
                            g.signed.checkpoint.seq,
                            g.describe()
                        )
                    })
                    .unwrap_or_default();
                return Err(BadRecord {
                    seq: at.seq,
                    reason: format!(
                        "record {} is not the one {} vouches for (its hash is {}..., the checkpoint's {}...): the chain up to record {} was rewritten and re-hashed{after}",
                        at.seq,
                        c.describe(),
                        short(&at.hash),
                        short(&c.signed.checkpoint.hash),
                        at.seq
                    ),
                });
            }
            last_good = Some(c);
        }
        if at.seq >= newest {
            return Ok(at.seq);
        }
        let Some(r) = records.next() else {
            let c = pending
                .next()
                .expect("a checkpoint beyond the walk is pending");
            let wanted = c.signed.checkpoint.seq;
            return Err(BadRecord {
                seq: at.seq + 1,
                reason: format!(
                    "the chain ends at record {} but {} vouches for record {wanted}: records {} to {wanted} were removed",
                    at.seq,
                    c.describe(),
                    at.seq + 1
                ),
            });
        };
        if r.seq > walk.next_seq() {
            return Err(BadRecord {
                seq: walk.next_seq(),
                reason: format!(
                    "record {} is missing (next sent is {})",
                    walk.next_seq(),
                    r.seq
                ),
            });
        }
        walk.step(&r)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::Algorithm;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn head(seq: u64, byte: char) -> Head {
        Head {
            seq,
            hash: byte.to_string().repeat(64),
        }
    }

    #[test]
    fn a_checkpoint_reads_back_as_written_and_verifies_only_with_its_key() {
        let k = key();
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let signed = Signed::sign(&k, &head(42, 'a'), at).unwrap();
        let text = signed.text();
        assert!(text.starts_with(&format!(
            "{TITLE}\nseq: 42\nhash: {}\nat: 2026-12-01T10:00:00Z\nsigner: SHA256:",
            "a".repeat(64)
        )));
        assert!(text.ends_with("-----END SSH SIGNATURE-----\n"), "{text}");
        // Two in one file, with a comment and blank lines between them.
        let other = Signed::sign(&k, &head(43, 'b'), at).unwrap();
        let both = format!("# kept by the auditor\n{text}\n\n{}", other.text());
        let read = Signed::parse_all(&both).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].checkpoint, signed.checkpoint);
        assert_eq!(read[1].checkpoint.seq, 43);
        read[0].verify(k.public_key()).unwrap();

        // Another key: refused, naming both keys.
        let err = read[0].verify(key().public_key()).unwrap_err().to_string();
        assert!(err.contains("not by the audit-signer key"), "{err}");
        // A changed field: the signature no longer verifies.
        let forged = text.replace("seq: 42", "seq: 41");
        let err = Signed::parse_all(&forged).unwrap()[0]
            .verify(k.public_key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not verify"), "{err}");
        // A signer line that names a key other than the one that signed.
        let theirs = fingerprint(key().public_key());
        let relabelled = text.replace(&signed.checkpoint.signer, &theirs);
        let err = Signed::parse_all(&relabelled).unwrap()[0]
            .verify(k.public_key())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&theirs), "{err}");
    }

    #[test]
    fn malformed_checkpoints_are_named_by_line() {
        let signed = Signed::sign(&key(), &head(1, 'c'), Utc::now()).unwrap();
        let text = signed.text();
        let check = |text: &str, want: &str| {
            let err = Signed::parse_all(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        };
        check("", "no checkpoint here");
        check(
            &text.replace("seq: 1", "seq: one"),
            "line 2: `one` is not a record number",
        );
        check(&text.replace("hash: ", "hash: zz"), "line 3:");
        check(&text.replace("at: ", "at: noon "), "line 4:");
        check(
            &text.replace("v1", "v2"),
            "line 1: expected `ramp-ca audit checkpoint v1`",
        );
        let cut: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
        check(&cut, "ends early");
    }
}
