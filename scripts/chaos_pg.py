"""scripts/chaos's scenarios with the ledger in PostgreSQL (issue 11): the database
unreachable, slow, restarted under load, and one of several nodes killed. Each stands up a
cluster of its own (rig.Postgres) and nodes that share it."""

import os
import re
import threading
import time

import rig
from chaos import (COUNTER, SESSION_LIMIT, audit_verify, finish, find_session, log, oneline,
                   retry, session_works, start_with_db1, still_serving, timed, watch)
from rig import RigError, wait_for

# Every node's lease in these scenarios, so a killed node is found within seconds.
LEASE = "3s"
# What a client is told while the ledger cannot be reached (src/pgstore/mod.rs).
UNREACHABLE = re.compile(r"the ledger \(PostgreSQL at [^)]+\) is unreachable: .*try again shortly")


def pg_node(lab, pg, name, like=None, url=None):
    """An installation serving from `pg` (or `url`) as node `name`: with a target db-1 when
    it is the first, else a copy of `like` (same keys, policies and target)."""
    config = os.path.join(lab.tmp, "pg-serve.yaml")
    with open(config, "w") as f:
        f.write(f"node_lease: {LEASE}\n")
    flags = ("--store", url or pg.url(), "--node", name, "--config", config)
    if like is None:
        ramp, _ = start_with_db1(lab, name, *flags)
        return ramp
    ramp = lab.install(name, like=like)
    ramp.start(*flags)
    return ramp


def sign_outcome(ramp):
    """(exit code, seconds, stderr) of one `ramp-ca sign`."""
    rc, secs, _, err = timed([ramp.rig.binary, "sign", "--contract", "prod-db", "--step",
                              "observe", "--reason", "chaos", "--dir", ramp.dir, "--server",
                              ramp.api, "--key", ramp.key("alice")], SESSION_LIMIT + 10)
    return rc, secs, err.decode(errors="replace")


# ---- 7: the database unreachable ---------------------------------------------------------------
def s7_db_unreachable(lab, c):
    pg = lab.start_postgres("s7-pg")
    ramp = pg_node(lab, pg, "s7")
    ramp.sign(reason="chaos")
    p, seen = watch(lab, ramp.ssh([COUNTER]), "s7-counter")
    wait_for(lambda: seen["last"] >= 1, 15)
    pg.stop("fast")
    before = seen["last"]
    rc, secs, err = sign_outcome(ramp)
    c.add("signing while PostgreSQL is down: refused at once, saying why",
          "exit 1 within the limit, `the ledger (PostgreSQL at ...) is unreachable ...; try "
          "again shortly`", f"exit {rc} in {secs:.1f} s: {oneline(err, 200)}",
          rc == 1 and secs <= SESSION_LIMIT and bool(UNREACHABLE.search(err)))
    ok, what = session_works(ramp)
    c.add("a new login while PostgreSQL is down is refused", "ssh fails", what, not ok)
    time.sleep(2)
    c.add("the live session goes on meanwhile", "its output keeps coming",
          f"line {before} when it stopped, line {seen['last']} 2 s later",
          seen["last"] >= before + 10)
    pg.start()
    ok, what = retry(lambda: still_serving(ramp), 20)
    c.add("every part works again once PostgreSQL is back (reconnects by itself)",
          "alive, grants, session within 20 s", what, ok)
    rc, err = finish(p, seen, 90)
    s = find_session(ramp, "echo line", ("ended",), timeout=15)
    c.add("the session that ran through the outage ended normally, all of it recorded",
          "exit 0, state ended", f"exit {rc}, state {s and s['state']}, client saw line "
          f"{seen['last']}", rc == 0 and s is not None and s["state"] == "ended")
    c.outcome("the audit chain and the recordings verify afterwards", "exit 0",
              audit_verify(ramp))


# ---- 8: the database slow ------------------------------------------------------------------------
def s8_db_slow(lab, c):
    pg = lab.start_postgres("s8-pg")
    proxy = rig.DelayProxy(lab, pg.port, 0.0)
    slow_url = pg.url().replace(f":{pg.port}/", f":{proxy.port}/")
    ramp = pg_node(lab, pg, "s8", url=slow_url)
    rc, fast, err = sign_outcome(ramp)
    if rc != 0:
        raise RigError(f"sign through the proxy failed: {oneline(err)}")
    proxy.delay = 0.05  # 100 ms added to every round trip
    rc, slow, err = sign_outcome(ramp)
    c.add("signing with 100 ms added to every database round trip still works",
          f"exit 0 within {SESSION_LIMIT:.0f} s", f"exit {rc} in {slow:.1f} s (was {fast:.1f} s "
          f"without the delay){'' if rc == 0 else ': ' + oneline(err)}",
          rc == 0 and slow <= SESSION_LIMIT)
    ok, what = session_works(ramp)
    c.add("a login through the bastion with the slow database works", "ssh works", what, ok)
    proxy.delay = 0.0
    c.outcome("all well once the database is fast again", "alive, grants, session",
              still_serving(ramp))


# ---- 9: the database restarted under load ------------------------------------------------------
def s9_db_restart(lab, c):
    pg = lab.start_postgres("s9-pg")
    ramp = pg_node(lab, pg, "s9")
    key = ramp.key_copy("s9-load")
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            out = ramp.cli("sign", "--contract", "prod-db", "--step", "observe", "--reason",
                           "chaos", "--json", key=key, check=False, timeout=60)
            results.append((out.returncode, out.stdout, out.stderr))
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    time.sleep(1.5)
    pg.kill9()  # the database host crashes; crash recovery at the next start
    time.sleep(1.0)
    pg.start()
    time.sleep(2.0)
    stop.set()
    worker.join(timeout=90)
    ok = [r for r in results if r[0] == 0]
    bad = [r for r in results if r[0] != 0]
    clear = all(UNREACHABLE.search(r[2].decode(errors="replace")) or
                b"statement of this change failed" in r[2] for r in bad)
    c.add("signing under load across a database crash and restart",
          "some succeed before and after; every failure is a clear one",
          f"{len(ok)} signed, {len(bad)} refused"
          + (f"; first refusal: {oneline(bad[0][2], 200)}" if bad else ""),
          len(ok) >= 2 and clear)
    ramp.sign(reason="chaos")  # alice's own key, for the session below
    ok2, what = retry(lambda: still_serving(ramp), 20)
    c.add("the node serves after the restart without being restarted itself",
          "alive, grants, session", what, ok2)
    c.outcome("nothing committed is lost: the chain and recordings verify", "exit 0",
              audit_verify(ramp))


# ---- 10: a node killed -----------------------------------------------------------------------
def s10_node_killed(lab, c):
    pg = lab.start_postgres("s10-pg")
    b = pg_node(lab, pg, "s10-b")
    a = pg_node(lab, pg, "s10-a", like=b)
    b.sign(reason="chaos")
    p, seen = watch(lab, b.ssh([COUNTER]), "s10-counter")
    wait_for(lambda: seen["last"] >= 1, 15)
    killed = time.monotonic()
    b.kill9()
    finish(p, seen, 10)
    s = find_session(a, "echo line", ("interrupted",), timeout=20)
    took = time.monotonic() - killed
    c.add(f"the killed node's session is marked interrupted by the other ({LEASE} lease)",
          "state interrupted, by node s10-a, within the lease + 10 s",
          f"state {s and s['state']} after {took:.1f} s: {oneline((s or {}).get('end_reason'), 160)}",
          s is not None and s["state"] == "interrupted" and "s10-b" in (s.get("end_reason") or ""))
    a.sign(reason="chaos")
    c.outcome("the other node keeps serving", "alive, grants, session", still_serving(a))
    b.start(*b_flags(lab, pg, "s10-b"))
    c.outcome("the killed node starts again under its name and serves",
              "alive, grants, session", still_serving(b))
    c.outcome("one audit chain, verified from the surviving node", "exit 0", audit_verify(a))
    log(f"  s10: session marked interrupted {took:.1f} s after kill -9")


def b_flags(lab, pg, name):
    return ("--store", pg.url(), "--node", name, "--config",
            os.path.join(lab.tmp, "pg-serve.yaml"))


SCENARIOS = [
    (7, "PostgreSQL unreachable under a live session", s7_db_unreachable),
    (8, "PostgreSQL slow (100 ms a round trip)", s8_db_slow),
    (9, "PostgreSQL crashed and restarted under load", s9_db_restart),
    (10, "one of two nodes killed", s10_node_killed),
]
