#!/usr/bin/env python3
"""ramp-ca side by side with OpenSSH, in one run, on loopback only.

Stands up in a temp dir (removed at the end), with scripts/rig.py:
  - a target OpenSSH sshd (host key certified by host-ca, trusts node-ca for the bastion's hop
    and an authorized_keys file for the baselines),
  - a second sshd used as an OpenSSH ProxyJump host (the baseline),
  - `ramp-ca serve` (API + recording bastion),
then runs every scenario through the bastion, through ProxyJump and, where it makes sense,
straight to the target (direct), and prints a table of figures and ratios (ramp-ca vs
ProxyJump / ssh-keygen, and vs direct). Every client leg is pinned to one key exchange and
one cipher (PINS), and what each path negotiated is printed. Timings and their targets are
reported, never asserted. Correctness checks (distinct serials, byte-exact output, every
session opened, the pins negotiated, ...) are: the run exits 1 when one fails, when a
scenario errors or when set-up fails, naming what failed; else 0.

    scripts/bench            # the full run (sizes below, ~9 min on 2 cores)
    scripts/bench --smoke    # every scenario tiny, well under a minute (for CI)

Scenario 10 (scripts/bench_pg.py) puts the ledger in PostgreSQL (a cluster of the rig's own,
three nodes sharing it) beside the sled rows: sign rate with one and three nodes, login
latency, revocation fan-out across nodes.

Needs root (creates the `readonly` account, runs sshd), python3 (stdlib only), OpenSSH.
"""

import argparse
import json
import os
import platform
import pwd
import re
import select
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rig  # noqa: E402 - the path above finds it
from rig import ACCOUNT, MiB, ROOT, RigError, log, run, tail  # noqa: E402

rig.TAG = "bench"

# Every client leg of every path negotiates this key exchange and cipher, so the paths do
# like work: left to itself OpenSSH 9.2 picks sntrup761x25519-sha512 against sshd (85 ms of
# client CPU a connection here, against 13 ms for curve25519) but curve25519-sha256 against the
# bastion (russh has no sntrup761). AES-256-GCM is what the bastion's hop picks (upstream.rs).
KEX, CIPHER = "curve25519-sha256", "aes256-gcm@openssh.com"
PINS = (f"KexAlgorithms {KEX}", f"Ciphers {CIPHER}")

# Every count and size the run uses; BENCHMARKS.md quotes these.
SIZES = {
    "full": {
        "mint_keygen_n": 200,          # ssh-keygen -s processes for scenario 1
        "criterion": True,             # run `cargo bench --bench mint`
        "sign_n": 400,                 # scenario 2: `ramp-ca sign` and ssh-keygen processes
        "sign_workers": 8,
        "api_sign_n": 5000,            # scenario 2: requests from the persistent client
        "api_sign_warmup": 500,        # ... sent first, not counted
        "api_sign_release": True,      # its build: release (cargo bench), else test profile
        "connect_n": 100,              # ssh ... true, each path
        "bulk_bytes": 1024 * MiB,      # scenario 4, each transfer
        "keys_n": 1000,                # keystrokes, each path
        "rec_bytes": 1024 * MiB,       # scenario 6
        "idle_n": 500,                 # scenario 7
        "idle_cpu_window": 10,         # seconds of CPU sampling with every session idle
        "active_n": 50,                # scenario 8
        "active_seq": 20000,
        "slow_bytes": 300 * MiB,       # scenario 9 (both paths at once, 1 MiB/s each)
        "slow_rate": 1 * MiB,
        "settle_s": 2,                 # scenario 7: pause before memory is read
        "du_quiet_s": 3,               # scenario 6: du -sb once unchanged this many seconds
        "pg_api_n": 3000,              # scenario 10 (bench_pg.py): requests a sign-rate row
        "pg_connect_n": 50,            # ... connections a path
        "pg_revokes": 20,              # ... revocations, each ending two sessions
    },
    "smoke": {
        "mint_keygen_n": 20,
        "criterion": False,
        "sign_n": 24,
        "sign_workers": 8,
        "api_sign_n": 200,
        "api_sign_warmup": 0,
        "api_sign_release": False,
        "connect_n": 5,
        "bulk_bytes": 8 * MiB,
        "keys_n": 40,
        "rec_bytes": 8 * MiB,
        "idle_n": 20,
        "idle_cpu_window": 2,
        "active_n": 5,
        "active_seq": 2000,
        "slow_bytes": 4 * MiB,
        "slow_rate": 1 * MiB,
        "settle_s": 0.5,
        "du_quiet_s": 1,
        "pg_api_n": 150,
        "pg_connect_n": 4,
        "pg_revokes": 3,
    },
}


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def proc_kib(pid, field="VmRSS", table="status"):
    """The `FIELD: N kB` line of /proc/PID/TABLE (status, smaps_rollup) in KiB; 0 when gone."""
    try:
        with open(f"/proc/{pid}/{table}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    return proc_kib(pid, "Pss", "smaps_rollup")


def cpu_ticks(pid):
    """utime + stime of one process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def du_bytes(path):
    out = run(["du", "-sb", path], timeout=60)
    return int(out.stdout.split()[0])


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v != v:  # nan
        return "n/a"
    if abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


def is_figure(v):
    return isinstance(v, (int, float)) and v == v  # not a string, None or nan


class Row:
    """One figure of the table: ramp-ca's, the baseline's (ProxyJump or ssh-keygen), and
    direct ssh's where the scenario has one. `met` says whether a target is met: it is
    reported, never a reason to fail the run (correctness is a check, not a row)."""

    def __init__(self, scen, metric, ramp=None, base=None, ratio=None, target="", met=None,
                 note="", unit="", direct=None):
        self.scen, self.metric, self.unit = scen, metric, unit
        self.ramp, self.base, self.ratio = ramp, base, ratio
        self.direct = direct
        self.vs_direct = ramp / direct if is_figure(ramp) and is_figure(direct) and direct \
            else None
        self.target, self.met, self.note = target, met, note


# The paths a scenario can compare: (key, name in the table).
PATHS = (("ramp", "bastion"), ("base", "ProxyJump"), ("direct", "direct"))
NAMES = dict(PATHS)
# `ssh -v` and sshd's debug log say what each key exchange settled on in these lines.
KEX_LINE = re.compile(r"kex: algorithm: (\S+)")
CIPHER_LINE = re.compile(r"kex: server->client cipher: (\S+)")


def negotiated(text):
    """(key exchange, server->client cipher) of each key exchange in `text` (`ssh -v` stderr,
    or an sshd log at LogLevel DEBUG1), in order."""
    return list(zip(KEX_LINE.findall(text), CIPHER_LINE.findall(text)))


class Bench:
    """The rig as the bench uses it: one ramp-ca installation serving, one target sshd that
    every path reaches (node-ca certificates from the bastion, the bench key from ProxyJump
    and direct), and the OpenSSH ProxyJump host."""

    def __init__(self, binary):
        self.lab = rig.Rig(binary, prefix="ramp-bench-", ssh_options=PINS)
        self.ramp = None
        #: What each leg negotiated, from probe_negotiation: (path, leg, kex, cipher, pinned).
        self.legs = []

    def setup(self, checks):
        lab = self.lab
        lab.setup()
        log(f"binary under test: {lab.provenance}")
        self.ramp = lab.install("ramp")
        self.alice = self.ramp.key("alice")

        # The baselines' client key, allowed on the target and on the jump host.
        self.benchkey = lab.keygen("bench_key")
        keys = lab.mkdir("authorized_keys")
        with open(self.benchkey + ".pub") as f:
            lab.write(f"authorized_keys/{ACCOUNT}", f.read())
        self.target = lab.target(self.ramp, "db-1", extra=[f"AuthorizedKeysFile {keys}/%u"])
        # A twin of the target that logs at debug level, so the hop's negotiation can be read
        # there; stopped once probed, so db-1 itself stays quiet.
        probe = lab.target(self.ramp, "db-probe", extra=["LogLevel DEBUG1"])
        jhost = lab.keygen("jump/ssh_host_ed25519_key")
        self.jump = lab.start_sshd("jump", [
            f"HostKey {jhost}",
            f"AuthorizedKeysFile {keys}/%u",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
        ])
        # db-1 is the target; no host_key, so the bastion checks the host-ca certificate.
        self.ramp.set_host("db-1", f"127.0.0.1:{self.target.port}")
        self.ramp.set_host("db-probe", f"127.0.0.1:{probe.port}")
        # Scenario 7 holds hundreds of alice's connections open at once: above the per-user
        # cap a real installation keeps (default 32), as ProxyJump has none.
        config = os.path.join(lab.tmp, "serve-config.yaml")
        with open(config, "w") as f:
            f.write("bastion:\n  max_connections_per_user: 100000\n")
        self.ramp.start("--config", config)
        # Every path takes the rig's client options (PINS included); the baselines' identity
        # is in their config because ssh passes -F, not -i, to the jump hop.
        self.benchconf = lab.write_ssh_config("baseline.ssh_config", self.benchkey)
        self.sign_alice()

        # Payloads the target account can read, and a directory it can write.
        self.payload_dir = lab.mkdir("payload")
        os.chmod(self.payload_dir, 0o755)
        self.updir = lab.mkdir("upload")
        pw = pwd.getpwnam(ACCOUNT)
        os.chown(self.updir, pw.pw_uid, pw.pw_gid)

        # Every path must work before anything is measured.
        for path, name in PATHS:
            out = run(self.ssh(path, ["echo", "ok"]), timeout=30, check=False)
            if out.returncode != 0 or out.stdout != b"ok\n":
                raise RigError(f"{name} path does not work (exit {out.returncode}): "
                               f"{tail(out.stderr)}\nserve log: {rig.read_tail(self.ramp.log)}")
        self.probe_negotiation(probe, checks)
        log(f"ready: target sshd :{self.target.port}, jump sshd :{self.jump.port}, "
            f"API {self.ramp.api}, bastion :{self.ramp.bport}")

    def probe_negotiation(self, probe, checks):
        """One `ssh -v ... true` a path: what each leg negotiated, the bastion's hop read from
        the debug log of the probe target it hops to. Every client leg must have negotiated
        PINS (a check); the hop is the bastion's own choice, reported."""
        expect = {"ramp": ["client -> bastion"],
                  "base": ["client -> jump", "client -> target, through the jump"],
                  "direct": ["client -> target"]}
        seen, ok = [], True
        for path, name in PATHS:
            opts = ["-v"]
            cmd = (self.ssh_bastion(["true"], opts=opts, target="db-probe") if path == "ramp"
                   else self.ssh(path, ["true"], opts=opts))
            out = run(cmd, timeout=30)
            legs = negotiated(out.stderr.decode(errors="replace"))
            ok = ok and len(legs) == len(expect[path])
            seen.append(f"{name}: " + (", ".join(f"{k} / {c}" for k, c in legs) or "none seen"))
            for leg, (kex, cipher) in zip(expect[path], legs):
                self.legs.append((name, leg, kex, cipher, True))
                ok = ok and (kex, cipher) == (KEX, CIPHER)
        hop = rig.wait_for(lambda: negotiated(rig.read_tail(probe.log, 20000)), 5)
        kex, cipher = hop[0] if hop else ("not seen", f"not seen (log: {probe.log})")
        self.legs.insert(1, ("bastion", "bastion -> target (the hop)", kex, cipher, False))
        rig.stop_proc(probe.proc)
        for name, leg, kex, cipher, _ in self.legs:
            log(f"negotiated: {name}, {leg}: {kex}, {cipher}")
        checks.add("every client leg negotiated the pinned key exchange and cipher",
                   f"{KEX} / {CIPHER}", "; ".join(seen), ok)

    def sign_alice(self, ramp=None):
        """A fresh 30-minute certificate beside alice's key (before each bastion scenario)."""
        return (ramp or self.ramp).sign(reason="bench")

    def jump_children(self):
        return rig.descendants(self.jump.proc.pid)

    # ---- client commands ------------------------------------------------------------------
    def ssh_bastion(self, remote, tty=False, opts=(), target="db-1"):
        return self.ramp.ssh(remote, target=target, tty=tty, opts=opts)

    def ssh_baseline(self, remote, tty=False, opts=()):
        return ["ssh", "-F", self.benchconf, "-J", f"{ACCOUNT}@127.0.0.1:{self.jump.port}",
                *self.to_target(remote, tty, opts)]

    def ssh_direct(self, remote, tty=False, opts=()):
        return ["ssh", "-F", self.benchconf, *self.to_target(remote, tty, opts)]

    def to_target(self, remote, tty, opts):
        """The ssh arguments after `-F`/`-J` that reach the target sshd itself."""
        return ["-p", str(self.target.port), *opts, *(["-tt"] if tty else []),
                f"{ACCOUNT}@127.0.0.1", *remote]

    def ssh(self, path, remote, tty=False, opts=()):
        command = {"ramp": self.ssh_bastion, "base": self.ssh_baseline,
                   "direct": self.ssh_direct}[path]
        return command(remote, tty=tty, opts=opts)

    def scp(self, path, src, dst, download):
        """scp between a local path and a path on the target, through `path`."""
        if path == "ramp":
            head = ["scp", "-q", "-F", self.lab.ssh_config, "-i", self.alice, "-P",
                    str(self.ramp.bport)]
            remote = f"{ACCOUNT}@db-1@127.0.0.1:"
        else:
            jump = ["-J", f"{ACCOUNT}@127.0.0.1:{self.jump.port}"] if path == "base" else []
            head = ["scp", "-q", "-F", self.benchconf, *jump, "-P", str(self.target.port)]
            remote = f"{ACCOUNT}@127.0.0.1:"
        return head + ([remote + src, dst] if download else [src, remote + dst])


# ---- scenarios -----------------------------------------------------------------------------
def keygen_sign_once(ca, user, i):
    t0 = time.perf_counter()
    run(["ssh-keygen", "-q", "-s", ca, "-I", f"bench-{i}", "-n", "readonly,dbadmin", "-z", str(i),
         "-V", "-1m:+1h", "-O", "source-address=10.0.0.0/8", user], timeout=30)
    return time.perf_counter() - t0


def s1_mint(bench, sz, _checks):
    """Mint one certificate: criterion median in-process vs one ssh-keygen -s per cert."""
    ca = bench.lab.keygen("mint/ca")
    user = bench.lab.keygen("mint/user") + ".pub"
    times = [keygen_sign_once(ca, user, i + 1) for i in range(sz["mint_keygen_n"])]
    keygen_us = statistics.median(times) * 1e6
    note = f"ssh-keygen -s: median {keygen_us:.0f} us over {len(times)} processes"
    label = "mint one certificate, one at a time (certs/s)"
    if not sz["criterion"]:
        return [Row(1, label, "skipped (--smoke)", 1e6 / keygen_us, None, "none (reference)",
                    None, note, "/s")]
    est = os.path.join(ROOT, "target", "criterion", "mint one user certificate", "new",
                       "estimates.json")
    started = time.time()
    out = run(["cargo", "bench", "--bench", "mint", "--", "--noplot"], timeout=1800, cwd=ROOT,
              check=False)
    if out.returncode != 0:
        raise RigError(f"cargo bench failed: {tail(out.stderr)}")
    if not os.path.exists(est) or os.path.getmtime(est) < started - 1:
        raise RigError("criterion wrote no fresh estimates.json")
    with open(est) as f:
        ramp_us = json.load(f)["median"]["point_estimate"] / 1000.0
    return [Row(1, label, 1e6 / ramp_us, 1e6 / keygen_us, keygen_us / ramp_us,
                "none (reference)", None,
                note + f"; ramp-ca: criterion median {ramp_us:.1f} us, in-process, no IO", "/s")]


def run_timed(cmd):
    t0 = time.perf_counter()
    run(cmd, timeout=30)
    return time.perf_counter() - t0


def parallel_timed(n, workers, job, deadline_s):
    """Runs job(worker, i) for i in range(n) across `workers` threads; returns
    (latencies, wall seconds, errors)."""
    lat, errors, lock = [], [], threading.Lock()
    counter = iter(range(n))
    stop_at = time.monotonic() + deadline_s

    def worker(w):
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                job(w, i)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                with lock:
                    errors.append(str(e))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=deadline_s + 60)
    return lat, time.perf_counter() - t0, errors


def api_sign_command(release):
    """argv of benches/api_sign.rs, the persistent-client load generator, built. The full run
    builds it with `cargo bench` (release) and runs it through cargo; smoke runs the
    test-profile binary `cargo test --all-targets` has already built, so it needs no release
    build."""
    if release:
        # No arguments: it builds, prints its usage and exits 0, so the build is not timed.
        run(["cargo", "bench", "--bench", "api_sign"], timeout=3600, cwd=ROOT)
        return ["cargo", "bench", "--bench", "api_sign", "--"], "release, via cargo bench"
    out = run(["cargo", "test", "--bench", "api_sign", "--no-run", "--message-format=json"],
              timeout=3600, cwd=ROOT)
    for line in out.stdout.decode().splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "api_sign":
            return [msg["executable"]], "test profile"
    raise RigError("cargo test --bench api_sign --no-run named no executable")


def api_sign(cmd, ramp, n, workers):
    """One api_sign run against `ramp`'s API as alice; its JSON report."""
    out = run([*cmd, "--server", ramp.api, "--key", ramp.key("alice"), "--contract", "prod-db",
               "--step", "observe", "-n", str(n), "-c", str(workers)], timeout=900, cwd=ROOT)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def s2_sign(bench, sz, checks):
    """The signing API's rate: one persistent client (the target row), and for reference one
    `ramp-ca sign` process per certificate; both against `ssh-keygen -s`, a process per
    certificate, at the same concurrency."""
    n, workers = sz["sign_n"], sz["sign_workers"]
    loadgen, build = api_sign_command(sz["api_sign_release"])
    keys = [bench.ramp.key_copy(f"sign-w{w}") for w in range(workers)]
    ca = bench.lab.keygen("sign/ca")
    users = [bench.lab.keygen(f"sign/w{w}/user") + ".pub" for w in range(workers)]

    def ramp_job(w, _i):
        bench.ramp.cli("sign", "--contract", "prod-db", "--step", "observe", "--reason", "bench",
                       "--json", key=keys[w])

    def keygen_job(w, i):
        run(["ssh-keygen", "-q", "-s", ca, "-I", f"bench-{i}", "-n", "readonly", "-z",
             str(i + 1), "-V", "-1m:+30m", users[w]], timeout=30)

    startup = statistics.median(
        run_timed([bench.lab.binary, "--version"]) for _ in range(20)) * 1e3
    kl, kw, kerr = parallel_timed(n, workers, keygen_job, 600)
    rl, rw, rerr = parallel_timed(n, workers, ramp_job, 600)
    if rerr or kerr:
        raise RigError(f"{len(rerr)} ramp-ca sign and {len(kerr)} ssh-keygen failures; "
                       f"first: {(rerr or kerr)[0]}")
    rrate, krate = len(rl) / rw, len(kl) / kw
    kp99 = pct(kl, 99) * 1e3
    runs = []
    if sz["api_sign_warmup"]:
        runs.append(api_sign(loadgen, bench.ramp, sz["api_sign_warmup"], workers))
    cpu0 = cpu_ticks(bench.ramp.proc.pid)
    api = api_sign(loadgen, bench.ramp, sz["api_sign_n"], workers)
    serve_cpu = (cpu_ticks(bench.ramp.proc.pid) - cpu0) / os.sysconf("SC_CLK_TCK")
    runs.append(api)
    checks.add("API sign: every request answered, each certificate with its own serial",
               "0 errors; as many distinct serials as requests, in each run",
               "; ".join(f"{r['n']} requests: {r['errors']} errors, {r['distinct_serials']} "
                         f"distinct serials" + (f" (first error: {r['first_error']})"
                                                if r["errors"] else "") for r in runs),
               all(r["errors"] == 0 and r["distinct_serials"] == r["n"] for r in runs))
    arate = api["rate"]
    note = (f"{api['n']} requests, {workers} at a time, from one persistent client "
            f"(benches/api_sign.rs, {build})"
            + (f" after {sz['api_sign_warmup']} not counted" if sz["api_sign_warmup"] else "")
            + f"; {api['seconds']:.2f} s, p50 {api['p50_ms']:.2f} ms, {api['errors']} errors"
            + (f" (first: {api['first_error']})" if api["errors"] else "")
            + f", {api['distinct_serials']} distinct serials; serve's CPU "
            f"{serve_cpu / max(api['n'], 1) * 1e6:.0f} us a certificate; ssh-keygen: {n} certs, "
            f"{workers} processes at a time")
    return [
        Row(2, f"API sign rate, concurrency {workers}, persistent client (certs/s)", arate,
            krate, arate / krate, ">= 20x", arate / krate >= 20, note, "/s"),
        Row(2, "API sign p99 latency, persistent client (ms)", api["p99_ms"], kp99, None,
            "<= 5 ms", api["p99_ms"] <= 5,
            "baseline: ssh-keygen -s p99, one process per certificate", "ms"),
        Row(2, f"`ramp-ca sign` rate, a process per cert, concurrency {workers} (certs/s)",
            rrate, krate, rrate / krate, "(reference)", None,
            f"{n} certs each, {workers} workers, each cert a process (start-up included; "
            f"`ramp-ca --version` alone takes {startup:.1f} ms); p99 {pct(rl, 99) * 1e3:.1f} "
            f"ms, ssh-keygen {kp99:.1f} ms", "/s"),
    ]


def s3_connect(bench, sz, _checks):
    bench.sign_alice()
    n = sz["connect_n"]
    # Informational fourth client: offers only the certificate, not the plain key first.
    clients = [(path, bench.ssh(path, ["true"])) for path, _ in PATHS] + [
        ("certonly", bench.ssh_bastion(["true"], opts=[
            "-o", "PubkeyAcceptedAlgorithms=ssh-ed25519-cert-v01@openssh.com"]))]
    lat = {path: [] for path, _ in clients}
    deadline = time.monotonic() + 600
    for i in range(n):  # interleaved, so drift hits every path alike
        if time.monotonic() > deadline:
            break
        for path, cmd in clients:
            t0 = time.perf_counter()
            run(cmd, timeout=30)
            lat[path].append(time.perf_counter() - t0)
    p50 = {path: pct(v, 50) * 1e3 for path, v in lat.items()}
    p99 = {path: pct(v, 99) * 1e3 for path, v in lat.items()}
    r50, b50, r99, b99 = p50["ramp"], p50["base"], p99["ramp"], p99["base"]
    note = (f"{len(lat['ramp'])} connections each path, `ssh ... true`, interleaved; "
            f"{KEX} on every client leg")
    return [
        Row(3, "connect + `true` p50 (ms)", r50, b50, r50 / b50, "<= 1.1x", r50 / b50 <= 1.1,
            note, "ms", direct=p50["direct"]),
        Row(3, "connect + `true` p99 (ms)", r99, b99, r99 / b99, "<= 1.3x", r99 / b99 <= 1.3,
            "", "ms", direct=p99["direct"]),
        Row(3, "connect p50, client offers the cert only (ms)", p50["certonly"], b50,
            p50["certonly"] / b50, "(reference)", None,
            f"-o PubkeyAcceptedAlgorithms=ssh-ed25519-cert-v01@openssh.com; p99 "
            f"{p99['certonly']:.0f} ms. By default OpenSSH offers the plain key before its "
            "certificate, and the bastion holds that refusal for its auth_rejection_time "
            "(src/bastion/mod.rs)", "ms", direct=p50["direct"]),
    ]


def make_payload(bench, name, size):
    path = os.path.join(bench.payload_dir, name)
    if not os.path.exists(path) or os.path.getsize(path) != size:
        # urandom-derived: one random MiB repeated (ssh does not compress here anyway).
        block = os.urandom(MiB)
        with open(path, "wb") as f:
            left = size
            while left > 0:
                f.write(block[:min(left, MiB)])
                left -= MiB
        os.chmod(path, 0o644)
    return path


def timed_transfer(cmd, stdin_path=None, stdout_path=None, timeout=900):
    """Seconds cmd took to run, its stdin and stdout from and to the files given."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        run(cmd, timeout=timeout, stdin=stdin, stdout=stdout)
        return time.perf_counter() - t0
    finally:
        for f in (stdin, stdout):
            if hasattr(f, "close"):
                f.close()


def same_bytes(expected, got):
    """'' when file `got` holds exactly the bytes of file `expected`, else what differs."""
    if not os.path.exists(got):
        return "no file"
    if run(["cmp", "-s", expected, got], timeout=300, check=False).returncode == 0:
        return ""
    return f"{os.path.getsize(got)} B that differ from the {os.path.getsize(expected)} B sent"


def s4_bulk(bench, sz, checks):
    size = sz["bulk_bytes"]
    payload = make_payload(bench, "bulk.bin", size)
    local = os.path.join(bench.lab.tmp, "download.bin")
    updst = os.path.join(bench.updir, "up.bin")
    rows, exact, wrong = [], 0, []
    kinds = [
        ("exec download (`cat FILE`)", "down-exec"),
        ("exec upload (`cat > /dev/null` from stdin)", "up-exec"),
        ("scp download", "down-scp"),
        ("scp upload", "up-scp"),
    ]
    for label, kind in kinds:
        mibs = {}
        for path, name in PATHS:
            if path == "ramp":
                bench.sign_alice()
            landed = None  # where the bytes land, when the bench can read them back
            if kind == "down-exec":
                dt = timed_transfer(bench.ssh(path, ["cat", payload]), stdout_path=local)
                landed = local
            elif kind == "up-exec":
                dt = timed_transfer(bench.ssh(path, ["cat > /dev/null"]), stdin_path=payload)
            elif kind == "down-scp":
                dt = timed_transfer(bench.scp(path, payload, local, True))
                landed = local
            else:
                dt = timed_transfer(bench.scp(path, payload, updst, False))
                landed = updst
            if landed:
                differs = same_bytes(payload, landed)
                exact += not differs
                if differs:
                    wrong.append(f"{kind} via {name}: {differs}")
            for f in (local, updst):
                if os.path.exists(f):
                    os.unlink(f)
            mibs[path] = size / MiB / dt
        r = mibs["ramp"] / mibs["base"]
        rows.append(Row(4, f"bulk {label} (MiB/s)", mibs["ramp"], mibs["base"], r, ">= 0.9x",
                        r >= 0.9, f"{size // MiB} MiB, one transfer each path, {CIPHER}",
                        "MiB/s", direct=mibs["direct"]))
    checks.add("bulk: every transfer the bench can read back is byte-exact",
               f"the {size} B sent, on every path (downloads, scp upload)",
               f"{exact}/{exact + len(wrong)} byte-exact" + (f"; {'; '.join(wrong)}" if wrong
                                                             else ""), not wrong and exact)
    return rows


def echo_rtts(cmd, n, timeout=120):
    """Round trip of single bytes through `cat` on a raw, non-echoing remote pty."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        fin, fout = p.stdin.fileno(), p.stdout.fileno()
        deadline = time.monotonic() + timeout

        def read_until(marker):
            buf = b""
            while marker not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or p.poll() is not None:
                    raise RigError(f"no {marker!r} from the remote pty (got {buf[-80:]!r}); "
                                     f"{tail(p.stderr.read() if p.poll() is not None else b'')}")
                r, _, _ = select.select([fout], [], [], min(left, 1.0))
                if r:
                    chunk = os.read(fout, 4096)
                    if not chunk:
                        raise RigError(f"pty closed before {marker!r}")
                    buf += chunk
            return buf
        read_until(b"READY")
        time.sleep(0.2)
        # Drain anything after the marker (a newline).
        while select.select([fout], [], [], 0.1)[0]:
            if not os.read(fout, 4096):
                break
        rtts = []
        alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
        for i in range(n):
            if time.monotonic() > deadline:
                break
            ch = alphabet[i % len(alphabet):i % len(alphabet) + 1]
            t0 = time.perf_counter()
            os.write(fin, ch)
            r, _, _ = select.select([fout], [], [], 5.0)
            if not r:
                raise RigError(f"no echo for keystroke {i} within 5 s")
            got = os.read(fout, 16)
            dt = time.perf_counter() - t0
            if got != ch:
                raise RigError(f"keystroke {i}: sent {ch!r}, got {got!r}")
            rtts.append(dt)
            time.sleep(0.002)  # a very fast typist, not a flood
        return rtts
    finally:
        rig.kill_group(p)
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                f.close()
            except OSError:
                pass


def s5_keystroke(bench, sz, checks):
    bench.sign_alice()
    n = sz["keys_n"]
    remote = ["stty raw -echo; echo READY; exec cat"]
    res = {path: echo_rtts(bench.ssh(path, remote, tty=True), n) for path, _ in PATHS}
    # echo_rtts stops at its deadline; every keystroke must have come back, unchanged.
    checks.add("keystrokes: every one echoed back unchanged",
               f"{n} on every path", ", ".join(f"{NAMES[p]} {len(v)}" for p, v in res.items()),
               all(len(v) == n for v in res.values()))
    p50 = {path: pct(v, 50) * 1e3 for path, v in res.items()}
    p99 = {path: pct(v, 99) * 1e3 for path, v in res.items()}
    r50, b50, r99, b99 = p50["ramp"], p50["base"], p99["ramp"], p99["base"]
    return [
        Row(5, "keystroke echo p50 (ms)", r50, b50, r50 / b50, "(reference)", None,
            f"{n} keystrokes each path, `ssh -tt`, remote `stty raw -echo; cat`", "ms",
            direct=p50["direct"]),
        Row(5, "keystroke echo p99 (ms)", r99, b99, r99 / b99, "adds <= 1 ms",
            r99 - b99 <= 1.0, f"adds {r99 - b99:+.2f} ms at p99 to ProxyJump, "
            f"{r99 - p99['direct']:+.2f} ms to direct", "ms", direct=p99["direct"]),
    ]


def wait_session_ended(ramp, command, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in ramp.sessions():
            if s.get("command") == command and s.get("state") != "live":
                return s
        time.sleep(0.5)
    raise RigError(f"no ended session for {command!r} within {timeout}s")


def settled_du(path, quiet, limit=30):
    """du -sb once it has stopped changing for `quiet` s (bounded), so the flusher's writes
    count."""
    last, same, deadline = du_bytes(path), 0, time.monotonic() + limit
    while same < quiet and time.monotonic() < deadline:
        time.sleep(1)
        now = du_bytes(path)
        same = same + 1 if now == last else 0
        last = now
    return last


def s6_recording(bench, sz, checks):
    """Output throughput recorded (bastion) vs not (ProxyJump, direct), and what the recording costs
    on disk and in memory, on a second, fresh installation (same keys, empty store), so the
    figure does not depend on what the earlier scenarios left in the main store."""
    size = sz["rec_bytes"]
    command = f"head -c {size} /dev/zero"
    out = os.path.join(bench.lab.tmp, "rec.out")
    rec = bench.lab.install("ramp-rec", like=bench.ramp)
    rec.start()
    rows = []
    try:
        bench.sign_alice(rec)
        ramp_cmd = rec.ssh([command])
        data = os.path.join(rec.dir, "data")
        before = settled_du(data, sz["du_quiet_s"])
        rss0 = proc_kib(rec.proc.pid)
        mibs, got = {}, {}
        for path, name in PATHS:
            cmd = ramp_cmd if path == "ramp" else bench.ssh(path, [command])
            dt = timed_transfer(cmd, stdout_path=out)
            got[name] = os.path.getsize(out)
            os.unlink(out)
            mibs[path] = size / MiB / dt
        s = wait_session_ended(rec, command)
        checks.add("recording: every path passed all the output, and the session recorded it",
                   f"{size} B read on every path; session bytes_out {size}",
                   ", ".join(f"{name} {n} B" for name, n in got.items())
                   + f"; bytes_out {s.get('bytes_out')}",
                   all(n == size for n in got.values()) and s.get("bytes_out") == size)
        live = settled_du(data, sz["du_quiet_s"])
        rss1 = proc_kib(rec.proc.pid)
        rec.stop()  # a clean stop: the last flush
        after = du_bytes(data)
        grew = after - before
        r = mibs["ramp"] / mibs["base"]
        rows += [
            Row(6, "output throughput, recorded vs unrecorded (MiB/s)", mibs["ramp"],
                mibs["base"], r, "(reference)", None,
                f"`{command}` (fresh store); 'recording off' = ProxyJump and direct (the "
                f"bastion cannot run unrecorded)", "MiB/s", direct=mibs["direct"]),
            Row(6, "stored bytes / output bytes (fresh store)", f"{grew / size:.2f}x", "-",
                None, "<= 1.1x", grew / size <= 1.1,
                f"du -sb data/ grew {grew / MiB:.0f} MiB ({live - before} B while serving, "
                f"{grew} B after a clean stop) for {size} B output; session bytes_out="
                f"{s.get('bytes_out')}; serve VmRSS {rss0 // 1024} -> {rss1 // 1024} MiB"),
        ]
    finally:
        rec.stop()
    # The main installation after the whole run: what it recorded vs what it holds.
    held = settled_du(os.path.join(bench.ramp.dir, "data"), sz["du_quiet_s"])
    recorded = sum(x.get("bytes_in", 0) + x.get("bytes_out", 0)
                   for x in bench.ramp.sessions())
    status = {f: proc_kib(bench.ramp.proc.pid, f) for f in ("VmRSS", "VmHWM")}
    enough = recorded >= 4 * MiB  # below that, the store's fixed overhead is the figure
    rows.append(Row(6, "main store after the run: on disk / bytes recorded",
                    f"{held / recorded:.2f}x" if enough else "n/a (little recorded)", "-", None,
                    "<= 1.1x", held / recorded <= 1.1 if enough else None,
                    f"data/ is {held / MiB:.0f} MiB for {recorded / MiB:.0f} MiB recorded "
                    f"(bytes in + out of every session); its serve: VmRSS "
                    f"{status['VmRSS'] // 1024} MiB, peak (VmHWM) {status['VmHWM'] // 1024} MiB"))
    return rows


def open_idle(bench, path, n, tag, deadline_s):
    """Opens n sessions that print `tag` and then sit in `cat` (stdin held open); returns
    (clients, established count, wall seconds, failures)."""
    clients, ready, failed = [], set(), 0
    stderr_log = open(os.path.join(bench.lab.tmp, f"idle-{path}.log"), "ab")
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    pending = {}
    i = 0
    while time.monotonic() < deadline and (i < n or pending):
        # At most 16 connections being set up at once: a steady ramp, not a storm.
        while i < n and len(pending) < 16:
            p = bench.lab.spawn(bench.ssh(path, [f"echo {tag}; exec cat"]), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=stderr_log)
            clients.append(p)
            pending[p.stdout.fileno()] = (p, b"")
            i += 1
        # poll, not select: with hundreds of clients the pipe fds pass FD_SETSIZE (1024).
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        for fd, _ev in poller.poll(500):
            p, buf = pending[fd]
            chunk = os.read(fd, 256)
            buf += chunk
            if tag.encode() in buf:
                ready.add(p.pid)
                del pending[fd]
            elif not chunk:
                failed += 1
                del pending[fd]
            else:
                pending[fd] = (p, buf)
        for fd, (p, _) in list(pending.items()):
            if p.poll() is not None:
                failed += 1
                del pending[fd]
    stderr_log.close()
    return clients, len(ready), time.monotonic() - t0, failed + len(pending)


def close_clients(bench, clients):
    for p in clients:
        rig.kill_group(p, grace=1.0)
        for f in (p.stdin, p.stdout):
            try:
                f and f.close()
            except OSError:
                pass
    bench.lab.reap()


def s7_idle(bench, sz, checks):
    n = sz["idle_n"]
    bench.sign_alice()
    out = {}
    # Bastion: serve's VmRSS before/after. Baseline: PSS of the jump sshd's per-connection
    # processes (the ProxyJump host's cost for the same sessions).
    settle = sz["settle_s"]
    time.sleep(settle / 2)
    before = proc_kib(bench.ramp.proc.pid)
    clients, ok, wall, failed = open_idle(bench, "ramp", n, "IDLE-R", 600)
    win = sz["idle_cpu_window"]
    time.sleep(settle)
    after = proc_kib(bench.ramp.proc.pid)
    c0 = cpu_ticks(bench.ramp.proc.pid)
    time.sleep(win)
    cpu = (cpu_ticks(bench.ramp.proc.pid) - c0) / os.sysconf("SC_CLK_TCK") / win * 100
    threads = proc_kib(bench.ramp.proc.pid, "Threads")
    close_clients(bench, clients)
    out["ramp"] = ((after - before) / max(ok, 1), ok, wall, failed, cpu)
    time.sleep(settle)

    jbefore = sum(pss_kib(p) for p in bench.jump_children())
    clients, bok, bwall, bfailed = open_idle(bench, "base", n, "IDLE-B", 600)
    time.sleep(settle)
    kids = bench.jump_children()
    jafter = sum(pss_kib(p) for p in kids)
    jc0 = sum(cpu_ticks(p) for p in kids)
    time.sleep(win)
    jcpu = (sum(cpu_ticks(p) for p in kids) - jc0) / os.sysconf("SC_CLK_TCK") / win * 100
    close_clients(bench, clients)
    out["base"] = ((jafter - jbefore) / max(bok, 1), bok, bwall, bfailed, jcpu)
    rk, bk = out["ramp"][0], out["base"][0]
    note = (f"{n} sessions asked; open: bastion {ok} ({failed} failed, {wall:.0f} s), "
            f"ProxyJump {bok} ({bfailed} failed, {bwall:.0f} s); serve RSS {before // 1024} -> "
            f"{after // 1024} MiB, {threads} threads")
    rows = [
        Row(7, "idle sessions: memory per session (KiB)", rk, bk, rk / bk if bk else None,
            "<= 512 KiB", rk <= 512, note, "KiB"),
        Row(7, f"idle sessions: CPU while {n} sit idle (% of a core)", cpu, jcpu, None,
            "(reference)", None,
            f"{win} s window; bastion = serve, ProxyJump = jump sshd's per-connection processes",
            "%"),
    ]
    checks.add("idle: every session opened", f"{n} on each path",
               f"bastion {ok} ({failed} failed), ProxyJump {bok} ({bfailed} failed)",
               ok == n and bok == n)
    return rows


def s8_active(bench, sz, checks):
    n, count = sz["active_n"], sz["active_seq"]
    bench.sign_alice()
    expect = "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    good, wall = {}, {}
    for path, _ in PATHS:
        outs = [os.path.join(bench.lab.tmp, f"active-{path}-{i}.out") for i in range(n)]
        errs = open(os.path.join(bench.lab.tmp, f"active-{path}.log"), "ab")
        procs = []
        t0 = time.monotonic()
        for o in outs:
            with open(o, "wb") as f:
                procs.append(bench.lab.spawn(bench.ssh(path, ["seq", "1", str(count)]), stdout=f,
                                             stderr=errs))
        deadline = t0 + 300
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rig.kill_group(p)
        wall[path] = time.monotonic() - t0
        errs.close()
        good[path] = 0
        for p, o in zip(procs, outs):
            with open(o, "rb") as f:
                if p.returncode == 0 and f.read() == expect:
                    good[path] += 1
            os.unlink(o)
        bench.lab.reap()
    checks.add(f"active: {n} concurrent `seq 1 {count}` byte-exact",
               f"{n}/{n} on every path, {len(expect)} B each",
               ", ".join(f"{NAMES[path]} {k}/{n}" for path, k in good.items()),
               all(k == n for k in good.values()))
    return [Row(8, f"{n} concurrent `seq 1 {count}`: wall time (s)", wall["ramp"], wall["base"],
                wall["ramp"] / wall["base"], "(reference)", None,
                f"all {n} started at once on each path; {len(expect)} B each", "s",
                direct=wall["direct"])]


def slow_read(cmd, size, rate, result, key, timeout, progress):
    """Reads cmd's stdout at `rate` bytes/s; result[key] = (bytes, seconds, error);
    progress[key] = bytes read so far."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    got, err = 0, None
    t0 = time.monotonic()
    try:
        fd = p.stdout.fileno()
        while time.monotonic() - t0 < timeout:
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(min(ahead, 0.25))
                continue
            chunk = os.read(fd, 64 * 1024)
            if not chunk:
                break
            got += len(chunk)
            progress[key] = got
        if got != size:
            why = tail(p.stderr.read() if p.poll() is not None else b"")
            err = f"read {got} of {size} bytes; {why}"
    except Exception as e:  # noqa: BLE001
        err = str(e)
    finally:
        rig.kill_group(p)
        for f in (p.stdout, p.stderr):
            f.close()
    result[key] = (got, time.monotonic() - t0, err)


def s9_slow_reader(bench, sz, checks):
    size, rate = sz["slow_bytes"], sz["slow_rate"]
    bench.sign_alice()
    command = f"head -c {size} /dev/zero"
    expected = size / rate
    time.sleep(1)
    rss0 = proc_kib(bench.ramp.proc.pid)
    j0 = sum(proc_kib(p) for p in bench.jump_children())
    result, progress = {}, {"ramp": 0, "base": 0}
    # Both paths with a box in the middle at once (halves the wall time); each side's memory
    # is its own process(es). Direct has no middle box whose memory could grow.
    threads = [threading.Thread(target=slow_read, daemon=True,
                                args=(bench.ssh(path, [command]), size, rate, result, path,
                                      expected * 2 + 60, progress)) for path in progress]
    samples = []  # (rss growth KiB bastion, jump, bytes read bastion, jump)
    for t in threads:
        t.start()
    stop_at = time.monotonic() + expected * 2 + 90
    while any(t.is_alive() for t in threads) and time.monotonic() < stop_at:
        samples.append((proc_kib(bench.ramp.proc.pid) - rss0,
                        sum(proc_kib(p) for p in bench.jump_children()) - j0,
                        progress["ramp"], progress["base"]))
        time.sleep(1)
    for t in threads:
        t.join(timeout=10)
    errs = [f"{NAMES[k]}: {result[k][2] if k in result else 'did not finish'}"
            for k in progress if k not in result or result[k][2]]
    checks.add("slow reader: every byte read on both paths", f"{size} B on bastion and ProxyJump",
               "; ".join(errs) or f"{size} B on both", not errs)
    if errs:
        return []  # the memory figures of a reader that failed say nothing

    def slope(i, j):
        """MiB of RSS per MiB read over the second half of the samples."""
        if len(samples) < 4:
            return float("nan")
        a, b = samples[len(samples) // 2], samples[-1]
        moved = (b[j] - a[j]) / MiB
        return ((b[i] - a[i]) / 1024) / moved if moved > 0 else float("nan")
    rmax = max(x[0] for x in samples) / 1024
    jmax = max(x[1] for x in samples) / 1024
    r10 = samples[min(10, len(samples) - 1)][0] / 1024
    return [
        Row(9, f"slow reader ({rate // MiB} MiB/s, {size // MiB} MiB): max RSS growth (MiB)",
            rmax, jmax, None, "flat", None,
            f"{len(samples)} 1-s samples; bastion: serve VmRSS from {rss0 // 1024} MiB "
            f"(+{r10:.0f} MiB after 10 s); ProxyJump: VmRSS sum of the jump sshd's "
            f"per-connection processes (new processes included); read took "
            f"{result['ramp'][1]:.0f} s / {result['base'][1]:.0f} s", "MiB"),
        Row(9, "slow reader: RSS growth per MiB read, 2nd half (MiB/MiB)", slope(0, 2),
            slope(1, 3), None, "~0 (flat)", None,
            "0 = memory flat while the reader crawls; ~1 = memory grows with every byte "
            "passed", ""),
    ]


SCENARIOS = [
    (1, "mint", s1_mint),
    (2, "sign", s2_sign),
    (3, "connect", s3_connect),
    (5, "keystroke", s5_keystroke),
    (8, "active", s8_active),
    (7, "idle", s7_idle),
    (9, "slow reader", s9_slow_reader),
    (4, "bulk", s4_bulk),
    (6, "recording", s6_recording),
]


def print_table(rows, mode, wall):
    headers = ["#", "scenario", "ramp-ca", "baseline", "direct", "ratio", "vs direct", "target",
               "met"]
    table = []
    for r in sorted(rows, key=lambda r: r.scen):
        ratio, vs_direct = ("-" if x is None else f"{x:.2f}x" for x in (r.ratio, r.vs_direct))
        met = "" if r.met is None else ("yes" if r.met else "NO")
        table.append([str(r.scen), r.metric, fmt(r.ramp), fmt(r.base), fmt(r.direct), ratio,
                      vs_direct, r.target, met])
    print()
    print(f"ramp-ca vs OpenSSH ({mode} run, {wall:.0f} s). baseline = ssh-keygen -s (1, 2) or "
          "OpenSSH ProxyJump (3-9), for 10 (the ledger in PostgreSQL) as each row says; direct = ssh straight to the target, nothing in between "
          "(3-6, 8); ratio = ramp-ca / baseline, vs direct = ramp-ca / direct (rates: higher is "
          "better; times and memory: lower is better). Targets are reported, not asserted.")
    print()
    print(rig.markdown_table(headers, table))
    print()
    print("notes:")
    for r in sorted(rows, key=lambda r: r.scen):
        if r.note:
            print(f"  [{r.scen}] {r.metric}: {r.note}")


def print_negotiated(legs):
    print(f"\nnegotiated (one `ssh -v ... true` a path at the start; the hop from the debug log "
          f"of a target sshd): every client pinned to KexAlgorithms {KEX}, Ciphers {CIPHER}\n")
    print(rig.markdown_table(
        ["path", "leg", "key exchange", "cipher (server->client)", "set by"],
        [[name, leg, kex, cipher, "the pins" if pinned else "ramp-ca (upstream.rs)"]
         for name, leg, kex, cipher, pinned in legs]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every scenario tiny (< ~60 s)")
    ap.add_argument("--only", help="comma-separated scenario numbers (e.g. 3,5)")
    ap.add_argument("--binary", metavar="PATH",
                    help="the ramp-ca to measure (default: target/release/ramp-ca, built when "
                         "missing; with --smoke, target/debug/ramp-ca when it is newer)")
    ap.add_argument("--build", action="store_true",
                    help="run `cargo build --release` first even if the binary exists, and "
                         "measure that binary")
    ap.add_argument("--hold", type=int, metavar="SECS",
                    help="after set-up, print the ssh command of each path and wait SECS "
                         "(<= 3600) before the scenarios, to poke at the rig by hand")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/bench must run as root (it creates the readonly account, runs sshd)")
    if args.binary and args.build:
        ap.error("--binary and --build exclude each other")
    mode = "smoke" if args.smoke else "full"
    sz = SIZES[mode]
    only = {int(x) for x in args.only.split(",")} if args.only else None
    rows, results, problem, bench = [], [], None, None
    t_start = time.monotonic()
    rig.raise_on_signals()
    try:
        if args.build:
            binary = rig.build("release")
        else:
            binary = rig.pick_binary(args.binary,
                                     ("debug", "release") if args.smoke else ("release",))
        bench = Bench(binary)
        results.append(rig.Checks(0, "set-up"))
        bench.setup(results[-1])
        log(f"load average at start: {open('/proc/loadavg').read().strip()}")
        if args.hold:
            ramp = bench.ramp
            print("\n".join(f"{name + ':':<11}{' '.join(bench.ssh(path, ['CMD']))}"
                            for path, name in PATHS) + "\n"
                  f"ramp-ca:   {bench.lab.binary} ... --dir {ramp.dir} --server {ramp.api}\n"
                  f"serve pid {ramp.proc.pid}, log {ramp.log}", flush=True)
            time.sleep(min(args.hold, 3600))
        import bench_pg  # noqa: E402 - it imports this module's helpers
        for num, name, fn in SCENARIOS + bench_pg.SCENARIOS:
            if only and num not in only:
                continue
            log(f"scenario {num}: {name}")
            checks = rig.Checks(num, name)
            results.append(checks)
            t0 = time.monotonic()
            try:
                rows.extend(fn(bench, sz, checks))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a scenario that errors is a failed check
                rows.append(Row(num, name, "ERROR", "", None, "", None, "see the checks"))
                checks.add("scenario ran to the end", "no error", f"ERROR: {e}"[:600], False)
            log(f"scenario {num}: {name} done in {time.monotonic() - t0:.1f} s")
            if not bench.ramp.alive():
                raise RigError(f"ramp-ca serve died: {rig.read_tail(bench.ramp.log)}")
    except KeyboardInterrupt:
        problem = "interrupted"
        log("interrupted; tearing down")
    except Exception as e:  # noqa: BLE001
        problem = f"set-up or run failed: {e}"
        log(problem)
    finally:
        if bench:
            bench.lab.teardown()
    if rows:
        print_table(rows, mode, time.monotonic() - t_start)
    if bench and bench.legs:
        print_negotiated(bench.legs)
    if any(c.rows for c in results):
        print("\nchecks (correctness: a FAIL fails the run)\n")
        rig.print_checks(sorted((c for c in results if c.rows), key=lambda c: c.num))
    print(f"\nmachine: {os.cpu_count()} cores, {platform.machine()}, "
          f"{platform.release()}; {ssh_version()}")
    print(f"binary: {getattr(bench and bench.lab, 'provenance', 'n/a')}")
    bad, line = rig.verdict(results, problem)
    print(f"\n{line}")
    sys.exit(1 if bad else 0)


def ssh_version():
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip()


if __name__ == "__main__":
    main()
