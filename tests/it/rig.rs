//! The bastion rig the end-to-end tests share: an initialised installation with its daemon
//! running, and a real sshd target that is db-1 (host-ca certificate) and web-1; db-2 pins a
//! wrong key; db-3 is down. With the helpers that drive it through the real clients.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::{client_opts, free_port, keygen, run_ok, Sshd, SshdOptions, TestDir};
use crate::{json, Daemon, ALICE, BOB, CAROL};

/// useradd takes a lock of its own; tests creating accounts at once must take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// A target account that certificates may log in to (unlocked, no password).
pub(crate) fn ensure_account(name: &str) {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if !Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success()
    {
        run_ok(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
    }
    run_ok(Command::new("usermod").args(["-p", "*", name]));
}

/// An installation, its daemon, and a target sshd that is db-1 (host-ca certificate) and
/// web-1; db-2 pins a wrong key; db-3 is down.
pub(crate) struct Rig {
    pub(crate) dir: TestDir,
    pub(crate) daemon: Daemon,
    pub(crate) target: Sshd,
}

pub(crate) fn rig() -> Rig {
    rig_with(&[])
}

/// [`rig`] with more `serve` flags (like `--config F`).
pub(crate) fn rig_with(flags: &[&str]) -> Rig {
    rig_in(TestDir::new(), flags)
}

/// [`rig`] with its ledger in PostgreSQL whatever the run says, for nodes that share it
/// (see [`TestDir::another_node`]).
pub(crate) fn rig_on_postgres() -> Rig {
    rig_on_postgres_with(&[])
}

/// [`rig_on_postgres`] with more `serve` flags.
pub(crate) fn rig_on_postgres_with(flags: &[&str]) -> Rig {
    let dir = TestDir::new();
    dir.use_postgres();
    rig_in(dir, flags)
}

pub(crate) fn rig_in(dir: TestDir, flags: &[&str]) -> Rig {
    for account in ["readonly", "dbadmin"] {
        ensure_account(account);
    }
    run_ok(crate::ramp(&dir).args(["init", "--demo"]));
    let host_key = keygen(dir.path(), "target_host_key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(dir.join("keys/host-ca"))
            .args(["-h", "-I", "db-1", "-n", "db-1", "-V", "-1m:+1d"])
            .arg(dir.join("target_host_key.pub")),
    );
    let target = Sshd::start(SshdOptions {
        trusted_user_ca_keys: dir.join("keys/node-ca.pub"),
        principals: ["readonly", "dbadmin", "root"]
            .iter()
            .map(|p| (p.to_string(), vec![p.to_string()]))
            .collect(),
        host_key: Some(host_key),
        ..SshdOptions::default()
    });
    let wrong =
        std::fs::read_to_string(keygen(dir.path(), "wrong_key").with_extension("pub")).unwrap();
    let (port, down) = (target.port(), free_port());
    dir.write(
        "policies/hosts.yaml",
        format!(
            "hosts:\n  db-1:\n    address: 127.0.0.1:{port}\n    labels: {{role: db}}\n  db-2:\n    address: 127.0.0.1:{port}\n    labels: {{role: db}}\n    host_key: \"{}\"\n  db-3:\n    address: 127.0.0.1:{down}\n    labels: {{role: db}}\n  web-1:\n    address: 127.0.0.1:{port}\n    labels: {{role: web}}\n",
            wrong.trim()
        ),
    );
    let daemon = Daemon::start_with(&dir, flags);
    Rig {
        dir,
        daemon,
        target,
    }
}

impl Rig {
    /// Stops the daemon with `stop` and starts it again on the same directory with `flags`;
    /// the target keeps running.
    pub(crate) fn restart(self, stop: impl FnOnce(Daemon, &TestDir), flags: &[&str]) -> Rig {
        let Rig {
            dir,
            daemon,
            target,
        } = self;
        stop(daemon, &dir);
        let daemon = Daemon::start_with(&dir, flags);
        Rig {
            dir,
            daemon,
            target,
        }
    }

    /// `ramp-ca ARGS --key KEY` against the daemon.
    pub(crate) fn ramp(&self, key: &str, args: &[&str]) -> Command {
        self.daemon.cmd(&self.dir, key, args)
    }

    /// alice's first step of prod-db, with `reason` and `extra` flags.
    pub(crate) fn observe(&self, reason: &str, extra: &[&str]) -> serde_json::Value {
        // `sign` below adds the subcommand itself.
        self.sign(ALICE, &crate::observe(reason, extra)[1..])
    }

    pub(crate) fn sign(&self, key: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["sign", "--json"];
        all.extend_from_slice(args);
        json(&run_ok(&mut self.ramp(key, &all)))
    }

    /// The real ssh client through the bastion as `login`, with `identity` (relative path).
    pub(crate) fn ssh(&self, identity: &str, login: &str, args: &[&str]) -> Command {
        self.ssh_with(identity, &[], login, args)
    }

    /// `ssh`, `scp` or `sftp` pointed at the bastion with `identity`, before any destination.
    /// `opts` come first: OpenSSH keeps the first value it sees for an option.
    pub(crate) fn client(&self, program: &str, identity: &str, opts: &[String]) -> Command {
        let port_flag = if program == "ssh" { "-p" } else { "-P" };
        let mut cmd = Command::new(program);
        cmd.args(opts)
            .args([
                "-F",
                "/dev/null",
                port_flag,
                &self.daemon.ssh_port.to_string(),
                "-i",
            ])
            .arg(self.dir.join(identity))
            .args(client_opts());
        cmd
    }

    /// [`Rig::ssh`] with more client options, which must come before the destination.
    pub(crate) fn ssh_with(
        &self,
        identity: &str,
        opts: &[String],
        login: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.client("ssh", identity, opts);
        cmd.arg(format!("{login}@127.0.0.1"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn sessions(&self) -> Vec<serde_json::Value> {
        json(&run_ok(
            &mut self.ramp(BOB, &["sessions", "list", "--json"]),
        ))
        .as_array()
        .unwrap()
        .clone()
    }

    /// Waits (bounded) until `done` holds for the session list.
    pub(crate) fn wait_sessions(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.sessions();
            if done(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {list:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn audit(&self) -> String {
        run_ok(&mut self.ramp(CAROL, &["audit", "list"]))
    }

    /// The audit records with `action`, as JSON.
    pub(crate) fn audited(&self, action: &str) -> Vec<serde_json::Value> {
        let all = json(&run_ok(&mut self.ramp(CAROL, &["audit", "list", "--json"])));
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action)
            .cloned()
            .collect()
    }

    /// Re-reads the policies (SIGHUP) and waits (bounded) until the daemon says it did.
    pub(crate) fn reload(&self) {
        let reloads = || self.daemon.log().matches("policies reloaded").count();
        let before = reloads();
        self.daemon.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reloads() == before {
            assert!(
                Instant::now() < deadline,
                "no reload:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds the test contract `fenced` (for sre, on db-1), one step for each certificate
    /// option under test and a two-second one, and reloads.
    pub(crate) fn fenced(&self) {
        self.dir.write(
            "policies/fenced.yaml",
            "contract: fenced\n\
             description: One step for each certificate option the bastion enforces\n\
             targets: {names: [db-1]}\n\
             requesters: [sre]\n\
             reason: optional\n\
             steps:\n\
             \x20 - name: from-two\n\
             \x20   principals: [readonly]\n\
             \x20   max_ttl: 30m\n\
             \x20   options: {source_address: [127.0.0.2/32, 10.9.0.0/16]}\n\
             \x20 - name: no-pty\n\
             \x20   principals: [readonly]\n\
             \x20   max_ttl: 30m\n\
             \x20   options: {pty: false}\n\
             \x20 - name: forced\n\
             \x20   principals: [readonly]\n\
             \x20   max_ttl: 30m\n\
             \x20   options: {force_command: \"echo forced-as-$(whoami)\"}\n\
             \x20 - name: forwarding\n\
             \x20   principals: [readonly]\n\
             \x20   max_ttl: 30m\n\
             \x20   options: {port_forwarding: true, agent_forwarding: true, x11_forwarding: true}\n\
             \x20 - name: brief\n\
             \x20   principals: [readonly]\n\
             \x20   max_ttl: 2s\n",
        );
        self.reload();
    }

    /// Adds host `name` at `sshd`'s address to hosts.yaml (no pinned key: it must present a
    /// host-ca certificate naming it) and reloads.
    pub(crate) fn add_host(&self, name: &str, sshd: &Sshd) {
        let mut hosts = self.dir.read("policies/hosts.yaml");
        hosts.push_str(&format!(
            "  {name}:\n    address: 127.0.0.1:{}\n    labels: {{role: db}}\n",
            sshd.port()
        ));
        self.dir.write("policies/hosts.yaml", hosts);
        self.reload();
    }

    /// alice's certificate for step `step` of the `fenced` contract.
    pub(crate) fn fenced_step(&self, step: &str) -> serde_json::Value {
        self.sign(ALICE, &["--contract", "fenced", "--step", step])
    }
}
