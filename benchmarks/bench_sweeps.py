#!/usr/bin/env python
"""Orchestration benchmarks for the local backend (real SQLite, a real PostgreSQL server, real agent processes).

For each store (SQLite; PostgreSQL from Debian's package, started here as the tests do):
* expand + enqueue a 10,000-run grid (target < 2 s for SQLite, < 5 s for PostgreSQL): meta-configuration
  expansion with every run config resolved and validated, plus the insert;
* agent overhead per run, excluding the job (target < 50 ms): claim + heartbeat + finish;
* throughput (runs/s) with 1, 2 and 4 agent processes on the trivial ``sleep`` job
  (``--sleep`` seconds each), with the ideal ratio to one agent.
Prints each figure with its ratio to the target. Usage: python benchmarks/bench_sweeps.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def grid_meta(n: int, sleep: float = 0.0) -> dict:
    """A sleep-job grid of exactly n runs: two axes when n is a perfect square, else one."""
    side = int(round(n ** 0.5))
    if side * side != n:
        return {"job": "sleep", "method": "grid", "base_config": {"sleep": sleep},
                "sweep_configuration": {"value": {"sweep": True, "values": [i / n for i in range(n)]}}}
    return {"job": "sleep", "method": "grid", "base_config": {"sleep": sleep},
            "sweep_configuration": {"value": {"sweep": True, "values": [i / side for i in range(side)]},
                                    "run": {"name": {"sweep": True, "sweep_identifier": "k",
                                                     "values": [f"k{i}" for i in range(side)]}}}}


def bench_enqueue(n: int, root: Path, locator: str) -> float:
    from genood.orchestration import metaconfig
    from genood.orchestration.store import new_sweep_id, open_store

    t0 = time.perf_counter()
    meta = metaconfig.parse(grid_meta(n), "bench")
    specs = metaconfig.expand(meta)
    store = open_store(locator, runs_root=root)
    sid = new_sweep_id()
    rows = [{"name": s.name, "params": s.params, "digest": s.digest,
             "config": dict(s.config, run=dict(s.config["run"], runs_root=str(root), sweep_id=sid, name=s.name))} for s in specs]
    store.create_sweep(sid, "bench", "sleep", "grid", "bench", meta.raw, "p", None, 3, None, rows)
    seconds = time.perf_counter() - t0
    assert store.counts(sid)["queued"] == len(specs) == n
    store.close()
    return seconds


def bench_overhead(n: int, root: Path, locator: str) -> float:
    """Mean seconds per run of claim + one heartbeat + finish (no job), single process."""
    from genood.orchestration import metaconfig
    from genood.orchestration.store import new_sweep_id, open_store

    meta = metaconfig.parse(grid_meta(n), "bench")
    specs = metaconfig.expand(meta)
    store = open_store(locator, runs_root=root)
    sid = new_sweep_id()
    store.create_sweep(sid, "bench", "sleep", "grid", "bench", meta.raw, "p", None, 3, None,
                       [{"name": s.name, "params": s.params, "digest": s.digest, "config": s.config} for s in specs], force=True)
    n = len(specs)
    t0 = time.perf_counter()
    for _ in range(n):
        claim = store.claim(sid, "bench-agent", 60)
        store.heartbeat(sid, claim.name, "bench-agent", 60)
        store.finish(sid, claim.name, "bench-agent", "/nowhere", {"sleep": {"auroc": 0.5}})
    seconds = (time.perf_counter() - t0) / n
    assert store.counts(sid)["finished"] == n
    store.close()
    return seconds


def bench_throughput(agents: int, runs: int, sleep: float, root: Path, locator: str) -> float:
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / f"meta-{agents}.yaml"
    import yaml
    meta_path.write_text(yaml.safe_dump(grid_meta(runs, sleep)))
    out = subprocess.run([sys.executable, "sweep.py", "--runs-root", str(root), "--store", locator, "create", "--config",
                          str(meta_path), "--backend", "local", "--force"], cwd=ROOT, capture_output=True, text=True, check=True)
    sid = out.stdout.strip().splitlines()[-1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "sweep.py", "--runs-root", str(root), "--store", locator, "agent", sid],
                              cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(agents)]
    for p in procs:
        p.wait()
    return runs / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each trivial run sleeps")
    args = parser.parse_args()
    n_enqueue = 10_000
    n_overhead = 200 if args.quick else 1000
    n_runs = 16 if args.quick else 40
    server = None
    stores = [("SQLite", lambda root: str(root / "sweeps.sqlite"), 2.0)]
    try:
        from tests.pgserver import PostgresServer
        server = PostgresServer().start()
        stores.append(("PostgreSQL", lambda root: server.new_database(), 5.0))
    except Exception as exc:  # noqa: BLE001 (the SQLite numbers still count)
        print(f"PostgreSQL: not measured ({exc})", flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, locate, enqueue_target in stores:
                root = Path(tmp) / label
                for sub in ("enqueue", "overhead"):
                    (root / sub).mkdir(parents=True, exist_ok=True)
                s = bench_enqueue(n_enqueue, root / "enqueue", locate(root / "enqueue"))
                print(f"[{label}] expand + validate + enqueue {n_enqueue} runs: {s:.2f} s (target < {enqueue_target:.0f} s; "
                      f"ratio to target {s / enqueue_target:.2f})", flush=True)
                o = bench_overhead(n_overhead, root / "overhead", locate(root / "overhead"))
                print(f"[{label}] agent overhead per run (claim + heartbeat + finish): {o * 1000:.2f} ms "
                      f"(target < 50 ms; ratio to target {o / 0.05:.3f})", flush=True)
                base = None
                for k in (1, 2, 4):
                    tp_root = root / f"tp{k}"
                    tp_root.mkdir(parents=True, exist_ok=True)
                    rate = bench_throughput(k, n_runs, args.sleep, tp_root, locate(tp_root))
                    base = base or rate
                    print(f"[{label}] throughput, {k} agent(s), {n_runs} runs of a {args.sleep:.1f} s job: {rate:.2f} runs/s "
                          f"(x{rate / base:.2f} vs 1 agent; ideal x{k})", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
