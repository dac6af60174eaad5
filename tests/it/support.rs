//! Helpers for integration tests that drive the real `ramp-ca` binary and a
//! real OpenSSH server/client pair, in the style of ripgrep's test support.

// Each test module uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::stores::{postgres_run, TestDb};

/// How long `Sshd::start` waits for the listener before giving up.
const SSHD_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for sshd to accept connections.
const SSHD_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts at starting sshd; `free_port` can race with other tests.
const SSHD_START_ATTEMPTS: usize = 3;

/// A temporary directory, deleted on drop: an installation, with its ledger (see
/// [`crate::stores`]).
pub struct TestDir {
    dir: tempfile::TempDir,
    /// The PostgreSQL database its daemons keep their ledger in, once one is chosen.
    store: OnceLock<Arc<TestDb>>,
    /// Environment every `ramp-ca` run here gets (like an object store's credentials).
    env: std::sync::Mutex<Vec<(String, String)>>,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("ramp-ca-test-")
            .tempdir()
            .expect("create temp dir");
        TestDir {
            dir,
            store: OnceLock::new(),
            env: Default::default(),
        }
    }

    /// Every `ramp-ca` run in this installation from now on gets `name=value`.
    pub fn set_env(&self, name: &str, value: &str) {
        let mut env = self.env.lock().unwrap_or_else(|e| e.into_inner());
        env.push((name.to_string(), value.to_string()));
    }

    /// The database this installation's ledger is in: on PostgreSQL runs (or once
    /// [`TestDir::use_postgres`] chose one) its own, made on first use; `None` for sled.
    pub fn store_db(&self) -> Option<Arc<TestDb>> {
        if let Some(db) = self.store.get() {
            return Some(db.clone());
        }
        postgres_run().then(|| self.store.get_or_init(TestDb::create).clone())
    }

    /// Keeps this installation's ledger in PostgreSQL whatever the run says (tests of
    /// several nodes); returns the URL.
    pub fn use_postgres(&self) -> String {
        self.store.get_or_init(TestDb::create).url.clone()
    }

    /// A ledger of its own that starts as a copy of `from`'s (whose daemon is stopped), as
    /// copying `data/` copies a sled ledger: nothing for sled, since `data/` is copied.
    pub fn copy_ledger_of(&self, from: &TestDir) {
        if let Some(db) = from.store.get() {
            let _ = self.store.set(TestDb::copy_of(db));
        }
    }

    /// Another node of this installation: the same keys, policies and demo identities, the
    /// same ledger (its database), a `data/` of its own.
    pub fn another_node(&self) -> TestDir {
        let node = self.same_installation();
        let db = self.store.get_or_init(TestDb::create).clone();
        let _ = node.store.set(db);
        node
    }

    /// The same keys, policies and demo identities in a directory of its own, whose ledger
    /// is whatever its daemons are told (`--store`).
    pub fn same_installation(&self) -> TestDir {
        let node = TestDir::new();
        for sub in ["keys", "policies", "demo"] {
            copy_tree(&self.join(sub), &node.join(sub));
        }
        node
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `contents` to `rel`, creating parent directories as needed.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        let path = self.join(rel);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

impl Default for TestDir {
    fn default() -> TestDir {
        TestDir::new()
    }
}

/// A `ramp-ca` command rooted at `dir`, isolated from the caller's logging env.
pub fn ramp(dir: &TestDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ramp-ca"));
    cmd.current_dir(dir.path())
        .env("RAMP_DIR", dir.path())
        // Hermetic: no developer's ~/.ssh, agent or daemon leaks into a test.
        .env("HOME", dir.path())
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RAMP_SERVER")
        .env_remove("RAMP_STORE")
        .env_remove("RAMP_RECORDINGS")
        .env_remove("RUST_LOG");
    let env = dir.env.lock().unwrap_or_else(|e| e.into_inner());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs `cmd`, asserts it exits 0, and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!("expected success\n{}", describe(cmd, &out));
    }
    String::from_utf8(out.stdout).expect("stdout is not UTF-8")
}

/// Runs `cmd`, asserts it exits non-zero, and returns `(exit code, stderr)`.
pub fn run_err(cmd: &mut Command) -> (i32, String) {
    let out = output(cmd);
    if out.status.success() {
        panic!("expected failure\n{}", describe(cmd, &out));
    }
    // A signal death is a crash, not the clean error the test expects.
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("killed by signal\n{}", describe(cmd, &out)));
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Copies a directory tree, keeping file modes (keys stay 0600).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let path = entry.expect("a directory entry").path();
        let target = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
}

/// Runs a future to its end from synchronous test code (the library's ledger writes and
/// waits for the disk are async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Generates an unencrypted ed25519 key at `dir/name`; returns the private key path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path),
    );
    path
}

/// Configuration for a test `Sshd`.
#[derive(Clone, Debug, Default)]
pub struct SshdOptions {
    /// Public key(s) of the user CA sshd trusts (`TrustedUserCAKeys`).
    pub trusted_user_ca_keys: PathBuf,
    /// Optional KRL or key list (`RevokedKeys`).
    pub revoked_keys: Option<PathBuf>,
    /// Per login user, the certificate principals it accepts.
    pub principals: Vec<(String, Vec<String>)>,
    /// A host key to use instead of a fresh one; its `-cert.pub`, when present, is presented too.
    pub host_key: Option<PathBuf>,
    /// More sshd_config lines (e.g. `PermitTTY no`).
    pub extra_config: Vec<String>,
    /// Leave out `Subsystem sftp`, as on a target that offers none.
    pub no_sftp: bool,
}

/// A real OpenSSH server on 127.0.0.1, killed on drop.
pub struct Sshd {
    child: Child,
    port: u16,
    log_path: PathBuf,
    dir: TestDir,
}

impl Sshd {
    pub fn start(opts: SshdOptions) -> Sshd {
        ensure_privsep_dir();
        let dir = TestDir::new();
        let host_key = match &opts.host_key {
            Some(k) => k.clone(),
            None => keygen(dir.path(), "ssh_host_ed25519_key"),
        };
        // sshd denies users without a file here, so an empty dir denies everyone.
        fs::create_dir_all(dir.join("principals")).expect("create principals dir");
        for (user, principals) in &opts.principals {
            let mut contents = principals.join("\n");
            contents.push('\n');
            dir.write(Path::new("principals").join(user), contents);
        }

        let mut last_log = String::new();
        for _ in 0..SSHD_START_ATTEMPTS {
            let port = free_port();
            let config = dir.write("sshd_config", sshd_config(&dir, &host_key, port, &opts));
            let log_path = dir.join(format!("sshd-{port}.log"));
            let log = File::create(&log_path).expect("create sshd log");
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn /usr/sbin/sshd: {e}"));
            match wait_listening(&mut child, port, &log_path) {
                Ok(()) => {
                    return Sshd {
                        child,
                        port,
                        log_path,
                        dir,
                    }
                }
                // Only a lost race for the port is worth another try.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("sshd did not start on port {port}:\n{log}"),
            }
        }
        panic!("sshd did not start after {SSHD_START_ATTEMPTS} attempts:\n{last_log}");
    }

    /// The host key's public half, as sshd presents it.
    pub fn host_key_pub(&self) -> String {
        let config = fs::read_to_string(self.dir.join("sshd_config")).expect("read sshd_config");
        let key = config
            .lines()
            .find_map(|l| l.strip_prefix("HostKey "))
            .map(|k| k.trim_matches('"').to_string())
            .expect("HostKey line");
        fs::read_to_string(format!("{key}.pub")).expect("host key .pub")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's temporary directory (config, host key, principals, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything sshd has logged so far (it logs to stderr with `-e`); an unreadable log fails
    /// the test rather than read as one that says nothing.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.log_path.display()))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until sshd accepts connections on `port`; on failure kills it and
/// returns its log.
fn wait_listening(child: &mut Child, port: u16, log_path: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + SSHD_START_TIMEOUT;
    let log = || fs::read_to_string(log_path).unwrap_or_default();
    loop {
        let connected = TcpStream::connect_timeout(&addr, SSHD_POLL_INTERVAL).is_ok();
        // Checked after connecting: whoever answered must be our sshd.
        if let Some(status) = child.try_wait().expect("wait for sshd") {
            return Err(format!("sshd exited with {status}:\n{}", log()));
        }
        if connected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "sshd not listening after {SSHD_START_TIMEOUT:?}:\n{}",
                log()
            ));
        }
        thread::sleep(SSHD_POLL_INTERVAL);
    }
}

fn sshd_config(dir: &TestDir, host_key: &Path, port: u16, opts: &SshdOptions) -> String {
    let mut lines = vec![
        format!("ListenAddress 127.0.0.1:{port}"),
        format!("HostKey {}", quote(host_key)),
        format!("PidFile {}", quote(&dir.join("sshd.pid"))),
        // Temp dirs and keys are not root-owned 0755 trees; skip the checks.
        "StrictModes no".to_string(),
        "UsePAM no".to_string(),
        "PasswordAuthentication no".to_string(),
        "KbdInteractiveAuthentication no".to_string(),
        "PubkeyAuthentication yes".to_string(),
        // Only certificates may authenticate, never plain keys.
        "AuthorizedKeysFile none".to_string(),
        // Tests run as root and log in as root.
        "PermitRootLogin yes".to_string(),
        format!("TrustedUserCAKeys {}", quote(&opts.trusted_user_ca_keys)),
    ];
    if !opts.no_sftp {
        // Targets behind the bastion need sftp for scp and sftp sessions.
        lines.push("Subsystem sftp internal-sftp".to_string());
    }
    if let Some(revoked) = &opts.revoked_keys {
        lines.push(format!("RevokedKeys {}", quote(revoked)));
    }
    lines.push(format!(
        "AuthorizedPrincipalsFile {}",
        quote(&dir.join("principals").join("%u"))
    ));
    let cert = PathBuf::from(format!("{}-cert.pub", host_key.display()));
    if cert.exists() {
        lines.push(format!("HostCertificate {}", quote(&cert)));
    }
    lines.extend(opts.extra_config.iter().cloned());
    // VERBOSE logs which key/cert was accepted or why it was refused.
    lines.push("LogLevel VERBOSE".to_string());
    let mut config = lines.join("\n");
    config.push('\n');
    config
}

/// Quotes a path for sshd_config so spaces in temp paths cannot split it.
fn quote(path: &Path) -> String {
    let s = path.to_str().expect("sshd_config paths must be UTF-8");
    assert!(!s.contains('"'), "cannot quote path for sshd_config: {s}");
    format!("\"{s}\"")
}

/// sshd refuses to start without its privilege separation directory.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display())),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => panic!("create {} (tests must run as root): {e}", dir.display()),
    }
}

/// Runs `command` on `sshd` as `login` with the real `ssh` client, non-interactively.
///
/// `ssh` also offers `IDENTITY-cert.pub` when it exists next to `identity`.
pub fn ssh_exec(sshd: &Sshd, login: &str, identity: &Path, command: &str) -> Output {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .arg("-p")
        .arg(sshd.port().to_string())
        .arg("-i")
        .arg(identity)
        .args(client_opts())
        .arg(format!("{login}@127.0.0.1"))
        .arg(command);
    output(&mut cmd)
}

/// Spawns a command with its standard streams piped, as the tests that type into a session
/// and read what it printed do.
pub trait SpawnPiped {
    fn spawn_piped(&mut self) -> Child;
}

impl SpawnPiped for Command {
    fn spawn_piped(&mut self) -> Child {
        self.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.get_program()))
    }
}

/// Non-interactive OpenSSH client options every test uses: no prompts, no agent, no
/// known_hosts, only the given identity.
pub fn client_opts() -> [&'static str; 14] {
    [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]
}
