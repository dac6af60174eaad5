"""A real ramp-ca on loopback, for the scripts that drive one from outside (scripts/chaos,
scripts/bench).

What it stands up, all under one temp dir that tear-down removes:
  - ramp-ca installations (`ramp-ca init --dir`, or a copy of another one's keys, policies
    and demo identities), each with its `serve` on 127.0.0.1; the ports come from serve's
    `ramp-ca: API on http://ADDR` / `ramp-ca: bastion on ADDR` lines, and a restart can keep
    them, so clients carry on against the same addresses;
  - OpenSSH sshd targets: a host key certified by the installation's host-ca, trusting its
    node-ca for the bastion's hop, the `readonly` account allowed as principal `readonly`;
  - one ssh client config (batch mode, no agent, no known_hosts, no multiplexing); the
    identity is chosen per command, so two certificates of one key can be told apart;
  - PostgreSQL clusters of its own (`Rig.start_postgres`): initdb as the `postgres` account,
    a free loopback port, fsync off, a password on TCP; stopped and removed at tear-down.

Every wait has a time limit, every child is tracked, and `Rig.teardown` kills clients (each
in its own process group), what the sshds forked, the serves (SIGTERM, so they flush), the
sshds, then runs the registered clean-ups (e.g. unmounts) and removes the temp dir.

Needs root (creates the account, runs sshd), python3 (stdlib only) and OpenSSH; PostgreSQL
(Debian's `postgresql`, see scripts/install-deps) for `start_postgres`.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHD = "/usr/sbin/sshd"
POSTGRES_ROOT = "/usr/lib/postgresql"
# The account PostgreSQL runs as when the rig runs as root (initdb and pg_ctl refuse root);
# the package creates it.
POSTGRES_ACCOUNT = "postgres"
# The superuser initdb creates, and the database the URLs name.
POSTGRES_USER = "ramp"
ACCOUNT = "readonly"
MiB = 1024 * 1024
# Log lines read `[TAG HH:MM:SS] ...`; the script using the rig names itself here.
TAG = "rig"


class RigError(Exception):
    pass


def log(msg):
    print(f"[{TAG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tail(text, n=400):
    text = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
    text = text.strip()
    return text[-n:] if len(text) > n else text


def read_tail(path, n=600):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * n))
            return tail(f.read(), n)
    except (OSError, TypeError):
        return ""


def run(cmd, timeout, check=True, **kw):
    """Runs cmd with a time limit; raises RigError with its stderr when it fails."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    try:
        out = subprocess.run(cmd, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RigError(f"timed out after {timeout}s: {' '.join(map(str, cmd))[:200]}")
    if check and out.returncode != 0:
        raise RigError(f"exit {out.returncode}: {' '.join(map(str, cmd))[:200]}: "
                       f"{tail(out.stderr)}")
    return out


def markdown_table(headers, rows):
    """rows (lists of strings) under headers, as an aligned Markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.replace("|", "/").ljust(w) for c, w in zip(cells, widths)) \
            + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])


class Checks:
    """The correctness checks one scenario adds: what was expected, what was seen, and
    whether they agree. Any failed check fails the script's run."""

    def __init__(self, num, name):
        self.num, self.name = num, name
        self.rows = []  # (check, expected, observed, ok)

    def add(self, check, expected, observed, ok):
        self.rows.append((check, expected, observed, bool(ok)))
        log(f"  {'PASS' if ok else 'FAIL'} {check}: {observed}")

    def outcome(self, check, expected, ok_observed):
        """add() for an (ok, observed) pair."""
        ok, observed = ok_observed
        self.add(check, expected, observed, ok)


def print_checks(results):
    """Every check of every scenario, one row each, in Markdown; observations too long for a
    cell go in full below the table."""
    headers = ["#", "scenario", "check", "expected", "observed", "result"]
    table, notes = [], []
    for c in results:
        for i, (check, expected, observed, ok) in enumerate(c.rows):
            if len(observed) > 90:
                notes.append(f"  [{c.num}] {check}: {observed}")
                observed = observed[:80] + " ... (below)"
            table.append([str(c.num) if i == 0 else "", c.name if i == 0 else "", check,
                          expected, observed, "PASS" if ok else "FAIL"])
    print(markdown_table(headers, table))
    if notes:
        print("\nobserved in full:")
        print("\n".join(notes))


def verdict(results, problem=None):
    """(failed, the run's last line): `PASS|FAIL: N passed, N failed`, naming each failed
    check and the problem (set-up failed, interrupted) when there is one."""
    oks = [ok for c in results for *_, ok in c.rows]
    failed = [f"[{c.num}] {check}" for c in results for check, _, _, ok in c.rows if not ok]
    bad = problem is not None or bool(failed)
    line = (f"{'FAIL' if bad else 'PASS'}: {oks.count(True)} passed, {oks.count(False)} failed"
            + (f" ({'; '.join(failed)})" if failed else "")
            + (f"; {problem}" if problem else ""))
    return bad, line


def raise_on_signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt, so a script tears down as on an error (both
    set explicitly: a shell starts background jobs with SIGINT ignored)."""
    def interrupted(*_):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)


def wait_for(fn, timeout, interval=0.1):
    """fn()'s first truthy value within timeout seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10.0, logfile=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RigError(f"exited with {proc.returncode}: {read_tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RigError(f"not listening on {port} after {timeout}s: {read_tail(logfile)}")


def descendants(pid):
    """Every live process below pid (by parent links in /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_group(p, grace=2.0):
    """SIGTERM to p's process group (spawned with start_new_session), SIGKILL after grace."""
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except OSError:
            pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def stop_proc(p, grace=10.0):
    """SIGTERM (after SIGCONT, in case it was stopped), SIGKILL after grace; the exit code."""
    if p.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                p.send_signal(sig)
            except OSError:
                pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return p.returncode


def ensure_account(name):
    if run(["id", name], timeout=10, check=False).returncode != 0:
        run(["useradd", "-m", "-s", "/bin/sh", name], timeout=30)
    run(["usermod", "-p", "*", name], timeout=30)  # unlocked, no password: keys only


def build(kind):
    """`cargo build` of the ramp-ca binary for kind ("debug" or "release"); its path."""
    cmd = ["cargo", "build", "--bins", *(["--release"] if kind == "release" else [])]
    log(" ".join(cmd))
    run(cmd, timeout=3600, cwd=ROOT, stdout=None, stderr=None)
    path = os.path.join(ROOT, "target", kind, "ramp-ca")
    if not os.access(path, os.X_OK):
        raise RigError(f"cargo build did not produce {path}")
    return path


def pick_binary(explicit=None, kinds=("debug", "release")):
    """The ramp-ca to test: `explicit`, else the newest of target/KIND/ramp-ca for `kinds`,
    after a build of the first kind when there is none."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RigError(f"{explicit} is not an executable")
        return os.path.abspath(explicit)
    have = [p for p in (os.path.join(ROOT, "target", kind, "ramp-ca") for kind in kinds)
            if os.access(p, os.X_OK)]
    if not have:
        log(f"no target/{kinds[0]}/ramp-ca built yet")
        return build(kinds[0])
    return max(have, key=os.path.getmtime)


def provenance(binary):
    """Which binary this is: its path, build time, and the tree it most likely came from."""
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.path.getmtime(binary)))
    git = ["git", "-C", ROOT]
    head = run(git + ["log", "-1", "--format=%h %cI"], timeout=30, check=False)
    dirty = run(git + ["status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                timeout=30, check=False)
    changed = [line[3:] for line in dirty.stdout.decode().splitlines()]
    tree = head.stdout.decode().strip() or "unknown"
    if changed:
        tree += f" + uncommitted changes to {', '.join(changed)}"
    return f"{os.path.relpath(binary, ROOT)} built {built}; tree now: {tree}"


class Sshd:
    """One sshd listening on 127.0.0.1."""

    def __init__(self, name, proc, port, log, host_key=None):
        self.name = name
        self.proc = proc
        self.port = port
        #: Its stderr (`sshd -e`): what it logs at its LogLevel.
        self.log = log
        #: Path of its Ed25519 host key (`.pub` beside it; `-cert.pub` when certified).
        self.host_key = host_key


def postgres_bin():
    """The newest /usr/lib/postgresql/<major>/bin with the server programs."""
    found = []
    for name in (os.listdir(POSTGRES_ROOT) if os.path.isdir(POSTGRES_ROOT) else []):
        try:
            version = tuple(int(p) for p in name.split("."))
        except ValueError:
            continue
        bindir = os.path.join(POSTGRES_ROOT, name, "bin")
        if all(os.access(os.path.join(bindir, p), os.X_OK)
               for p in ("initdb", "pg_ctl", "postgres", "createdb")):
            found.append((version, bindir))
    if not found:
        raise RigError(f"no PostgreSQL server under {POSTGRES_ROOT}/<major>/bin (initdb, "
                       "pg_ctl, postgres): run scripts/install-deps")
    return max(found)[1]


class Postgres:
    """A private PostgreSQL cluster under the rig's temp dir: `data/` (also the unix socket
    directory) and `postgres.log`. Password (SCRAM) on 127.0.0.1, trust on the socket; fsync
    off, as the data is thrown away. `start` picks a free port the first time and keeps it
    across restarts, so the nodes' URLs stay valid."""

    def __init__(self, rig, name):
        self.name = name
        self.dir = rig.mkdir(name)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.bin = postgres_bin()
        self.password = secrets.token_hex(16)
        self.port = None
        self.as_account = os.geteuid() == 0
        if self.as_account:
            ids = run(["id", "-u", POSTGRES_ACCOUNT], timeout=10, check=False)
            if ids.returncode != 0:
                raise RigError(f"no `{POSTGRES_ACCOUNT}` account (the postgresql package "
                               "creates it): run scripts/install-deps")
            gid = int(run(["id", "-g", POSTGRES_ACCOUNT], timeout=10).stdout)
            os.chown(self.dir, int(ids.stdout), gid)
        self.initdb()

    def cmd(self, program, *args):
        """argv running one of the server programs, as the postgres account under root."""
        argv = [os.path.join(self.bin, program), *args]
        return ["runuser", "-u", POSTGRES_ACCOUNT, "--", *argv] if self.as_account else argv

    def initdb(self):
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.as_account:
            st = os.stat(self.dir)
            os.chown(pwfile, st.st_uid, st.st_gid)
        run(self.cmd("initdb", "-D", self.data, "-U", POSTGRES_USER, "-E", "UTF8",
                     "--no-locale", "--no-sync", "--auth-local=trust",
                     "--auth-host=scram-sha-256", f"--pwfile={pwfile}"), timeout=120)
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# ramp-ca rig\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.data}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 200\n")

    def url(self, **params):
        """`postgres://ramp:PASSWORD@127.0.0.1:PORT/ramp`, with `params` as its query."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return (f"postgres://{POSTGRES_USER}:{self.password}@127.0.0.1:{self.port}/"
                f"{POSTGRES_USER}" + (f"?{query}" if query else ""))

    def start(self, timeout=30):
        """pg_ctl start, waiting (bounded) until it accepts connections; the first start picks
        a free port (a lost race for it is retried) and creates the database."""
        first = self.port is None
        for _ in range(3 if first else 1):
            if first:
                self.port = free_port()
            out = run(self.cmd("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t",
                               str(timeout), "-o", f"-p {self.port}", "start"),
                      timeout=timeout + 10, check=False)
            if out.returncode == 0:
                break
            if not (first and "Address already in use" in read_tail(self.log, 2000)):
                raise RigError(f"{self.name}: pg_ctl start failed: {tail(out.stderr)} "
                               f"{read_tail(self.log)}")
        else:
            raise RigError(f"{self.name}: PostgreSQL did not start: {read_tail(self.log)}")
        if first:
            run([os.path.join(self.bin, "createdb"), "-h", self.data, "-p", str(self.port),
                 "-U", POSTGRES_USER, POSTGRES_USER], timeout=30)
        log(f"{self.name}: PostgreSQL on 127.0.0.1:{self.port}")

    def alive(self):
        return run(self.cmd("pg_ctl", "-D", self.data, "status"), timeout=10,
                   check=False).returncode == 0

    def stop(self, mode="fast", timeout=30):
        """pg_ctl stop (`fast`: clients disconnected, a clean shutdown; `immediate`: no
        checkpoint, recovery at the next start); a server that will not stop is killed."""
        if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return
        out = run(self.cmd("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", str(timeout),
                           "stop"), timeout=timeout + 10, check=False)
        if out.returncode != 0:
            self.kill9()

    def kill9(self, timeout=10):
        """SIGKILL to the postmaster and every server process (the database host crashing),
        then waits until they are gone, so `start` (crash recovery) finds no old server."""
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                pid = int(f.readline())
        except (OSError, ValueError):
            return
        procs = [pid, *descendants(pid)]
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if not wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in procs),
                        timeout, 0.02):
            raise RigError(f"{self.name}: PostgreSQL processes still there {timeout}s after "
                           "SIGKILL")


class DelayProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` that holds every chunk `delay`
    seconds, each way: a database far away or slow to answer. `delay` may change while it
    runs; closed at tear-down."""

    def __init__(self, rig, upstream_port, delay):
        self.upstream, self.delay = upstream_port, delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        rig.cleanups.append(self.close)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


class Ramp:
    """One ramp-ca installation (`ramp-ca init --dir`) and the `serve` running on it."""

    def __init__(self, rig, name, like=None):
        """`ramp-ca init` in a new dir; or, with `like`, a copy of that installation's keys,
        policies and demo identities and an empty store (its targets trust this one too)."""
        self.rig = rig
        self.name = name
        self.dir = rig.mkdir(name)
        self.log = os.path.join(rig.tmp, f"{name}-serve.log")
        #: The running (or last) `ramp-ca serve`, None before the first start.
        self.proc = None
        self.api = None
        self.bport = None
        if like:
            for sub in ("keys", "policies", "demo"):
                shutil.copytree(os.path.join(like.dir, sub), os.path.join(self.dir, sub))
        else:
            run([rig.binary, "init", "--demo", "--dir", self.dir], timeout=60, env=rig.env)

    # ---- policies ----------------------------------------------------------------------------
    def key(self, user):
        """Path of a demo identity's private key (alice, bob, carol)."""
        return os.path.join(self.dir, "demo", user, "id_ed25519")

    def key_copy(self, name, user="alice"):
        """A copy of a demo identity's key at its own path, so certificates written beside it
        stay apart from the original's."""
        key = os.path.join(self.rig.mkdir(f"{self.name}-keys/{name}"), "id_ed25519")
        for suffix in ("", ".pub"):
            shutil.copy2(self.key(user) + suffix, key + suffix)
        os.chmod(key, 0o600)
        return key

    def set_host(self, name, address, host_key=None, labels="{role: db}"):
        """Writes `name`'s entry in hosts.yaml (replacing one of that name); serve reads it at
        start or on SIGHUP. `host_key` pins a key; without it the target must present a
        host-ca certificate. The example hosts stay: prod-web is invalid without a web host."""
        path = os.path.join(self.dir, "policies", "hosts.yaml")
        with open(path) as f:
            text = f.read()
        entry = f"  {name}:\n    address: {address}\n    labels: {labels}\n"
        if host_key:
            entry += f'    host_key: "{host_key}"\n'
        block = re.compile(rf"^  {re.escape(name)}:\n(?:    .*\n)+", re.M)
        if block.search(text):
            text = block.sub(lambda _: entry, text, count=1)
        elif re.search(r"^hosts:\n", text, re.M):
            text = re.sub(r"^hosts:\n", lambda m: m.group(0) + entry, text, count=1, flags=re.M)
        else:
            raise RigError(f"no `hosts:` map in {path}")
        with open(path, "w") as f:
            f.write(text)

    # ---- the daemon -------------------------------------------------------------------------
    def start(self, *extra, same_ports=True, timeout=30):
        """Starts `serve` and waits for both ports. A restart keeps the previous ports unless
        same_ports is False (a first start picks free ones)."""
        if self.alive():
            raise RigError(f"{self.name}: serve is already running")
        keep = same_ports and self.api is not None
        api = self.api.split("//", 1)[1] if keep else "127.0.0.1:0"
        ssh = f"127.0.0.1:{self.bport}" if keep else "127.0.0.1:0"
        with open(self.log, "ab") as lf:
            lf.write(f"---- {time.strftime('%H:%M:%S')} serve {' '.join(extra)}\n".encode())
            lf.flush()
            p = subprocess.Popen([self.rig.binary, "serve", "--dir", self.dir, "--api", api,
                                  "--ssh", ssh, *extra], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=lf, env=self.rig.env)
        self.rig.daemons.append((p, f"{self.name} serve"))
        self.proc = p
        lines, found = [], {}

        def reader():
            for raw in p.stdout:
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                if line.startswith("ramp-ca: API on "):
                    found["api"] = line.split("API on ", 1)[1]
                elif line.startswith("ramp-ca: bastion on "):
                    found["ssh"] = line.split("bastion on ", 1)[1]
        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ("api" in found and "ssh" in found):
            if p.poll() is not None:
                break
            time.sleep(0.02)
        if not ("api" in found and "ssh" in found):
            raise RigError(f"{self.name}: serve did not report its ports (exit {p.poll()}): "
                           f"{lines} {read_tail(self.log)}")
        self.api, self.bport = found["api"], int(found["ssh"].rsplit(":", 1)[1])
        return p

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        """SIGKILL, no flush: a crash."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, grace=20.0):
        """SIGTERM (a clean stop) and its exit code; SIGKILL after grace."""
        return stop_proc(self.proc, grace) if self.proc else None

    # ---- clients ----------------------------------------------------------------------------
    def cli(self, *args, user="alice", key=None, timeout=60, check=True):
        """`ramp-ca ARGS` against this installation's serve, signed by a demo identity (or
        `key`)."""
        cmd = [self.rig.binary, *args, "--dir", self.dir, "--server", self.api, "--key",
               key or self.key(user)]
        return run(cmd, timeout=timeout, check=check, env=self.rig.env)

    def sessions(self, user="bob"):
        """`sessions list --json` (bob is an auditor)."""
        return json.loads(self.cli("sessions", "list", "--json", user=user).stdout)

    def sign(self, key=None, reason="rig"):
        """A 30-minute certificate of prod-db's first step for alice (or her key copied to
        `key`), written beside the key; the `sign --json` answer."""
        out = self.cli("sign", "--contract", "prod-db", "--step", "observe", "--reason", reason,
                       "--json", key=key)
        return json.loads(out.stdout)

    def ssh(self, remote, target="db-1", identity=None, tty=False, opts=()):
        """argv of ssh through the bastion as readonly@TARGET, with alice's key (or
        `identity`) and the certificate beside it."""
        return ["ssh", "-F", self.rig.ssh_config, "-i", identity or self.key("alice"), "-p",
                str(self.bport), *opts, *(["-tt"] if tty else []),
                f"{ACCOUNT}@{target}@127.0.0.1", *remote]


class Rig:
    """The temp dir and every process started in it."""

    def __init__(self, binary, prefix="ramp-rig-", keep=False, ssh_options=()):
        self.built = binary
        self.prefix = prefix
        self.keep = keep
        #: ssh_config lines (`Option value`) added to every client config the rig writes.
        self.ssh_options = tuple(ssh_options)
        self.tmp = None
        self.daemons = []        # (Popen, name): sshds and serves, stopped at tear-down
        self.clients = []        # client Popens, each in its own process group
        self.cleanups = []       # callables run after every process is gone

    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix=self.prefix)
        # The target account must reach files under it.
        os.chmod(self.tmp, 0o711)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("SSH_AUTH_SOCK", "RAMP_SERVER", "RUST_LOG", "RAMP_DIR")}
        self.env["HOME"] = self.tmp
        # A copy: anyone sharing the target dir may relink the binary mid-run.
        self.binary = os.path.join(self.tmp, "ramp-ca")
        shutil.copy2(self.built, self.binary)
        self.provenance = provenance(self.built)
        ensure_account(ACCOUNT)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.ssh_config = self.write_ssh_config("ssh_config")

    def mkdir(self, rel):
        path = os.path.join(self.tmp, rel)
        os.makedirs(path, exist_ok=True)
        return path

    def write(self, rel, text):
        with open(os.path.join(self.tmp, rel), "w") as f:
            f.write(text)

    def keygen(self, rel):
        path = os.path.join(self.tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", os.path.basename(rel), "-f",
             path], timeout=30)
        return path

    def write_ssh_config(self, rel, identity=None):
        """Client options every path shares, and the rig's ssh_options; IdentitiesOnly, so
        only the identity named here or with -i is offered. ssh passes `-F` (not `-o`) on to
        a ProxyJump hop, so options set here hold on that leg too."""
        lines = [
            "Host *",
            f"  User {ACCOUNT}",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  BatchMode yes",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  GlobalKnownHostsFile /dev/null",
            "  UpdateHostKeys no",
            "  ControlMaster no",
            "  ControlPath none",
            "  LogLevel ERROR",
            "  ConnectTimeout 15",
        ]
        if identity:
            lines.insert(2, f"  IdentityFile {identity}")
        lines += [f"  {option}" for option in self.ssh_options]
        path = os.path.join(self.tmp, rel)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def install(self, name, like=None):
        return Ramp(self, name, like)

    def start_postgres(self, name="postgres"):
        """A private PostgreSQL cluster, started; stopped at tear-down after the serves
        (the clean-ups run once every process the rig started is gone)."""
        pg = Postgres(self, name)
        self.cleanups.append(lambda: pg.stop("immediate"))
        pg.start()
        return pg

    # ---- sshd -------------------------------------------------------------------------------
    def start_sshd(self, name, lines):
        """sshd -D on a free loopback port with `lines` plus the shared settings (sshd takes
        the first value of a setting, so `lines` override them); a lost race for the port is
        retried. Its Sshd, without host_key."""
        d = self.mkdir(name)
        last = ""
        for _ in range(3):
            port = free_port()
            conf = os.path.join(d, "sshd_config")
            with open(conf, "w") as f:
                f.write("\n".join([
                    f"ListenAddress 127.0.0.1:{port}",
                    f"PidFile {d}/sshd.pid",
                    *lines,
                    "UsePAM no", "StrictModes no", "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                    "PermitRootLogin no", "LogLevel ERROR",
                    # Scripts open hundreds of connections at once.
                    "MaxStartups 2000", "MaxSessions 100",
                ]) + "\n")
            logf = os.path.join(d, f"sshd-{port}.log")
            with open(logf, "wb") as lf:
                p = subprocess.Popen([SSHD, "-D", "-e", "-f", conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=lf)
            self.daemons.append((p, f"{name} sshd"))
            try:
                wait_port(port, p, 10, logf)
                return Sshd(name, p, port, logf)
            except RigError as e:
                last = str(e)
                stop_proc(p)
                if "Address already in use" not in last:
                    break
        raise RigError(f"{name} sshd did not start: {last}")

    def target(self, ramp, name, extra=()):
        """A target sshd for `ramp`: host key certified by its host-ca for `name`, trusting its
        node-ca; the account's only principal is `readonly`. sshd takes the first value of a
        setting, so `extra` lines override the ones here (e.g. AuthorizedKeysFile)."""
        d = self.mkdir(f"{ramp.name}-{name}")
        host = self.keygen(f"{ramp.name}-{name}/ssh_host_ed25519_key")
        run(["ssh-keygen", "-q", "-s", os.path.join(ramp.dir, "keys", "host-ca"), "-h", "-I",
             name, "-n", name, "-V", "-1m:+1d", host + ".pub"], timeout=30)
        os.makedirs(os.path.join(d, "principals"), exist_ok=True)
        with open(os.path.join(d, "principals", ACCOUNT), "w") as f:
            f.write(f"{ACCOUNT}\n")
        sshd = self.start_sshd(f"{ramp.name}-{name}", [
            *extra,
            f"HostKey {host}",
            f"HostCertificate {host}-cert.pub",
            f"TrustedUserCAKeys {ramp.dir}/keys/node-ca.pub",
            f"AuthorizedPrincipalsFile {d}/principals/%u",
            "AuthorizedKeysFile none",
            "Subsystem sftp internal-sftp",
        ])
        sshd.name, sshd.host_key = name, host
        return sshd

    # ---- clients ----------------------------------------------------------------------------
    def spawn(self, cmd, **kw):
        """A client in its own process group, killed at tear-down if still running."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.clients.append(p)
        return p

    def reap(self):
        """Forgets clients that have exited."""
        self.clients = [c for c in self.clients if c.poll() is None]

    # ---- tear-down --------------------------------------------------------------------------
    def stop_processes(self):
        """Every client and daemon started so far, stopped."""
        for p in self.clients:
            kill_group(p)
        self.clients = []
        # What the sshds forked (per-connection servers, remote commands) goes first, then
        # the daemons newest first: serves before the sshds they hop to.
        for p, name in self.daemons:
            if p.poll() is None and name.endswith("sshd"):
                for pid in descendants(p.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        for p, _name in reversed(self.daemons):
            stop_proc(p)
        self.daemons = []

    def teardown(self):
        """Everything stopped, the clean-ups run, the temp dir removed (unless kept). A
        second Ctrl-C or SIGTERM must not cut it short, so from here on both are ignored."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.stop_processes()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the others must still run
                log(f"clean-up failed: {e}")
        self.cleanups = []
        if self.tmp and os.path.isdir(self.tmp):
            if self.keep:
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
