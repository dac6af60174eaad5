//! Group commit. Whoever needs their writes on disk takes a ticket and waits; one thread
//! flushes sled for every ticket taken before the flush started, so concurrent commits share
//! one disk flush instead of queueing for one each. Waiters are futures on a watch channel:
//! no thread of the async runtime waits for the disk.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::store::{Result, StoreError};

#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every ticket up to this one is on disk.
    upto: u64,
    /// The last failed flush covered tickets up to this one, with this error.
    failed: Option<(u64, String)>,
}

impl Synced {
    /// Every ticket up to this one has an answer (on disk, or failed).
    fn handled(&self) -> u64 {
        self.upto
            .max(self.failed.as_ref().map_or(0, |(upto, _)| *upto))
    }

    /// The answer for `ticket`, once there is one.
    fn answer(&self, ticket: u64) -> Option<Result<()>> {
        if self.upto >= ticket {
            return Some(Ok(()));
        }
        match &self.failed {
            Some((upto, e)) if *upto >= ticket => Some(Err(StoreError::Sync(e.clone()))),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Tickets {
    /// Tickets handed out.
    asked: u64,
    synced: Synced,
    stop: bool,
}

/// What the flushing thread and the waiters share.
struct Flushes {
    tickets: Mutex<Tickets>,
    /// Wakes the flushing thread.
    work: Condvar,
    /// What is on disk, for the waiters.
    watch: tokio::sync::watch::Sender<Synced>,
}

impl Flushes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A write's result, once the write is on disk: awaiting it waits for the flush that covers
/// it. The write itself is already done.
#[must_use = "the write is not known to be on disk until this is awaited"]
pub struct OnDisk<T>(Pin<Box<dyn Future<Output = Result<T>> + Send>>);

impl<T> Future for OnDisk<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.0.as_mut().poll(cx)
    }
}

/// The handle the store holds; dropping it stops the thread and waits for it, so the
/// ledger's files are closed (and its lock released) once the store is dropped.
pub struct GroupCommit(Arc<Flushes>, Option<std::thread::JoinHandle<()>>);

impl GroupCommit {
    /// Starts the flushing thread.
    pub fn start(db: sled::Db) -> GroupCommit {
        let flushes = Arc::new(Flushes {
            tickets: Mutex::new(Tickets::default()),
            work: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(Synced::default()),
        });
        let thread = flushes.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-sync".into())
            .spawn(move || run(&thread, &db))
            .expect("spawn the ledger sync thread");
        GroupCommit(flushes, Some(handle))
    }

    /// A ticket covering every write made so far; the flush it needs starts at once.
    fn ticket(&self) -> u64 {
        let mut t = self.0.lock();
        t.asked += 1;
        self.0.work.notify_one();
        t.asked
    }

    /// `value` (what writes just made returned), once those writes are on disk.
    pub fn after<T: Send + 'static>(&self, value: T) -> OnDisk<T> {
        let ticket = self.ticket();
        let mut rx = self.0.watch.subscribe();
        OnDisk(Box::pin(async move {
            let synced = rx
                .wait_for(|s| s.answer(ticket).is_some())
                .await
                .map_err(|_| StoreError::Sync("the ledger sync thread stopped".into()))?;
            synced.answer(ticket).expect("answered")?;
            Ok(value)
        }))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.work.notify_one();
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// The flushing thread: waits for tickets, flushes once for all of them, answers.
fn run(flushes: &Flushes, db: &sled::Db) {
    loop {
        let covers = {
            let mut t = flushes.lock();
            // Answered tickets, failed ones included, need no flush: a failed flush is not
            // retried until someone asks again.
            while t.asked == t.synced.handled() && !t.stop {
                t = flushes.work.wait(t).unwrap_or_else(|e| e.into_inner());
            }
            if t.asked == t.synced.handled() {
                return;
            }
            t.asked
        };
        let flushed = db.flush();
        let failed = flushed.is_err();
        let published = {
            let mut t = flushes.lock();
            match flushed {
                Ok(_) => t.synced.upto = t.synced.upto.max(covers),
                Err(e) => {
                    tracing::error!(error = %e, "cannot flush the ledger to disk");
                    t.synced.failed = Some((covers, e.to_string()));
                }
            }
            t.synced.clone()
        };
        flushes.watch.send_replace(published);
        if failed {
            // A disk that failed once usually fails again at once: do not spin on it.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a crash right now would leave: a copy of the database's files, opened (with the
    /// directory that holds it).
    fn as_on_disk(from: &std::path::Path) -> (tempfile::TempDir, sled::Db) {
        let copy = tempfile::tempdir().unwrap();
        for entry in walk(from) {
            let to = copy.path().join(entry.strip_prefix(from).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &to).unwrap();
        }
        let db = sled::Config::new().path(copy.path()).open().unwrap();
        (copy, db)
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_write_is_answered_once_it_is_on_disk_and_waits_share_flushes() {
        let tmp = tempfile::tempdir().unwrap();
        // No background flushing: only the group commit puts writes on disk.
        let db = sled::Config::new()
            .path(tmp.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let commits = GroupCommit::start(db.clone());
        db.insert("a", "1").unwrap();
        assert_eq!(commits.after(7).await.unwrap(), 7);
        assert_eq!(
            as_on_disk(tmp.path()).1.get("a").unwrap().as_deref(),
            Some(&b"1"[..]),
            "a waiter was answered before its write was on disk"
        );
        // Many waits at once are all answered, each after the writes before it.
        let many: Vec<OnDisk<()>> = (0..50)
            .map(|i| {
                db.insert(format!("k{i}"), "v").unwrap();
                commits.after(())
            })
            .collect();
        for w in many {
            w.await.unwrap();
        }
        assert_eq!(as_on_disk(tmp.path()).1.scan_prefix("k").count(), 50);
        drop(commits);
    }
}
