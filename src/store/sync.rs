//! Group commit. Whoever needs their writes on disk takes a ticket and waits; one thread
//! flushes sled for every ticket taken before the flush started, so concurrent commits share
//! one disk flush instead of queueing for one each. Blocking callers wait on a condition
//! variable, async ones on a watch channel: neither holds a thread of the async runtime.

use std::sync::{Arc, Condvar, Mutex};

use std::time::Duration;

use super::{Result, StoreError};

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
struct State {
    /// Tickets handed out.
    asked: u64,
    synced: Synced,
    stop: bool,
}

/// What the flushing thread and the waiters share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the flushing thread.
    work: Condvar,
    /// Wakes blocking waiters.
    done: Condvar,
    /// For async waiters.
    watch: tokio::sync::watch::Sender<Synced>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle the store holds; dropping it stops the thread and waits for it, so the
/// ledger's files are closed (and its lock released) once the store is dropped.
pub struct Syncer(Arc<Shared>, Option<std::thread::JoinHandle<()>>);

impl Syncer {
    /// Starts the flushing thread.
    pub fn start(db: sled::Db) -> Syncer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(Synced::default()),
        });
        let thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-sync".into())
            .spawn(move || run(&thread, &db))
            .expect("spawn the ledger sync thread");
        Syncer(shared, Some(handle))
    }

    /// A ticket covering every write made so far.
    pub fn ticket(&self) -> u64 {
        let mut st = self.0.lock();
        st.asked += 1;
        self.0.work.notify_one();
        st.asked
    }

    /// Blocks until `ticket` is on disk.
    pub fn wait(&self, ticket: u64) -> Result<()> {
        let mut st = self.0.lock();
        loop {
            if let Some(answer) = st.synced.answer(ticket) {
                return answer;
            }
            st = self.0.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits (asynchronously) until `ticket` is on disk.
    pub async fn wait_async(&self, ticket: u64) -> Result<()> {
        let mut rx = self.0.watch.subscribe();
        let synced = rx
            .wait_for(|s| s.answer(ticket).is_some())
            .await
            .map_err(|_| StoreError::Sync("the ledger sync thread stopped".into()))?;
        synced.answer(ticket).expect("answered")
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.work.notify_one();
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// The flushing thread: waits for tickets, flushes once for all of them, answers.
fn run(shared: &Shared, db: &sled::Db) {
    loop {
        let covers = {
            let mut st = shared.lock();
            // Answered tickets, failed ones included, need no flush: a failed flush is not
            // retried until someone asks again.
            while st.asked == st.synced.handled() && !st.stop {
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.asked == st.synced.handled() {
                return;
            }
            st.asked
        };
        let flushed = db.flush();
        let failed = flushed.is_err();
        let published = {
            let mut st = shared.lock();
            match flushed {
                Ok(_) => st.synced.upto = st.synced.upto.max(covers),
                Err(e) => {
                    tracing::error!(error = %e, "cannot flush the ledger to disk");
                    st.synced.failed = Some((covers, e.to_string()));
                }
            }
            st.synced.clone()
        };
        shared.done.notify_all();
        shared.watch.send_replace(published);
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

    #[test]
    fn a_ticket_is_answered_once_its_writes_are_on_disk_for_both_kinds_of_waiter() {
        let tmp = tempfile::tempdir().unwrap();
        // No background flushing: only the syncer puts writes on disk.
        let db = sled::Config::new()
            .path(tmp.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let syncer = Syncer::start(db.clone());
        db.insert("a", "1").unwrap();
        let t = syncer.ticket();
        syncer.wait(t).unwrap();
        assert_eq!(
            as_on_disk(tmp.path()).1.get("a").unwrap().as_deref(),
            Some(&b"1"[..]),
            "a blocking waiter was answered before its write was on disk"
        );
        db.insert("b", "2").unwrap();
        let t = syncer.ticket();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(syncer.wait_async(t)).unwrap();
        assert_eq!(
            as_on_disk(tmp.path()).1.get("b").unwrap().as_deref(),
            Some(&b"2"[..]),
            "an async waiter was answered before its write was on disk"
        );
        // Many tickets at once are all answered, each after the writes before it.
        let many: Vec<u64> = (0..50)
            .map(|i| {
                db.insert(format!("k{i}"), "v").unwrap();
                syncer.ticket()
            })
            .collect();
        for t in many {
            syncer.wait(t).unwrap();
        }
        assert_eq!(as_on_disk(tmp.path()).1.scan_prefix("k").count(), 50);
        drop(syncer);
    }
}
