#!/usr/bin/env python
"""``make demo``: reproduce the likelihood paradox on real Fashion-MNIST vs MNIST, and the dual-threshold
(likelihood + LID) detector that resolves it, through a local sweep.

    python sweep.py create --config meta_configurations/ood/demo_tiny.yaml --backend local
    two local agents (one per core pair; one on a single core), then python sweep.py aggregate <id>

Each run trains the tiny RQ-NSF flow on its in-distribution set and scores the other set.
Rerunning reuses finished runs (same configuration hash), so a second `make demo` is instant.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
META = "meta_configurations/ood/demo_tiny.yaml"
PROGRESS = re.compile(r"(train|in_train|in_val|in_test|ood(?:@[^:\s]+)?|generated|background|lid \(exact\)|lid \(fast\)):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def _status(log: Path) -> str:
    tail = log.read_bytes()[-4000:].decode(errors="replace").replace("\r", "\n") if log.exists() else ""
    if "agent stops" in tail:
        return "idle"
    found = PROGRESS.findall(tail)
    return f"{found[-1][0]} {found[-1][1]}/{found[-1][2]}" if found else "preparing"


def main() -> int:
    py = sys.executable
    created = subprocess.run([py, "sweep.py", "create", "--config", META, "--backend", "local"], cwd=ROOT,
                             capture_output=True, text=True)
    sys.stderr.write(created.stderr)
    if created.returncode != 0:
        return created.returncode
    sweep_id = created.stdout.strip().splitlines()[-1]
    cores = os.cpu_count() or 1
    n_agents = 2 if cores >= 2 else 1
    threads = max(1, cores // n_agents)
    logs = ROOT / "runs" / sweep_id / "agents"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"demo: sweep {sweep_id}, {n_agents} local agent(s) with {threads} thread(s) each; console logs in {logs}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    agents = []
    for i in range(n_agents):
        log = logs / f"console-{i}.log"
        agents.append((log, subprocess.Popen([py, "sweep.py", "agent", sweep_id], cwd=ROOT, env=env,
                                             stdout=open(log, "wb"), stderr=subprocess.STDOUT)))
    t0, last, last_print = time.time(), None, 0.0
    while any(p.poll() is None for _, p in agents):
        time.sleep(2)
        states = [_status(log) for log, _ in agents]
        phases = [s.split(" ")[0] for s in states]
        if phases != last or time.time() - last_print >= 20:  # a line per phase change, else every 20 s
            print(f"  [{time.time() - t0:5.0f}s] " + " | ".join(f"agent {i}: {s}" for i, s in enumerate(states)), flush=True)
            last, last_print = phases, time.time()
    if any(p.returncode != 0 for _, p in agents):
        print(f"demo: an agent failed; see {logs}", file=sys.stderr)
        return 1
    print(f"demo: agents finished in {time.time() - t0:.0f}s\n", flush=True)
    status = subprocess.run([py, "sweep.py", "status", sweep_id], cwd=ROOT, capture_output=True, text=True)
    print(status.stdout.splitlines()[0] if status.stdout else "")
    agg = subprocess.run([py, "sweep.py", "aggregate", sweep_id, "--select-on", "corruption"], cwd=ROOT)
    if "0 failed" not in (status.stdout.splitlines() or [""])[0]:
        print("demo: some runs failed; `python sweep.py status " + sweep_id + "` shows why", file=sys.stderr)
        return 1
    # the seeds' headline numbers on the zoo's reference models, as committed (genood-reproduce computes them)
    print("\ndemo: the reproduction table of the zoo's reference models (zoo/REPRODUCTION.md):", flush=True)
    table = subprocess.run([py, "-m", "genood.reports.reproduction", "--show"], cwd=ROOT)
    return agg.returncode or table.returncode


if __name__ == "__main__":
    sys.exit(main())
