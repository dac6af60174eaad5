"""scripts/bench's scenario 10: the ledger in PostgreSQL beside the sled one, in the same run.
One cluster of the rig's own, three nodes sharing it (copies of the bench installation, so
the same target trusts them): the API's sign rate with one node and with three at once,
login latency through a node against the sled bastion and ProxyJump, and how fast a
revocation on node A ends sessions on nodes B and C."""

import os
import statistics
import threading
import time

from bench import Row, api_sign, api_sign_command, pct
from rig import RigError, log, run, wait_for

def start_nodes(bench, n):
    """A PostgreSQL cluster and `n` nodes on it (A, B, C...), each a copy of the bench
    installation; they start one after another (the first migrates)."""
    lab = bench.lab
    pg = lab.start_postgres("bench-pg")
    config = os.path.join(lab.tmp, "pg-serve.yaml")
    with open(config, "w") as f:
        f.write("bastion:\n  max_connections_per_user: 100000\n")
    nodes = []
    for i in range(n):
        name = f"pg-{'abc'[i]}"
        node = lab.install(name, like=bench.ramp)
        node.start("--store", pg.url(), "--node", name, "--config", config)
        nodes.append(node)
    return pg, nodes


def sign_rates(loadgen, bench, nodes, n, workers):
    """The persistent client's rate against sled, one PostgreSQL node, and every node at
    once (one client each, `n` requests in all): {label: (certs/s, report)}."""
    out = {"sled": api_sign(loadgen, bench.ramp, n, workers),
           "pg1": api_sign(loadgen, nodes[0], n, workers)}
    reports, share = [None] * len(nodes), max(n // len(nodes), 1)

    def one(i):
        reports[i] = api_sign(loadgen, nodes[i], share, workers)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(nodes))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if any(r is None for r in reports):
        raise RigError("a load generator against a node did not report")
    total = sum(r["n"] for r in reports)
    out["pgN"] = {"rate": total / wall, "n": total, "errors": sum(r["errors"] for r in reports),
                  "distinct_serials": sum(r["distinct_serials"] for r in reports),
                  "p99_ms": max(r["p99_ms"] for r in reports)}
    return out


def connect_latency(bench, node, n):
    """`ssh ... true` through the PostgreSQL node, the sled bastion and ProxyJump,
    interleaved: {path: [seconds]}."""
    paths = {"pg": node.ssh(["true"]), "sled": bench.ssh_bastion(["true"]),
             "base": bench.ssh_baseline(["true"])}
    lat = {k: [] for k in paths}
    for _ in range(n):
        for k, cmd in paths.items():
            t0 = time.perf_counter()
            run(cmd, timeout=30)
            lat[k].append(time.perf_counter() - t0)
    return lat


def revocation_fanout(bench, nodes, rounds):
    """Each round: a fresh certificate signed on A, a session through B and one through C,
    `revoke --serial` on A; seconds from the revoke's start to each session's end."""
    a, rest = nodes[0], nodes[1:]
    took = []
    for r in range(rounds):
        key = a.key_copy(f"fanout-{r}")
        serial = a.sign(key=key)["serial"]
        live = []
        for node in rest:
            p = bench.lab.spawn(node.ssh(["sleep", "60"], identity=key))
            live.append(p)
        if not wait_for(lambda: sum(s["state"] == "live" for s in a.sessions())
                        >= len(rest), 30, 0.1):
            raise RigError(f"round {r}: the sessions on B and C did not start")
        t0 = time.perf_counter()
        a.cli("revoke", "--serial", str(serial), "--reason", "bench", user="carol")
        for p in live:
            try:
                p.wait(timeout=15)
            except Exception as e:  # noqa: BLE001 - a session that outlives it is a finding
                raise RigError(f"round {r}: a session on another node outlived the "
                               f"revocation by 15 s") from e
            took.append(time.perf_counter() - t0)
    return took


def s10_postgres(bench, sz, checks):
    size = {"api_n": sz["pg_api_n"], "connect_n": sz["pg_connect_n"],
            "revokes": sz["pg_revokes"]}
    workers = sz["sign_workers"]
    loadgen, build = api_sign_command(sz["api_sign_release"])
    pg, nodes = start_nodes(bench, 3)
    log(f"  three nodes on PostgreSQL 127.0.0.1:{pg.port}")
    bench.sign_alice()
    for node in nodes:
        node.sign(reason="bench")
    rates = sign_rates(loadgen, bench, nodes, size["api_n"], workers)
    checks.add("API sign on PostgreSQL: every request answered with its own serial",
               "0 errors; distinct serials", "; ".join(
                   f"{k}: {r['n']} requests, {r['errors']} errors, {r['distinct_serials']} "
                   f"distinct" for k, r in rates.items()),
               all(r["errors"] == 0 and r["distinct_serials"] == r["n"] for r in rates.values()))
    lat = connect_latency(bench, nodes[1], size["connect_n"])
    took = revocation_fanout(bench, nodes, size["revokes"])
    sled, one, three = (rates[k]["rate"] for k in ("sled", "pg1", "pgN"))
    p50 = {k: pct(v, 50) * 1e3 for k, v in lat.items()}
    note = (f"{build}; {workers} requests at a time a client; sled: the bench's own node, "
            f"same run")
    return [
        Row(10, "API sign rate, PostgreSQL, one node (certs/s; baseline: sled)", one, sled,
            one / sled, "(reference)", None,
            f"{rates['pg1']['n']} requests, p99 {rates['pg1']['p99_ms']:.1f} ms; {note}", "/s"),
        Row(10, "API sign rate, PostgreSQL, three nodes at once (certs/s; baseline: one node)",
            three, one, three / one, "(reference)", None,
            f"{rates['pgN']['n']} requests in all, a client a node; worst p99 "
            f"{rates['pgN']['p99_ms']:.1f} ms; grant changes are serialised across nodes "
            f"(advisory lock), so more nodes do not mint faster", "/s"),
        Row(10, "connect + `true` p50 through a PostgreSQL node (ms; baseline: ProxyJump)",
            p50["pg"], p50["base"], p50["pg"] / p50["base"], "<= 1.1x",
            p50["pg"] / p50["base"] <= 1.1,
            f"{len(lat['pg'])} each, interleaved; the sled bastion {p50['sled']:.0f} ms "
            f"({p50['pg'] / p50['sled']:.2f}x of it); p99 PostgreSQL "
            f"{pct(lat['pg'], 99) * 1e3:.0f} ms", "ms"),
        Row(10, "revocation on node A ends sessions on B and C: p50 (ms)",
            statistics.median(took) * 1e3, None, None, "<= 1000 ms",
            statistics.median(took) <= 1.0,
            f"{len(took)} sessions over {size['revokes']} revocations, from the start of "
            f"`ramp-ca revoke --serial` on A to each ssh client's exit", "ms"),
        Row(10, "revocation on node A ends sessions on B and C: p99 (ms)",
            pct(took, 99) * 1e3, None, None, "<= 1000 ms", pct(took, 99) <= 1.0, "", "ms"),
    ]


SCENARIOS = [(10, "PostgreSQL: nodes", s10_postgres)]
