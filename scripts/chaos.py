#!/usr/bin/env python3
"""Fault injection against a real `ramp-ca serve` and real OpenSSH sshd targets, on loopback.

Each scenario gets its own ramp-ca installation, target sshd and serve in one temp dir
(removed at the end, also on SIGINT/SIGTERM), injects one kind of fault, and checks what
the daemon left behind. The run prints one table (scenario, expected, observed, PASS|FAIL)
and exits 1 when any check fails or a scenario errors, 0 when all pass.

  1  kill -9 during signing           4  target down, silent, or with another host key
  2  kill -9 mid-session              5  restart with active grants and revocations
  3  recording disk full (tmpfs)      6  garbage on the bastion and API ports
  with the ledger in PostgreSQL (scripts/chaos_pg.py):
  7  the database unreachable         9  the database crashed and restarted under load
  8  the database slow                10 one of two nodes killed

    scripts/chaos                 # everything, about 2 min on 2 cores
    scripts/chaos --smoke         # the same (every scenario is short already; CI's name)
    scripts/chaos --only 2,4      # some scenarios only
    scripts/chaos --keep          # keep the temp dir (logs, stores) for a post-mortem

Needs root (creates the `readonly` account, runs sshd, mounts a tmpfs), python3 (stdlib
only) and OpenSSH client and server (`scripts/install-deps`). CHAOS.md has the last run.
"""

import argparse
import base64
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rig  # noqa: E402 - the path above finds it
from rig import Checks, MiB, RigError, log, run, tail, wait_for  # noqa: E402

rig.TAG = "chaos"

# A session that counts, one line every 50 ms, for at most 50 s (scenario 2).
COUNTER = "for i in $(seq 1 1000); do echo line $i; sleep 0.05; done"
# Every ssh through the bastion that should work, and every refusal or cut-off, must come
# within this (seconds). CI runs this against the debug build on a loaded 2-core machine,
# where a login that takes 0.3 s when idle can take several seconds; the limit catches hangs,
# not slowness.
SESSION_LIMIT = 15.0
# Free space the daemon keeps on the recording disk (serve's --min-free-mib default).
MIN_FREE_MIB = 64
# Scenario 6: the clients' source address, and another loopback address for a client that a
# flood from SAME must not shut out (serve listens on 127.0.0.1; Linux routes all of 127/8
# locally, so `ssh -b OTHER` reaches it from OTHER).
SAME, OTHER = "127.0.0.1", "127.0.0.3"
# What the bastion tells a client it turns away while SAME has too many connections not logged
# in (src/limits.rs `Refusal`, sent before its version line by src/bastion/mod.rs).
FLOOD_REASON = f"ramp-ca: too many connections not logged in from {SAME}"


def retry(check, timeout):
    """check() -> (ok, seen) again until ok or timeout; the last (ok, seen)."""
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = check()
        if ok or time.monotonic() >= deadline:
            return ok, seen
        time.sleep(0.5)


def oneline(text, n=300):
    """text on one line, its end kept when it is long (the end of stderr says why)."""
    text = " ".join(tail(text, 10 * n).split())
    return text if len(text) <= n else "..." + text[-n:]


def timed(cmd, timeout):
    """Runs cmd; (exit code or None on timeout, seconds, stdout, stderr)."""
    t0 = time.monotonic()
    try:
        out = run(cmd, timeout=timeout, check=False)
    except RigError:
        return None, time.monotonic() - t0, b"", b"(timed out)"
    return out.returncode, time.monotonic() - t0, out.stdout, out.stderr


def session_works(ramp, target="db-1", identity=None, opts=()):
    """(ok, what was seen): `echo` through the bastion answers within SESSION_LIMIT."""
    token = f"chaos-{os.getpid()}-{time.monotonic_ns()}"
    rc, secs, out, err = timed(ramp.ssh(["echo", token], target=target, identity=identity,
                                        opts=opts), SESSION_LIMIT + 10)
    ok = rc == 0 and out.decode(errors="replace").strip() == token and secs <= SESSION_LIMIT
    seen = f"ssh exit {rc} in {secs:.1f} s"
    if rc != 0:
        seen += f": {oneline(err)}"
    return ok, seen


def still_serving(ramp, opts=()):
    """(ok, what was seen): serve alive, `ramp-ca grants` works, a bastion session works (ssh
    with `opts`)."""
    if not ramp.alive():
        return False, f"serve exited {ramp.proc.returncode}: {rig.read_tail(ramp.log, 300)}"
    grants = ramp.cli("grants", "--json", check=False, timeout=30)
    sess_ok, sess = session_works(ramp, opts=opts)
    ok = grants.returncode == 0 and sess_ok and ramp.alive()
    return ok, (f"alive; grants exit {grants.returncode}"
                f"{'' if grants.returncode == 0 else ': ' + oneline(grants.stderr)}; {sess}")


def find_session(ramp, command, states, timeout=10):
    """The newest recorded session whose command contains `command`, once its state is one of
    `states` (within timeout); else the newest one seen (or None)."""
    last = [None]

    def look():
        found = [s for s in ramp.sessions() if command in (s.get("command") or "")]
        if found:
            last[0] = max(found, key=lambda s: s["start"])
            return last[0] if last[0]["state"] in states else None
        return None
    return wait_for(look, timeout, 0.25) or last[0]


def recorded_output(ramp, session):
    """A session's recorded output, from `sessions export --format json`."""
    export = json.loads(ramp.cli("sessions", "export", session, "--format", "json",
                                 user="bob").stdout)
    return "".join(e["text"] for e in export["events"] if e["kind"] == "output")


def audit_verify(ramp):
    out = ramp.cli("audit", "verify", user="bob", check=False)
    return out.returncode == 0, f"exit {out.returncode}: {oneline(out.stdout + out.stderr)}"


def cert_serial_and_id(line):
    """Serial and key id of an OpenSSH Ed25519 certificate line, read from the blob itself."""
    blob = base64.b64decode(line.split()[1])
    off = 0

    def string():
        nonlocal off
        (n,) = struct.unpack_from(">I", blob, off)
        off += 4 + n
        return blob[off - n:off]
    kind = string()
    if not kind.startswith(b"ssh-ed25519-cert-v01"):
        raise RigError(f"not an Ed25519 certificate: {kind!r}")
    string()  # nonce
    string()  # public key
    (serial,) = struct.unpack_from(">Q", blob, off)
    off += 8 + 4  # serial, type
    return serial, string().decode()


def start_with_db1(lab, name, *extra):
    """An installation with a target sshd as db-1, serving."""
    ramp = lab.install(name)
    target = lab.target(ramp, "db-1")
    ramp.set_host("db-1", f"127.0.0.1:{target.port}")
    ramp.start(*extra)
    return ramp, target


def stream_reader(p, state):
    """Reads p's stdout to EOF, counting: state['bytes'], state['last'] (the last `line N`)."""
    pending = b""
    for chunk in iter(lambda: p.stdout.read1(65536), b""):
        state["bytes"] += len(chunk)
        pending = (pending + chunk)[-4096:]
        nums = re.findall(rb"line (\d+)\n", pending)
        if nums:
            state["last"] = int(nums[-1])
            pending = pending[pending.rfind(b"\n") + 1:]


def watch(lab, cmd, name):
    """Spawns cmd, its output counted by a reader thread, its stderr in a file; (process,
    state)."""
    err = os.path.join(lab.tmp, f"{name}.stderr")
    with open(err, "wb") as f:
        p = lab.spawn(cmd, stdout=subprocess.PIPE, stderr=f)
    state = {"bytes": 0, "last": 0, "stderr": err}
    state["reader"] = threading.Thread(target=stream_reader, args=(p, state), daemon=True)
    state["reader"].start()
    return p, state


def finish(p, state, timeout):
    """Waits for a watched client (killing it after timeout); (exit code or None, stderr)."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rig.kill_group(p)
        rc = None
    state["reader"].join(timeout=5)
    p.stdout.close()
    with open(state["stderr"], "rb") as f:
        return rc, f.read()


# ---- 1: kill -9 during signing ---------------------------------------------------------------
def s1_kill_signing(lab, c):
    workers, per_worker = 8, 150
    ramp, _ = start_with_db1(lab, "s1")
    keys = [ramp.key_copy(f"w{w}") for w in range(workers)]
    got, lock, stop = [], threading.Lock(), threading.Event()
    cmd_tail = ["sign", "--contract", "prod-db", "--step", "observe", "--reason", "chaos",
                "--json", "--dir", ramp.dir, "--server", ramp.api]

    def loop(key):
        deadline = time.monotonic() + 60
        for _ in range(per_worker):
            if stop.is_set() or time.monotonic() > deadline:
                return
            rec = {"t0": time.monotonic(), "rc": None}
            try:
                out = run([lab.binary, *cmd_tail, "--key", key], timeout=30, check=False,
                          env=lab.env)
                rec["rc"] = out.returncode
                if out.returncode == 0:
                    answer = json.loads(out.stdout)
                    rec["serial"], rec["key_id"] = cert_serial_and_id(answer["certificate"])
                    rec["json_serial"], rec["grant"] = answer["serial"], answer["grant"]["id"]
            except Exception as e:  # noqa: BLE001 - kept as evidence, not raised in a thread
                rec["error"] = f"{type(e).__name__}: {e}"
                rec["rc"] = "unreadable" if rec["rc"] == 0 else rec["rc"]
            rec["t1"] = time.monotonic()
            if rec["rc"] != 0:
                time.sleep(0.05)  # the daemon is down: do not spin
            with lock:
                got.append(rec)

    def received(since=0.0):
        with lock:
            return sum(r["rc"] == 0 and r["t0"] > since for r in got)

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in keys]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: received() >= 40, 30)
        t_kill = time.monotonic()
        ramp.kill9()
        log(f"  serve killed after {received()} certificates")
        time.sleep(0.5)
        ramp.start()
        t_ready = time.monotonic()
        wait_for(lambda: received(since=t_kill) >= 24, 30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)

    ok = [r for r in got if r["rc"] == 0]
    # Answered before the kill, or asked after it (only the restarted daemon can answer).
    before = [r for r in ok if r["t1"] < t_kill]
    after = [r for r in ok if r["t0"] > t_kill]
    c.add("certificates received around the kill", "some before the kill, some after",
          f"{len(before)} before, {len(after)} after (restart took {t_ready - t_kill:.1f} s), "
          f"{len(ok) - len(before) - len(after)} asked before and answered after; "
          f"{len(got) - len(ok)} sign calls failed", before and after)

    serials = [r["serial"] for r in ok]
    dupes = sorted({s for s in serials if serials.count(s) > 1})
    mismatch = [r for r in ok if r["serial"] != r["json_serial"]
                or not r["key_id"].endswith(":" + r["grant"])]
    unreadable = [r["error"] for r in got if r["rc"] == "unreadable"]
    c.add("every received certificate has a distinct serial",
          "no serial twice; blob serial and key id match the answer",
          f"{len(serials)} certificates, duplicate serials {dupes or 'none'}, "
          f"{len(mismatch)} disagreeing with their answer, {len(unreadable)} answers unreadable"
          + (f" ({unreadable[0]})" if unreadable else ""),
          not dupes and not mismatch and not unreadable)

    grants = {g["id"]: g for g in json.loads(ramp.cli("grants", "--all", "--json",
                                                      user="carol").stdout)}
    issued = {}
    for rec in json.loads(ramp.cli("audit", "list", "--json", user="bob").stdout):
        if rec["action"] == "issue":
            issued[int(rec["subject"])] = rec["detail"].get("grant")
    missing = [r["serial"] for r in ok
               if r["grant"] not in grants or issued.get(r["serial"]) != r["grant"]]
    c.add("every received certificate is in the ledger",
          "its grant in `grants --all --json`, an `issue` audit record for its serial",
          f"{len(ok) - len(missing)}/{len(ok)} found"
          + (f"; missing serials {missing[:10]}" if missing else ""), ok and not missing)

    c.outcome("`ramp-ca audit verify` after the crash", "exit 0", audit_verify(ramp))

    hi_before = max((r["serial"] for r in before), default=None)
    lo_after = min((r["serial"] for r in after), default=None)
    c.add("serials after the restart are higher", "min after > max before",
          f"max before {hi_before}, min after {lo_after}",
          hi_before is not None and lo_after is not None and lo_after > hi_before)


# ---- 2: kill -9 mid-session ------------------------------------------------------------------
def s2_kill_session(lab, c):
    ramp, _ = start_with_db1(lab, "s2")
    ramp.sign(reason="chaos")
    p, seen = watch(lab, ramp.ssh([COUNTER]), "s2-counter")
    wait_for(lambda: seen["last"] >= 1, 15)
    t_first = time.monotonic()
    wait_for(lambda: p.poll() is not None, 3.0)
    if p.poll() is not None or seen["last"] < 1:
        rc, err = finish(p, seen, 5)
        raise RigError(f"the counter session did not run: exit {rc}, saw line {seen['last']}: "
                       f"{oneline(err)}")
    ramp.kill9()
    rc, err = finish(p, seen, 10)
    last_seen = seen["last"]
    log(f"  serve killed {time.monotonic() - t_first:.1f} s into the session; the client saw "
        f"line {last_seen}, exit {rc}")
    ramp.start()

    s = find_session(ramp, "echo line", ("interrupted",))
    c.add("the session is marked interrupted after the restart", "state interrupted",
          f"state {s and s['state']}, id {s and s['id']}", s and s["state"] == "interrupted")
    if not s:
        return
    text = recorded_output(ramp, s["id"])
    nums = [int(n) for n in re.findall(r"line (\d+)\n", text)]
    last_rec = nums[-1] if nums else 0
    in_order = nums == list(range(1, len(nums) + 1))
    c.add("the recording reaches the last second the client saw",
          f"lines 1..N in order, N >= {last_seen} - 20",
          f"client saw line {last_seen}, recording has {len(nums)} lines up to {last_rec}"
          f"{'' if in_order else ', NOT in order or with gaps'}",
          in_order and last_seen >= 1 and last_rec >= last_seen - 20)
    c.outcome("the daemon serves after the restart", "alive, grants, session",
              still_serving(ramp))


# ---- 3: recording disk full ------------------------------------------------------------------
def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave):
    """Creates path/filler so that `leave` bytes stay free; returns the free bytes after."""
    filler = os.path.join(path, "chaos-filler")
    size = max(0, free_bytes(path) - leave)
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return free_bytes(path)


def unfill(path):
    try:
        os.unlink(os.path.join(path, "chaos-filler"))
    except FileNotFoundError:
        pass


def mount_tmpfs(lab, data, size_mib):
    """Mounts a tmpfs of size_mib on data, keeping what was there; unmounted at tear-down."""
    saved = data + ".init"
    shutil.copytree(data, saved)
    run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "chaos-tmpfs", data],
        timeout=30)

    def unmount():
        if os.path.ismount(data):
            if lab.keep:  # the store as the run left it, for a post-mortem
                unfill(data)
                shutil.copytree(data, data + ".kept", dirs_exist_ok=True)
            if run(["umount", data], timeout=30, check=False).returncode != 0:
                run(["umount", "-l", data], timeout=30, check=False)
    lab.cleanups.append(unmount)
    shutil.copytree(saved, data, dirs_exist_ok=True)
    return unmount


def s3_disk_full(lab, c):
    ramp = lab.install("s3")
    target = lab.target(ramp, "db-1")
    ramp.set_host("db-1", f"127.0.0.1:{target.port}")
    data = os.path.join(ramp.dir, "data")
    unmount = mount_tmpfs(lab, data, 192)
    helptext = run([lab.binary, "serve", "--help"], timeout=30).stdout.decode()
    flag = ["--min-free-mib", str(MIN_FREE_MIB)] if "--min-free-mib" in helptext else []
    log(f"  data on a 192 MiB tmpfs; serve {' '.join(flag) or '(no --min-free-mib flag)'}")
    try:
        ramp.start(*flag)
        ramp.sign(reason="chaos")
        ok, seen = session_works(ramp)
        if not ok:
            raise RigError(f"no session even before the disk filled: {seen}")
        disk = re.compile(rb"disk|recording", re.I)

        left = fill(data, MIN_FREE_MIB // 2 * MiB)
        rc, secs, _out, err = timed(ramp.ssh(["echo", "should-not-run"]), 30)
        c.add("a new session on a full disk is refused",
              f"exit != 0 within {SESSION_LIMIT:.0f} s, stderr names the disk/recording",
              f"{left >> 20} MiB free: exit {rc} in {secs:.1f} s: {oneline(err) or '(no stderr)'}",
              rc not in (0, None) and secs <= SESSION_LIMIT and disk.search(err))
        unfill(data)

        # About 640 KiB/s for at most 60 s: the session must not fill the disk by itself.
        stream = ("i=0; while [ $i -lt 600 ]; do head -c 65536 /dev/zero | tr '\\0' x; "
                  "echo; echo line $i; i=$((i+1)); sleep 0.1; done")
        p, seen = watch(lab, ramp.ssh([stream]), "s3-stream")
        wait_for(lambda: seen["bytes"] >= 2 * MiB or p.poll() is not None, 20)
        if p.poll() is not None:
            rc, err = finish(p, seen, 5)
            raise RigError(f"the streaming session ended early: exit {rc}: {oneline(err)}")
        left = fill(data, MIN_FREE_MIB // 2 * MiB)
        t_fill = time.monotonic()
        got_at_fill = seen["bytes"]
        limit = SESSION_LIMIT
        rc, err = finish(p, seen, limit + 10)
        secs = time.monotonic() - t_fill
        c.add("a live session is ended when the disk fills",
              f"client exit != 0 within {limit:.0f} s, stderr names the recording/disk",
              f"{left >> 20} MiB free: exit {rc} after {secs:.1f} s "
              f"({(seen['bytes'] - got_at_fill) >> 10} KiB more output): "
              f"{oneline(err) or '(no stderr)'}",
              rc not in (0, None) and secs <= limit and disk.search(err))
        unfill(data)

        c.outcome("`ramp-ca audit verify` after the disk filled", "exit 0", audit_verify(ramp))
        c.outcome("new sessions work once space is freed", "exit 0",
                  retry(lambda: session_works(ramp), 10))
        s = find_session(ramp, "head -c 65536", ("ended", "interrupted"))
        c.add("the cut session is listed, ended, with its bytes",
              "state ended, bytes_out > 0",
              f"state {s and s['state']}, bytes_out {s and s['bytes_out']}, "
              f"end_reason {s and s.get('end_reason')!r}",
              s and s["state"] == "ended" and s["bytes_out"] > 0)
        if s:
            recorded = len(recorded_output(ramp, s["id"]).encode())
            c.add("its recording holds all the output the client got",
                  "recorded bytes = bytes_out >= bytes the client read",
                  f"recorded {recorded} B, bytes_out {s['bytes_out']}, client read "
                  f"{seen['bytes']} B", recorded == s["bytes_out"] >= seen["bytes"])
        t0 = time.monotonic()
        code = ramp.stop()
        c.add("serve stops cleanly on SIGTERM", "exit 0",
              f"exit {code} after {time.monotonic() - t0:.1f} s", code == 0)
    finally:
        ramp.kill9()
        unmount()
        lab.cleanups.remove(unmount)


# ---- 4: target down, silent, or with another host key ----------------------------------------
def connect_timeout():
    """The bastion's CONNECT_TIMEOUT in seconds, read from its source."""
    path = os.path.join(rig.ROOT, "src", "bastion", "upstream.rs")
    with open(path) as f:
        m = re.search(r"CONNECT_TIMEOUT: Duration = Duration::from_secs\((\d+)\)", f.read())
    if not m:
        raise RigError(f"no `CONNECT_TIMEOUT ... from_secs(N)` in {path}")
    return int(m.group(1))


def s4_targets(lab, c):
    timeout = connect_timeout()
    ramp = lab.install("s4")
    good = lab.target(ramp, "db-1")
    slow = lab.target(ramp, "db-slow")
    stranger = lab.keygen("s4-stranger/id_ed25519")
    ramp.set_host("db-1", f"127.0.0.1:{good.port}")
    ramp.set_host("db-down", f"127.0.0.1:{rig.free_port()}")  # nothing listens there
    ramp.set_host("db-slow", f"127.0.0.1:{slow.port}")
    with open(stranger + ".pub") as f:
        pinned = " ".join(f.read().split()[:2])
    ramp.set_host("db-pinned", f"127.0.0.1:{good.port}", host_key=pinned)
    ramp.start()
    ramp.sign(reason="chaos")
    # Stopped, its listening socket still completes TCP handshakes but nobody answers.
    slow.proc.send_signal(signal.SIGSTOP)
    try:
        cases = [
            ("down", "a closed port", "db-down", SESSION_LIMIT, "cannot reach"),
            ("slow", "a SIGSTOPped sshd", "db-slow", timeout + SESSION_LIMIT, "no answer within"),
            ("pinned", "a host key other than the pinned one", "db-pinned", SESSION_LIMIT,
             "host key"),
        ]
        for tag, what, host, limit, phrase in cases:
            rc, secs, _out, err = timed(ramp.ssh(["echo", "should-not-run"], target=host),
                                        limit + 30)
            text = err.decode(errors="replace")
            named = host in text and phrase in text.lower()
            c.add(f"{tag}: {host} is {what}",
                  f"exit != 0 within {limit:.0f} s naming {host}, \"{phrase}\"",
                  f"exit {rc} in {secs:.1f} s: {oneline(err) or '(no stderr)'}",
                  rc not in (0, None) and secs <= limit and named)
            c.outcome(f"{tag}: the daemon serves afterwards", "alive, grants, session",
                      still_serving(ramp))
    finally:
        slow.proc.send_signal(signal.SIGCONT)


# ---- 5: restart with active grants and revocations -------------------------------------------
def krl_parts(blob):
    """(krl_version, generated, the rest: comment and sections) of an OpenSSH KRL."""
    if blob[:8] != b"SSHKRL\n\0":
        raise RigError(f"not a KRL: {blob[:16]!r}")
    version, generated = struct.unpack_from(">QQ", blob, 12)
    return version, generated, blob[28:]


def krl_diff(a, b):
    """How KRL b differs from KRL a, in words."""
    (va, ga, rest_a), (vb, gb, rest_b) = krl_parts(a), krl_parts(b)
    if a == b:
        return "identical"
    return (f"{len(a)} -> {len(b)} B: krl_version {va} -> {vb}, generated {ga} -> {gb}, "
            f"comment and sections {'identical' if rest_a == rest_b else 'DIFFER'}")


def s5_restart_revocations(lab, c):
    ramp, _ = start_with_db1(lab, "s5")
    kept_key, revoked_key = ramp.key_copy("kept"), ramp.key_copy("revoked")
    kept = ramp.sign(key=kept_key, reason="chaos")
    revoked = ramp.sign(key=revoked_key, reason="chaos")
    # A second `sign` for a step alice holds mints from the grant she has: two certificates of
    # one grant, one of them revoked by its serial.
    grant = kept["grant"]["id"]
    if revoked["grant"]["id"] != grant:
        raise RigError(f"the second sign filed another grant: {revoked['grant']['id']} != {grant}")
    ramp.cli("revoke", "--serial", str(revoked["serial"]), "--reason", "chaos", user="carol")
    krl_file = os.path.join(lab.tmp, "s5.krl")

    def grants():
        out = ramp.cli("grants", "--all", "--json", user="carol").stdout
        return {g["id"]: g["state"] for g in json.loads(out)}

    def krl():
        ramp.cli("krl", "--out", krl_file, user="carol")
        with open(krl_file, "rb") as f:
            return f.read()

    grants_before, krl_first, krl_before = grants(), krl(), krl()
    mine = {grant: "active"}
    if {g: grants_before.get(g) for g in mine} != mine:
        raise RigError(f"grants before the restart are not as set up: {grants_before}")
    t0 = time.monotonic()
    code = ramp.stop()
    c.add("serve stops on SIGTERM", "exit 0", f"exit {code} after {time.monotonic() - t0:.1f} s",
          code == 0)
    ramp.start()
    grants_after, krl_after = grants(), krl()
    c.add("grants keep their state across the restart", "the same id -> state map",
          f"{len(grants_after)} grants: {grants_after}"
          + ("" if grants_after == grants_before else f"; before: {grants_before}"),
          grants_after == grants_before)
    c.add("`ramp-ca krl` is byte-identical after the restart", "the same bytes",
          f"{krl_diff(krl_before, krl_after)} (two fetches before the restart: "
          f"{krl_diff(krl_first, krl_before)})", krl_before == krl_after)
    # What the KRL says, asked of OpenSSH: `ssh-keygen -Q` exits 1 for a revoked key.
    query = {name: run(["ssh-keygen", "-Q", "-f", krl_file, key + "-cert.pub"], timeout=30,
                       check=False).returncode for name, key in (("kept", kept_key),
                                                                 ("revoked", revoked_key))}
    same = krl_parts(krl_before)[2] == krl_parts(krl_after)[2]
    c.add("the KRL still revokes exactly the revoked certificate",
          "sections identical; ssh-keygen -Q: revoked 1, kept 0",
          f"sections {'identical' if same else 'DIFFER'}; ssh-keygen -Q exit: "
          f"revoked {query['revoked']}, kept {query['kept']}",
          same and query == {"revoked": 1, "kept": 0})
    rc, secs, _out, err = timed(ramp.ssh(["echo", "should-not-run"], identity=revoked_key), 30)
    c.add("the bastion refuses the revoked certificate", "exit != 0",
          f"exit {rc} in {secs:.1f} s: {oneline(err) or '(no stderr)'}", rc not in (0, None))
    c.outcome("the bastion accepts the other certificate", "exit 0",
              session_works(ramp, identity=kept_key))


# ---- 6: garbage on both ports ----------------------------------------------------------------
def poke(port, payload, read_first=False, timeout=10.0):
    """Sends payload (bytes, or a list of parts) to 127.0.0.1:port, half-closes, and reads
    until EOF, for at most `timeout` seconds; (bytes sent, bytes received, how it ended)."""
    parts = payload if isinstance(payload, list) else [payload]
    sent, reply, ending = 0, b"", "closed by the daemon"
    deadline = time.monotonic() + timeout

    def left():
        return max(0.0, deadline - time.monotonic())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.setblocking(False)
            if read_first and select.select([s], [], [], left())[0]:
                reply += s.recv(4096)  # the SSH banner first, as a client would
            for part in parts:
                view = memoryview(part)
                while view and left() > 0:
                    readable, writable, _ = select.select([s], [s], [], left())
                    if readable:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise EOFError
                        reply += chunk
                    if writable:
                        n = s.send(view[:MiB])
                        sent += n
                        view = view[n:]
                if view:
                    ending = f"the daemon stopped reading (still open after {timeout:.0f} s)"
                    break
            else:
                s.shutdown(socket.SHUT_WR)
                while True:
                    if not select.select([s], [], [], left())[0]:
                        ending = f"still open after {timeout:.0f} s"
                        break
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
    except EOFError:
        ending = "closed by the daemon while we sent"
    except (ConnectionResetError, BrokenPipeError) as e:
        ending = f"reset by the daemon ({e.strerror})"
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # shutdown() after the daemon had gone
            ending = "closed by the daemon"
        else:
            ending = f"error: {e}"
    return sent, reply, ending


def said(sent, reply, ending):
    """One poke in words: what went, the first line that came back, how it ended."""
    first = reply.split(b"\n", 1)[0][:60].decode(errors="replace").strip()
    return f"sent {sent} B, got {len(reply)} B {first!r}, {ending}"


def still_open(sock):
    """Whether the daemon has left a silent connection open: what it sent (a banner, a
    refusal) is read and dropped, up to EOF or a reset."""
    sock.setblocking(False)
    try:
        for _ in range(64):
            if not sock.recv(65536):
                return False
        return True
    except BlockingIOError:
        return True
    except OSError:
        return False


def s6_garbage(lab, c):
    ramp, _ = start_with_db1(lab, "s6")
    ramp.sign(reason="chaos")
    bport, aport = ramp.bport, int(ramp.api.rsplit(":", 1)[1])
    ten = 10 * MiB

    def lengths():
        """A good banner, then one packet of each absurd length, each on its own connection."""
        seen = []
        for n in (0xFFFFFFFF, 0x7FFFFFFF, 0, 1, 35001, 256 * MiB):
            sent, reply, ending = poke(bport, [b"SSH-2.0-chaos_1.0\r\n", struct.pack(">I", n)
                                               + os.urandom(4096)], read_first=True)
            seen.append(f"{n:#x}: {ending}")
        return f"got the banner and KEXINIT ({len(reply)} B); " + "; ".join(seen)

    attacks = [
        ("bastion", "random bytes (64 KiB)", lambda: said(*poke(bport, os.urandom(65536)))),
        ("bastion", "a truncated SSH banner", lambda: said(*poke(bport, b"SSH-2.0-Open"))),
        ("bastion", "a 10 MiB line", lambda: said(*poke(bport, [b"A" * ten + b"\r\n"]))),
        ("bastion", "a banner, then absurd packet lengths", lengths),
        ("api", "random bytes (64 KiB)", lambda: said(*poke(aport, os.urandom(65536)))),
        ("api", "a truncated HTTP request",
         lambda: said(*poke(aport, b"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   b"Content-Le"))),
        ("api", "a 10 MiB header",
         lambda: said(*poke(aport, [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"X-Chaos: ", b"a" * ten, b"\r\n\r\n"]))),
        ("api", "a 10 MiB body",
         lambda: said(*poke(aport, [b"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n" % ten, b"{" * ten]))),
    ]
    for port, what, attack in attacks:
        seen = attack()
        ok, health = still_serving(ramp)
        c.add(f"{port}: {what}", "then alive, grants, session", f"{seen}; then: {health}", ok)
        if not ramp.alive():
            return

    # 300 connections that say nothing, checked while they are held open: first from another
    # loopback address than the client's (an attacker elsewhere), then from the client's own.
    for source in ("127.0.0.2", SAME):
        flood, opened = [], 0
        try:
            for _ in range(300):
                try:
                    flood.append(socket.create_connection(("127.0.0.1", bport), timeout=5,
                                                          source_address=(source, 0)))
                    opened += 1
                except OSError:
                    break
            time.sleep(1)
            held = sum(still_open(s) for s in flood)
            flooded = f"{opened} connected, {held} still open after 1 s"
            if source != SAME:
                ok, health = still_serving(ramp)
                c.add(f"bastion: 300 silent connections from another address ({source})",
                      f"while open: alive, grants, a session from {SAME}",
                      f"{flooded}; then: {health}", ok and opened == 300)
                continue
            # The bastion caps connections not logged in per source (like OpenSSH's
            # PerSourceMaxStartups), so while these are held a login from their address is
            # refused by design; other addresses must not notice.
            ok, health = still_serving(ramp, opts=("-b", OTHER))
            c.add(f"bastion: 300 silent connections from the client's address ({SAME})",
                  f"while open: alive, grants, a session from {OTHER}",
                  f"{flooded}; then: {health}", ok and opened == 300)
            c.outcome(f"bastion: meanwhile a login from {SAME}",
                      f"refused; `ssh -v` shows \"{FLOOD_REASON}\"", refused_with_reason(ramp))
        finally:
            for s in flood:
                s.close()
    c.outcome(f"bastion: a login from {SAME} once the silent connections closed",
              f"alive, grants, session within {SESSION_LIMIT:.0f} s",
              retry(lambda: still_serving(ramp), SESSION_LIMIT))


def refused_with_reason(ramp):
    """(ok, what was seen): ssh from SAME is refused, and `ssh -v` shows the bastion's one-line
    reason (OpenSSH logs lines before the version line at debug level only, so plain ssh
    prints none; what it does print is shown too)."""
    plain_rc, _secs, _out, plain_err = timed(ramp.ssh(["echo", "should-not-run"]), 30)
    rc, secs, _out, err = timed(ramp.ssh(["echo", "should-not-run"], opts=("-v",)), 30)
    text = err.decode(errors="replace")
    shown = [line for line in text.splitlines() if "ramp-ca:" in line]
    seen = (f"exit {rc} in {secs:.1f} s; ssh -v: "
            f"{oneline(shown[0]) if shown else 'no ramp-ca line, ends ' + oneline(err, 120)}; "
            f"plain ssh: exit {plain_rc}: {oneline(plain_err) or '(no stderr)'}")
    return rc not in (0, None) and plain_rc not in (0, None) and FLOOD_REASON in text, seen


SCENARIOS = [
    (1, "kill -9 during signing", s1_kill_signing),
    (2, "kill -9 mid-session", s2_kill_session),
    (3, "recording disk full", s3_disk_full),
    (4, "target down / slow / changed host key", s4_targets),
    (5, "restart with grants and revocations", s5_restart_revocations),
    (6, "garbage on both ports", s6_garbage),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated scenario numbers (e.g. 2,4)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--smoke", action="store_true",
                    help="accepted for symmetry with scripts/bench: every scenario is short")
    ap.add_argument("--binary", metavar="PATH",
                    help="the ramp-ca to test (default: the newer of target/debug/ramp-ca and "
                         "target/release/ramp-ca; `cargo build` when there is neither)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/chaos must run as root (it creates the readonly account, runs sshd, "
                 "mounts a tmpfs)")
    import chaos_pg  # noqa: E402 - it imports this module's helpers
    scenarios = SCENARIOS + chaos_pg.SCENARIOS
    known = {num for num, _, _ in scenarios}
    try:
        only = {int(x) for x in args.only.split(",")} if args.only else known
    except ValueError:
        ap.error(f"--only takes scenario numbers, e.g. 2,4 (known: {sorted(known)})")
    if only - known:
        ap.error(f"no scenario {sorted(only - known)} (known: {sorted(known)})")

    rig.raise_on_signals()
    results, problem = [], None
    t_start = time.monotonic()
    lab = None
    try:
        lab = rig.Rig(rig.pick_binary(args.binary), prefix="ramp-chaos-", keep=args.keep)
        lab.setup()
        log(f"binary under test: {lab.provenance}")
        log(f"temp dir {lab.tmp}; load average {open('/proc/loadavg').read().strip()}")
        for num, name, fn in scenarios:
            if num not in only:
                continue
            log(f"scenario {num}: {name}")
            checks = Checks(num, name)
            results.append(checks)
            t0 = time.monotonic()
            try:
                fn(lab, checks)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - a scenario that errors is a FAIL row
                checks.add("scenario ran to the end", "no error", f"ERROR: {e}"[:600], False)
            finally:
                lab.stop_processes()  # each scenario's go before the next one starts
            log(f"scenario {num} done in {time.monotonic() - t0:.1f} s")
    except KeyboardInterrupt:
        problem = "interrupted"
        log("interrupted; tearing down")
    except Exception as e:  # noqa: BLE001
        problem = f"set-up failed: {e}"
        log(problem)
    finally:
        if lab:
            lab.teardown()
    if results:
        print(f"\nramp-ca chaos run ({time.monotonic() - t_start:.0f} s)\n")
        rig.print_checks(results)
        print(f"\nbinary: {getattr(lab, 'provenance', 'n/a')}")
    bad, line = rig.verdict(results, problem)
    # The last line in the form test runners close with: N passed, N failed (and which).
    print(f"\n{line}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
