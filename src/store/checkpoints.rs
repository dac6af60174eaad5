//! Signed checkpoints of the audit chain on disk: one file per checkpointed record,
//! `data/checkpoints/SEQ.checkpoint` (SEQ zero-padded to 12 digits so they sort), in an
//! owner-only directory, written once and never replaced. Every checkpoint kept is also
//! broadcast, so the webhooks carry a copy off this machine. The files are the service's
//! own memory of what it signed: whoever can write `data/` can delete them, but not forge
//! one; the copies auditors keep elsewhere are what a rewrite cannot reach. With the ledger
//! in PostgreSQL the series is the `checkpoints` table instead, one for every node
//! ([`Ledger::keep_checkpoint`]); what is trusted and announced stays here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::{on_thread, Engine, Ledger, Result, StoreError};
use crate::checkpoint::Signed;
use crate::domain::audit::Head;

/// Checkpoints a listener may fall behind by before it misses some.
const FEED_CAPACITY: usize = 64;

/// The directory of checkpoint files.
pub struct Checkpoints {
    dir: PathBuf,
    /// The newest checkpoint whose signature and chain were checked: the ledger must still
    /// hold it and run on from it before anything newer is signed.
    trusted: Mutex<Option<Head>>,
    /// Every checkpoint kept, for the webhooks.
    feed: broadcast::Sender<Signed>,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Checkpoints {
    /// Opens (creating, owner-only) the directory.
    pub fn open(dir: &Path) -> Result<Checkpoints> {
        let io = io_at(dir);
        std::fs::create_dir_all(dir).map_err(&io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(&io)?;
        }
        Ok(Checkpoints {
            dir: dir.to_path_buf(),
            trusted: Mutex::new(None),
            feed: broadcast::channel(FEED_CAPACITY).0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the checkpoint of record `seq`.
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:012}.checkpoint"))
    }

    /// Keeps a checkpoint: writes its file (synced) unless record `seq` already has one,
    /// trusts its head, and announces it when it is new. Returns whether it was new.
    pub fn keep(&self, signed: &Signed) -> Result<bool> {
        let cp = &signed.checkpoint;
        let path = self.path(cp.seq);
        let io = io_at(&path);
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        file.write_all(signed.text().as_bytes()).map_err(&io)?;
        file.sync_all().map_err(&io)?;
        // The new name is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        self.kept(signed);
        Ok(true)
    }

    /// A checkpoint is kept (here or in the shared series): trust its head and announce it.
    pub fn kept(&self, signed: &Signed) {
        self.trust(signed.checkpoint.head());
        let _ = self.feed.send(signed.clone());
    }

    /// Every checkpoint file's path and text, newest record first.
    pub fn stored(&self) -> Result<Vec<(PathBuf, String)>> {
        let io = io_at(&self.dir);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(&io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(&io)?;
        paths.retain(|p| p.extension().is_some_and(|e| e == "checkpoint"));
        paths.sort();
        paths.reverse();
        paths
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).map_err(io_at(&p))?;
                Ok((p, text))
            })
            .collect()
    }

    /// The newest checked point the chain must still extend, if any.
    pub fn trusted(&self) -> Option<Head> {
        self.trusted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Trusts `head` from now on, unless a newer point is trusted already.
    pub fn trust(&self, head: Head) {
        let mut t = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        if t.as_ref().is_none_or(|old| old.seq <= head.seq) {
            *t = Some(head);
        }
    }

    /// Every checkpoint kept from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Signed> {
        self.feed.subscribe()
    }
}

/// The newest checkpoints a node reads back to find the last one it can trust.
const RECALLED: i64 = 32;

impl Ledger {
    /// Keeps a checkpoint unless record `seq` has one already: a file under
    /// `data/checkpoints` on sled, a row of the shared series on PostgreSQL (nodes signing
    /// the same head keep the first; the others' are dropped). A new one is trusted and
    /// announced here. Returns whether it was new.
    pub async fn keep_checkpoint(&self, signed: &Signed) -> Result<bool> {
        match &self.engine {
            Engine::Sled(_) => {
                let (kept, signed) = (self.checkpoints.clone(), signed.clone());
                on_thread(move || kept.keep(&signed)).await
            }
            Engine::Postgres(p) => {
                let new = p
                    .keep_checkpoint(signed.checkpoint.seq, &signed.text())
                    .await?;
                if new {
                    self.checkpoints.kept(signed);
                } else {
                    self.checkpoints.trust(signed.checkpoint.head());
                }
                Ok(new)
            }
        }
    }

    /// The checkpoints kept, newest record first, each with where it is (a file, or
    /// `checkpoints/SEQ` in the shared series): every file on sled, the newest few on
    /// PostgreSQL, or all of them with `all`.
    pub async fn stored_checkpoints(&self, all: bool) -> Result<Vec<(String, String)>> {
        match &self.engine {
            Engine::Sled(_) => {
                let kept = self.checkpoints.clone();
                let files = on_thread(move || kept.stored()).await?;
                Ok(files
                    .into_iter()
                    .map(|(p, text)| (p.display().to_string(), text))
                    .collect())
            }
            Engine::Postgres(p) => {
                let limit = if all { i64::MAX } else { RECALLED };
                Ok(p.checkpoints(limit)
                    .await?
                    .into_iter()
                    .map(|(seq, text)| (format!("checkpoints/{seq}"), text))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use russh::keys::ssh_key::{Algorithm, PrivateKey};

    use crate::checkpoint::{check_chain, Signed, Sourced};
    use crate::domain::audit::{chain_hash, Approved, Entry, Head};
    use crate::store::{Change, Ledger, Location};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    /// A store with `n` records (`approve` by alice of `g1`, `g2`, ...).
    async fn store_with(n: u64) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Ledger::open(&data, &Location::Embedded).await.unwrap();
        for i in 1..=n {
            approve(&store, "alice", &format!("g{i}"), i).await;
        }
        (dir, store)
    }

    /// Audits an approval of `grant` by `who`.
    async fn approve(store: &Ledger, who: &str, grant: &str, approvals: u64) {
        let approved = Approved {
            approvals,
            needed: 2,
            extension: false,
        };
        store
            .commit(Change::audit(vec![Entry::new(who, grant, approved)]), now())
            .await
            .unwrap();
    }

    /// What someone who can write the ledger does: change record `seq`, re-hash it and
    /// every record after it, and move the head along.
    async fn rewrite(store: &Ledger, seq: u64) {
        let audit = store.sled().raw_audit_tree();
        let mut prev = match seq {
            1 => "0".repeat(64),
            _ => store.audit_record(seq - 1).await.unwrap().unwrap().hash,
        };
        for mut r in store
            .audit_upto(u64::MAX)
            .await
            .unwrap()
            .into_iter()
            .skip(seq as usize - 1)
        {
            if r.seq == seq {
                r.actor = "mallory".into();
            }
            r.prev = prev;
            r.hash = chain_hash(&r);
            prev = r.hash.clone();
            audit
                .insert(r.seq.to_be_bytes(), serde_json::to_vec(&r).unwrap())
                .unwrap();
        }
        let head = Head {
            seq: store.audit_len().await.unwrap(),
            hash: prev,
        };
        store
            .sled()
            .raw_meta_tree()
            .insert("audit_head", serde_json::to_vec(&head).unwrap())
            .unwrap();
    }

    fn sourced(name: &str, signed: Signed) -> Sourced {
        Sourced {
            source: name.into(),
            signed,
        }
    }

    async fn checkpoint_of(store: &Ledger, key: &PrivateKey, name: &str) -> Sourced {
        let head = store.audit_head().await.unwrap();
        sourced(name, Signed::sign(key, &head, now()).unwrap())
    }

    #[tokio::test]
    async fn a_rewritten_and_rehashed_chain_passes_plain_verify_but_not_an_earlier_checkpoint() {
        let k = key();
        let (_dir, store) = store_with(4).await;
        let early = checkpoint_of(&store, &k, "early").await;
        approve(&store, "bob", "g1", 1).await;
        approve(&store, "bob", "g2", 1).await;
        let late = checkpoint_of(&store, &k, "late").await;
        let all = || async { store.audit_upto(u64::MAX).await.unwrap() };
        assert_eq!(
            check_chain(all().await, &[early.clone(), late.clone()]),
            Ok(6)
        );
        assert_eq!(
            store
                .audit_extends(&early.signed.checkpoint.head())
                .await
                .unwrap(),
            Ok(store.audit_head().await.unwrap())
        );

        rewrite(&store, 5).await;
        let plain = store.verify_audit().await.unwrap();
        assert_eq!(
            plain.first_bad, None,
            "a re-hashed chain is intact as far as hashes go"
        );
        assert_eq!(plain.records, 6);
        // The earlier checkpoint still holds (record 5 came after it); the later one names
        // record 6 and bounds the rewrite by the earlier one.
        let bad = check_chain(all().await, &[early.clone(), late.clone()]).unwrap_err();
        assert_eq!(bad.seq, 6, "{bad:?}");
        assert!(
            bad.reason
                .contains("record 6 is not the one checkpoint late")
                && bad
                    .reason
                    .contains("rewritten and re-hashed, after record 4 (checkpoint early"),
            "{bad:?}"
        );
        // The ledger itself no longer extends what it checkpointed.
        let bad = store
            .audit_extends(&late.signed.checkpoint.head())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.seq, 6, "{bad:?}");
        assert!(bad.reason.contains("rewritten"), "{bad:?}");

        rewrite(&store, 2).await;
        assert_eq!(store.verify_audit().await.unwrap().first_bad, None);
        let bad = check_chain(all().await, std::slice::from_ref(&early)).unwrap_err();
        assert_eq!(bad.seq, 4, "{bad:?}");
        assert!(
            bad.reason
                .contains("record 4 is not the one checkpoint early"),
            "{bad:?}"
        );
        let bad = store
            .audit_extends(&early.signed.checkpoint.head())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.seq, 4, "{bad:?}");
    }

    #[tokio::test]
    async fn a_chain_shorter_than_its_checkpoint_is_named() {
        let k = key();
        let (_dir, store) = store_with(5).await;
        let cp = checkpoint_of(&store, &k, "cp").await;
        let cut: Vec<_> = store.audit_upto(3).await.unwrap();
        let bad = check_chain(cut, std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!(bad.seq, 4);
        assert!(
            bad.reason
                .contains("the chain ends at record 3 but checkpoint cp")
                && bad
                    .reason
                    .contains("vouches for record 5: records 4 to 5 were removed"),
            "{bad:?}"
        );
        // Cut in the ledger itself, head and all.
        store
            .sled()
            .raw_audit_tree()
            .remove(5u64.to_be_bytes())
            .unwrap();
        store
            .sled()
            .raw_audit_tree()
            .remove(4u64.to_be_bytes())
            .unwrap();
        let head = store.audit_record(3).await.unwrap().unwrap();
        store
            .sled()
            .raw_meta_tree()
            .insert(
                "audit_head",
                serde_json::to_vec(&Head {
                    seq: 3,
                    hash: head.hash,
                })
                .unwrap(),
            )
            .unwrap();
        assert_eq!(store.verify_audit().await.unwrap().first_bad, None);
        let bad = store
            .audit_extends(&cp.signed.checkpoint.head())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            bad.reason
                .contains("the chain ends at record 3 but record 5 was checkpointed"),
            "{bad:?}"
        );
        // A gap in what is sent is named too.
        let mut gappy = store_with(4).await.1.audit_upto(4).await.unwrap();
        gappy.remove(1);
        let cp4 = checkpoint_of(&store_with(4).await.1, &k, "cp4").await;
        let bad = check_chain(gappy, &[cp4]).unwrap_err();
        assert!(bad.reason.contains("record 2 is missing"), "{bad:?}");
    }

    #[tokio::test]
    async fn a_checkpoint_with_a_bad_signature_or_another_signer_is_refused() {
        let (k, mallory) = (key(), key());
        let (_dir, store) = store_with(2).await;
        let cp = checkpoint_of(&store, &k, "cp").await;
        cp.signed.verify(k.public_key()).unwrap();
        // Signed by someone else: refused even though the chain matches it.
        let theirs = checkpoint_of(&store, &mallory, "theirs").await;
        assert_eq!(
            check_chain(
                store.audit_upto(2).await.unwrap(),
                std::slice::from_ref(&theirs)
            ),
            Ok(2)
        );
        let err = theirs
            .signed
            .verify(k.public_key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not by the audit-signer key"), "{err}");
        // A field changed after signing: the signature fails.
        let text = cp.signed.text().replace("seq: 2", "seq: 1");
        let edited = &Signed::parse_all(&text).unwrap()[0];
        let err = edited.verify(k.public_key()).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
    }

    #[tokio::test]
    async fn checkpoints_are_kept_once_announced_and_trusted() {
        let k = key();
        let (_dir, store) = store_with(3).await;
        let mut feed = store.checkpoints().subscribe();
        let cp = checkpoint_of(&store, &k, "cp").await.signed;
        assert!(store.checkpoints().keep(&cp).unwrap());
        let again = checkpoint_of(&store, &k, "again").await.signed;
        assert!(
            !store.checkpoints().keep(&again).unwrap(),
            "one file a record"
        );
        assert_eq!(feed.try_recv().unwrap().checkpoint, cp.checkpoint);
        assert!(feed.try_recv().is_err());
        let stored = store.checkpoints().stored().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].0.ends_with("000000000003.checkpoint"));
        assert_eq!(stored[0].1, cp.text());
        assert_eq!(store.checkpoints().trusted(), Some(cp.checkpoint.head()));
        store.checkpoints().trust(Head {
            seq: 1,
            hash: "x".into(),
        });
        assert_eq!(
            store.checkpoints().trusted().unwrap().seq,
            3,
            "never goes back"
        );
    }
}
