//! A private PostgreSQL cluster for a test, from Debian's `postgresql` package (installed by
//! scripts/install-deps): initdb in a temporary directory as the unprivileged `postgres`
//! account (initdb and pg_ctl refuse to run as root), fsync off, listening on a free
//! loopback port with its unix socket inside that directory; password (SCRAM) on TCP, trust
//! on the socket. Stopped and removed on drop.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::certs::TestCa;
use super::support::free_port;

/// The superuser initdb creates, and the database the URL names.
pub const USER: &str = "ramp";
/// The account the server runs as when the tests run as root (the package creates it).
const ACCOUNT: &str = "postgres";
/// How long `pg_ctl -w` waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting; `free_port` can race with other tests.
const START_ATTEMPTS: usize = 3;

/// A running PostgreSQL server, stopped (immediate mode) and deleted on drop.
pub struct PgCluster {
    /// initdb, pg_ctl and postgres come from here.
    bin: PathBuf,
    /// Holds `data/` (the cluster, also the socket directory) and `postgres.log`.
    dir: tempfile::TempDir,
    /// The loopback port it listens on (chosen free at start).
    port: u16,
    /// [`USER`]'s password, random per cluster: TCP connections need it.
    password: String,
    /// Whether commands run as [`ACCOUNT`] (the tests run as root).
    as_account: bool,
    /// TCP connections must use TLS, with a certificate for `localhost` from [`PgCluster::ca`].
    tls: bool,
    /// The server's `max_connections`.
    max_connections: u32,
}

impl PgCluster {
    /// initdb and start; a database named [`USER`] exists, owned by [`USER`].
    pub fn start() -> PgCluster {
        PgCluster::start_with(false, 40)
    }

    /// [`PgCluster::start`] with room for many daemons at once (each test's own database
    /// on one cluster, see `stores`).
    pub fn start_shared() -> PgCluster {
        PgCluster::start_with(false, 400)
    }

    /// [`PgCluster::start`], but TCP connections must use TLS (`hostssl`); the server's
    /// certificate is for the name `localhost` only, issued by the CA in [`PgCluster::ca`].
    pub fn start_tls() -> PgCluster {
        PgCluster::start_with(true, 40)
    }

    fn start_with(tls: bool, max_connections: u32) -> PgCluster {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("ramp-ca-pg-")
            .tempdir()
            .expect("create temp dir");
        let as_account = fs::metadata(dir.path()).expect("stat temp dir").uid() == 0;
        let mut cluster = PgCluster {
            bin,
            dir,
            port: 0,
            password: random_hex(),
            as_account,
            tls,
            max_connections,
        };
        cluster.initdb();
        cluster.start_server();
        let out = cluster.run(
            Command::new(cluster.bin.join("createdb"))
                .arg("-h")
                .arg(cluster.data())
                .arg("-p")
                .arg(cluster.port.to_string())
                .args(["-U", USER, USER]),
        );
        if !out.status.success() {
            panic!(
                "createdb {USER} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tail()
            );
        }
        cluster
    }

    /// `postgres://ramp:PASSWORD@127.0.0.1:PORT/ramp`.
    pub fn url(&self) -> String {
        self.url_with("127.0.0.1", &self.password)
    }

    /// The URL naming the server as `host` (`localhost` for TLS's sake), with `password`
    /// (another one is refused).
    pub fn url_with(&self, host: &str, password: &str) -> String {
        format!("postgres://{USER}:{password}@{host}:{}/{USER}", self.port)
    }

    /// The PEM certificate of the CA that issued the server's certificate (with `start_tls`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The URL of database `db` on this server.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// Stops the server and removes its directory once process `pid` is gone, for a cluster
    /// that lives as long as the test process (a static is never dropped): a shell in the
    /// background polls for the process, then stops the server in immediate mode.
    pub fn stop_after_exit_of(&self, pid: u32) {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let pg_ctl = format!(
            "{} -D {} -m immediate -w -t 10 stop",
            quote(&self.bin.join("pg_ctl")),
            quote(&self.data())
        );
        let stop = if self.as_account {
            format!("runuser -u {ACCOUNT} -- {pg_ctl}")
        } else {
            pg_ctl
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf {}",
            quote(self.dir.path())
        );
        // In the background of a shell that exits at once: nobody needs to wait for it.
        let status = Command::new("sh")
            .args(["-c", &format!("({script}) </dev/null >/dev/null 2>&1 &")])
            .stdin(Stdio::null())
            .status()
            .expect("spawn the cluster's reaper");
        assert!(status.success(), "the cluster's reaper: {status}");
    }

    /// Stops the server as an operator would (fast mode: its connections are cut), keeping
    /// its data; [`PgCluster::start_again`] brings it back on the same port.
    pub fn stop_server(&self) {
        let out = self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// Starts the stopped server again on its port, waiting until it accepts connections.
    pub fn start_again(&self) {
        let out = self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string()])
                .args(["-o", &format!("-p {}", self.port)])
                .arg("start"),
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// The password of [`USER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log's last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} (last lines) ---\n{tail}", self.log_path().display())
    }

    /// Runs `cmd` as [`ACCOUNT`] when the tests run as root, else as is.
    fn run(&self, cmd: &mut Command) -> Output {
        let mut cmd = if self.as_account {
            let mut runuser = Command::new("runuser");
            runuser
                .args(["-u", ACCOUNT, "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            runuser
        } else {
            std::mem::replace(cmd, Command::new("true"))
        };
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
    }

    fn initdb(&self) {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password)).expect("write pwfile");
        if self.as_account {
            let (uid, gid) = account_ids();
            for path in [self.dir.path(), &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let out = self.run(
            Command::new(self.bin.join("initdb"))
                .arg("-D")
                .arg(self.data())
                .args(["-U", USER, "-E", "UTF8", "--no-locale", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = fs::remove_file(&pwfile);
        // Appended, so these win over initdb's defaults; the port is given at start.
        let settings = format!(
            "\n# ramp-ca tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 16MB\nmax_connections = {}\n",
            self.data().display(),
            self.max_connections
        );
        append(&self.data().join("postgresql.conf"), &settings);
        if self.tls {
            self.make_certificates();
            append(
                &self.data().join("postgresql.conf"),
                "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
            // TCP only with TLS: a plain connection finds no pg_hba.conf line.
            let hba = self.data().join("pg_hba.conf");
            let text = fs::read_to_string(&hba).expect("read pg_hba.conf");
            let text: Vec<String> = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}"),
                    None => l.to_string(),
                })
                .collect();
            fs::write(&hba, text.join("\n") + "\n").expect("write pg_hba.conf");
        }
    }

    /// A CA (`ca.pem`) and the server's key and certificate for `localhost`, signed by it,
    /// in the data directory (the key owner-only, as the server insists).
    fn make_certificates(&self) {
        let data = self.data();
        let (cert, key) =
            TestCa::new(self.dir.path(), "ramp-ca test CA").issue("server", "DNS:localhost");
        for (from, name) in [(key, "server.key"), (cert, "server.pem")] {
            let to = data.join(name);
            fs::rename(from, &to).expect("move into the data directory");
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("chmod");
            if self.as_account {
                let (uid, gid) = account_ids();
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        }
    }

    /// pg_ctl start on a free port, waiting (bounded) until it accepts connections; a lost
    /// race for the port is retried.
    fn start_server(&mut self) {
        for _ in 0..START_ATTEMPTS {
            self.port = free_port();
            let out = self.run(
                Command::new(self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.data())
                    .arg("-l")
                    .arg(self.log_path())
                    .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string()])
                    .args(["-o", &format!("-p {}", self.port)])
                    .arg("start"),
            );
            if out.status.success() {
                return;
            }
            let log = self.log_tail();
            if !log.contains("Address already in use") {
                panic!(
                    "pg_ctl start failed: {}\n{log}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        panic!(
            "PostgreSQL did not start after {START_ATTEMPTS} attempts\n{}",
            self.log_tail()
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let out = self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"]),
        );
        if out.status.success() {
            return;
        }
        // Not stopped (or never started): kill the postmaster; its backends follow it.
        let pid = fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) {
    let mut all =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    all.push_str(text);
    fs::write(path, all).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The newest /usr/lib/postgresql/<major>/bin that has the server programs.
fn server_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            ["initdb", "pg_ctl", "postgres", "createdb"]
                .iter()
                .all(|p| bin.join(p).is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server under {}/<major>/bin (initdb, pg_ctl, postgres): run scripts/install-deps",
            root.display()
        ),
    }
}

/// The uid and gid of [`ACCOUNT`].
fn account_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, ACCOUNT])
            .output()
            .unwrap_or_else(|e| panic!("spawn id: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("no `{ACCOUNT}` account (the postgresql package creates it): run scripts/install-deps")
            })
    };
    (id("-u"), id("-g"))
}

/// 32 hex digits from the kernel's random source.
fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    hex::encode(bytes)
}

/// A client connection for checking what the binary did, through the same client crate.
pub struct Sql {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Sql {
    /// Connects to `url` (no TLS: the test cluster has none).
    pub fn connect(url: &str) -> Sql {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            tokio::spawn(connection);
            client
        });
        Sql { runtime, client }
    }

    /// Runs statements with the simple protocol (several may be given, `BEGIN` may open a
    /// transaction that a later call ends).
    pub fn batch(&self, sql: &str) {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The rows of one query, every column read as text (`::text` casts in the query).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self
            .runtime
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
            .collect()
    }

    /// The first column of every row, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }
}
