#!/usr/bin/env python
"""Sweeps under load and under faults, on SQLite and on a real PostgreSQL server (issue 20).

* Soak: ``--runs`` (1,000) runs of the trivial ``sleep`` job through ``--agents`` (8) agent processes: runs
  lost (not finished), runs executed more than once, claim latency percentiles (every claim each agent
  made, from ``sweep.py agent --stats``), the store's size and the whole sweep's wall time.
* Kill storm: ``--storm-runs`` (40) runs of the checkpointed ``sleep`` job (20 atomic state saves each)
  through 4 agents while one random agent is SIGKILLed every ``--every`` seconds and replaced, until the
  sweep drains: kills, runs lost, runs with two writers at once, results differing from an uninterrupted
  computation (bitwise), wall time.

Storm your own sweep instead (any job; the bitwise check applies to the sleep job):
    PYTHONPATH=. python benchmarks/bench_faults.py --storm-sweep <sweep-id> --runs-root <runs root> [--agents 4 --every 3]
Usage: PYTHONPATH=. python benchmarks/bench_faults.py [--quick]   (make bench sets PYTHONPATH)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from genood.orchestration.store import STORE_ENV, open_store, store_locator
from genood.orchestration.storm import check_sweep, kill_storm

ROOT = Path(__file__).resolve().parent.parent


def _create(root: Path, meta: dict, env: dict) -> str:
    path = root.parent / f"meta-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(meta))
    out = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), "create", "--config", str(path),
                          "--backend", "local"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _use_store(env: dict) -> None:
    """This process reads the same store as the agents started with ``env``."""
    if env.get(STORE_ENV):
        os.environ[STORE_ENV] = env[STORE_ENV]
    else:
        os.environ.pop(STORE_ENV, None)


def _store_size(locator: str, root: Path) -> float:
    """MiB the store occupies (the SQLite file with its WAL; the PostgreSQL database)."""
    if locator.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(locator) as conn:
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20
    return sum(p.stat().st_size for p in root.glob("sweeps.sqlite*")) / 2**20


def soak(root: Path, env: dict, runs: int, agents: int) -> dict:
    sid = _create(root, {"job": "sleep", "method": "grid", "base_config": {"sleep": 0.0},
                         "sweep_configuration": {"value": {"sweep": True, "values": [i / runs for i in range(runs)]}}}, env)
    stats = [root / f"stats-{k}.json" for k in range(agents)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), "agent", sid,
                               "--stats", str(s)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for s in stats]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    claims = np.array([x for s in stats for x in json.loads(s.read_text())["claim_seconds"]]) * 1000
    _use_store(env)
    store = open_store(store_locator(root), runs_root=root)
    try:
        rows = store.runs(sid)
    finally:
        store.close()
    executions = [len((Path(r["run_dir"]) / "executions.log").read_text().splitlines()) if r["run_dir"] else 0 for r in rows]
    return {"runs": len(rows), "lost": sum(r["status"] != "finished" for r in rows),
            "duplicated": sum(n > 1 for n in executions), "exit_codes": sorted(set(codes)), "wall_s": wall,
            "claim_ms": {q: float(np.percentile(claims, q)) for q in (50, 90, 99)} | {"max": float(claims.max())},
            "claims": int(claims.size), "store_mib": _store_size(store_locator(root), root)}


def storm(root: Path, env: dict, runs: int, agents: int, every: float) -> dict:
    sid = _create(root, {"job": "sleep", "method": "grid", "base_config": {"sleep": 2.0, "steps": 20},
                         "sweep_configuration": {"seed": {"sweep": True, "values": list(range(runs))}}}, env)
    _use_store(env)
    injected = kill_storm(root, sid, agents=agents, every=every, duration=3600, lease=2.0, say=lambda s: None)
    report = check_sweep(root, sid)
    return {"runs": report["runs"], "kills": injected["kills"], "agents_started": injected["agents_started"],
            "lost": len(report["lost"]), "overlapping_writers": len(report["overlapping_writers"]),
            "differing": len(report["differing"]), "resumed_runs": report["resumed_runs"], "wall_s": injected["seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 soak runs, 16 storm runs")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--storm-runs", type=int, default=40)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--storm-sweep", help="storm this existing sweep instead (with --runs-root)")
    ap.add_argument("--runs-root", help="the runs root of --storm-sweep")
    ap.add_argument("--duration", type=float, default=300.0, help="--storm-sweep: seconds of killing")
    ap.add_argument("--stores", default="sqlite,postgresql")
    args = ap.parse_args()
    if args.storm_sweep:
        root = Path(args.runs_root or "runs").resolve()
        injected = kill_storm(root, args.storm_sweep, agents=min(args.agents, 8), every=args.every, duration=args.duration)
        print(json.dumps({"injected": injected, "after": check_sweep(root, args.storm_sweep)}, indent=2))
        return 0
    if args.quick:
        args.runs, args.storm_runs = 200, 16
    print(f"# soak: {args.runs} sleep(0) runs x {args.agents} agents; storm: {args.storm_runs} checkpointed runs x 4 agents, "
          f"a SIGKILL every {args.every} s ({os.cpu_count()} CPUs)")
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
            env = {k: v for k, v in os.environ.items() if k != STORE_ENV}
            env["OMP_NUM_THREADS"] = "1"
            server = None
            if store == "postgresql":
                from tests.pgserver import PostgresServer
                server = PostgresServer().start()
            try:
                for what in ("soak", "storm"):
                    if server is not None:
                        env[STORE_ENV] = server.new_database()
                    root = Path(tmp) / what / "runs"
                    root.mkdir(parents=True)
                    result = (soak(root, env, args.runs, args.agents) if what == "soak"
                              else storm(root, env, args.storm_runs, 4, args.every))
                    print(f"{store:10s} {what:5s} " + json.dumps(result))
            finally:
                if server is not None:
                    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
