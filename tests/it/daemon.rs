//! A real `ramp-ca serve` on an ephemeral loopback port, stopped with SIGTERM on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::stores::TestDb;
use crate::support::{ramp, TestDir};

/// A running daemon and the address of its API.
pub struct Daemon {
    child: Option<Child>,
    /// Like `http://127.0.0.1:41234`.
    pub url: String,
    /// The bastion's port on 127.0.0.1.
    pub ssh_port: u16,
    /// Where the daemon's stderr (its log) goes.
    pub log: PathBuf,
    /// The database its ledger is in, kept until the daemon is stopped.
    _store: Option<Arc<TestDb>>,
}

impl Daemon {
    /// Starts `ramp-ca serve` on `dir` (initialising it first, as `serve` does).
    pub fn start(dir: &TestDir) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// [`Daemon::start`] with more `serve` flags; its ledger is the one the run (or the
    /// directory) says: sled under `data/`, or the directory's PostgreSQL database.
    pub fn start_with(dir: &TestDir, flags: &[&str]) -> Daemon {
        let log = dir.join("serve.log");
        let store = dir.store_db();
        let mut cmd = ramp(dir);
        cmd.args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"]);
        if let Some(db) = store.as_ref().filter(|_| !flags.contains(&"--store")) {
            cmd.args(["--store", &db.url]);
        }
        let mut child = cmd
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ramp-ca serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut url = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("ramp-ca: API on ") {
                    url = Some(u.to_string());
                }
                if let Some(addr) = line.strip_prefix("ramp-ca: bastion on ") {
                    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send((url.take(), port));
                }
            }
        });
        let (url, ssh_port) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Some(url), Some(port))) => (url, port),
            _ => {
                let _ = child.kill();
                panic!(
                    "ramp-ca serve did not come up:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Daemon {
            child: Some(child),
            url,
            ssh_port,
            log,
            _store: store,
        }
    }

    /// `ramp-ca ARGS --key KEY` against this daemon; `key` is relative to the test dir.
    pub fn cmd(&self, dir: &TestDir, key: &str, args: &[&str]) -> Command {
        let mut cmd = ramp(dir);
        cmd.env("RAMP_SERVER", &self.url)
            .args(args)
            .arg("--key")
            .arg(dir.join(key));
        cmd
    }

    /// The checkpoints the daemon kept (`audit checkpoints`, as bob the auditor), newest
    /// first: files under `data/checkpoints` on sled, the shared table on PostgreSQL.
    pub fn kept_checkpoints(&self, dir: &TestDir) -> Vec<String> {
        let out = crate::support::run_ok(&mut self.cmd(
            dir,
            crate::BOB,
            &["audit", "checkpoints", "--json"],
        ));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The daemon's log so far (an unreadable log fails the test: "no panic in the log" must
    /// not pass for want of a log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.log.display()))
    }

    /// Sends a signal (like `HUP`) to the daemon.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("daemon running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// The daemon's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()?
            .try_wait()
            .expect("wait for the daemon")
    }

    /// Kills the daemon with SIGKILL, as a crash would; fails the test if it had already
    /// exited, since then nothing crashed.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("daemon running");
        if let Some(status) = child.try_wait().expect("wait for the daemon") {
            panic!(
                "the daemon exited ({status}) before kill -9:\n{}",
                self.log()
            );
        }
        child.kill().expect("kill -9 the daemon");
        let status = child.wait().expect("wait for the daemon");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    /// Stops the daemon with SIGTERM and waits (bounded) for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate().expect("daemon already stopped")
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::Daemon;
    use crate::support::{ramp, run_ok, TestDir};
    use std::time::{Duration, Instant};

    /// Starts a daemon and signals it the moment it has printed its ports, a few times over.
    fn signalled_at_once(name: &str, check: impl Fn(&TestDir, &mut Daemon)) {
        let dir = TestDir::new();
        run_ok(ramp(&dir).args(["init", "--demo"]));
        for _ in 0..5 {
            let mut daemon = Daemon::start(&dir);
            daemon.signal(name);
            check(&dir, &mut daemon);
        }
    }

    #[test]
    fn sighup_sent_as_soon_as_serve_prints_its_ports_reloads_instead_of_killing_it() {
        signalled_at_once("HUP", |dir, daemon| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !daemon.log().contains("policies reloaded") {
                if let Some(status) = daemon.exited() {
                    panic!("SIGHUP ended the daemon ({status}):\n{}", daemon.log());
                }
                assert!(Instant::now() < deadline, "no reload:\n{}", daemon.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(daemon.exited(), None, "{}", daemon.log());
            run_ok(&mut daemon.cmd(dir, crate::ALICE, &["grants"]));
        });
    }

    #[test]
    fn sigterm_sent_as_soon_as_serve_prints_its_ports_drains_and_exits_0() {
        signalled_at_once("TERM", |_, daemon| {
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(status) = daemon.exited() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "still running:\n{}",
                    daemon.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "{status}:\n{}", daemon.log());
            assert!(
                daemon.log().contains("stopped; ledger flushed"),
                "{}",
                daemon.log()
            );
        });
    }
}
