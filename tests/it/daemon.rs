//! A real `ramp-ca serve` on an ephemeral loopback port, stopped with SIGTERM on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
}

impl Daemon {
    /// Starts `ramp-ca serve` on `dir` (initialising it first, as `serve` does).
    pub fn start(dir: &TestDir) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// [`Daemon::start`] with more `serve` flags.
    pub fn start_with(dir: &TestDir, flags: &[&str]) -> Daemon {
        let log = dir.join("serve.log");
        let mut child = ramp(dir)
            .args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
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

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (like `HUP`) to the daemon.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("daemon running").id();
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status();
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
