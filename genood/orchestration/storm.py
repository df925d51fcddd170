"""Fault injection for sweeps: a kill storm (agents SIGKILLed at random and replaced) and the checks that
every run still took effect exactly once.

``kill_storm`` keeps ``agents`` agent processes (``sweep.py agent``) on a sweep and every ``every`` seconds
SIGKILLs one at random and starts a replacement, until ``duration`` seconds have passed or the sweep has
drained; then it lets the remaining agents drain it. ``check_sweep`` reads the store and the run
directories: every run finished, none twice-written at once (the ``sleep`` job's ``executions.log`` lists
each writer's steps in order), and for the checkpointed ``sleep`` job every run's final state equal to
an uninterrupted computation, bit for bit. ``benchmarks/kill_storm.py`` is the user-facing script.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from genood.paths import PROJECT_ROOT

__all__ = ["kill_storm", "check_sweep", "writers_overlap"]


def _start_agent(runs_root: Path, sweep_id: str, lease: float, log_dir: Path, k: int, env: Dict[str, str]):
    out = open(log_dir / f"storm-agent-{k}.log", "w")
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "sweep.py"), "--runs-root", str(runs_root), "agent", sweep_id,
                             "--lease", str(lease)], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), out


def _counts(runs_root: Path, sweep_id: str) -> Dict[str, int]:
    from genood.orchestration.store import open_store, store_locator
    store = open_store(store_locator(runs_root), runs_root=runs_root)
    try:
        return store.counts(sweep_id)
    finally:
        store.close()


def kill_storm(runs_root: Path, sweep_id: str, agents: int = 4, every: float = 3.0, duration: float = 60.0,
               lease: float = 2.0, seed: int = 0, drain_timeout: float = 900.0, say=print) -> Dict[str, Any]:
    """Run the storm; returns what was injected (kills, agents started) and how long the sweep took."""
    runs_root = Path(runs_root)
    log_dir = runs_root / sweep_id / "storm"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    rng = random.Random(seed)
    procs, started, kills, t0 = [], 0, 0, time.monotonic()
    for _ in range(agents):
        procs.append(_start_agent(runs_root, sweep_id, lease, log_dir, started, env))
        started += 1
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(every)
            counts = _counts(runs_root, sweep_id)
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            live = [i for i, (p, _) in enumerate(procs) if p.poll() is None]
            if not live:
                break
            victim = rng.choice(live)
            pid = procs[victim][0].pid
            procs[victim][0].send_signal(signal.SIGKILL)
            procs[victim][0].wait()
            procs[victim][1].close()
            kills += 1
            procs[victim] = _start_agent(runs_root, sweep_id, lease, log_dir, started, env)
            started += 1
            say(f"storm: killed agent pid {pid} ({kills} kills), "
                f"{counts['finished']} finished, {counts['queued']} queued, {counts['running']} running")
        deadline = time.monotonic() + drain_timeout
        for p, out in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            out.close()
    finally:
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
    return {"kills": kills, "agents_started": started, "seconds": time.monotonic() - t0,
            "exit_codes": [p.returncode for p, _ in procs]}


def writers_overlap(lines: List[str]) -> bool:
    """True when two processes' lines interleave in a sleep job's executions.log: after a process starts (its
    first line), no other process may write until the next start."""
    current = None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        pid, is_step = parts[0], len(parts) > 1 and parts[1] == "step"
        if not is_step:
            current = pid
        elif pid != current:
            return True
    return False


def check_sweep(runs_root: Path, sweep_id: str) -> Dict[str, Any]:
    """What the store and the run directories say after a storm: runs lost (not finished), finished twice
    (impossible in the store; counted as a writer overlap), results differing from an uninterrupted run."""
    from genood.orchestration.jobs import sleep_state, _state_digest
    from genood.orchestration.store import open_store, store_locator

    store = open_store(store_locator(runs_root), runs_root=runs_root)
    try:
        rows = store.runs(sweep_id)
        job = store.sweep(sweep_id)["job"]
    finally:
        store.close()
    lost = [r["name"] for r in rows if r["status"] != "finished"]
    overlaps, differing, resumed = [], [], 0
    for r in rows:
        directory = Path(r["run_dir"] or Path(runs_root) / sweep_id / r["name"])
        log = directory / "executions.log"
        if job == "sleep" and log.exists():
            lines = log.read_text().splitlines()
            resumed += sum(1 for x in lines if len(x.split()) > 1 and x.split()[1] != "step") > 1
            if writers_overlap(lines):
                overlaps.append(r["name"])
        cfg = r["config"] or {}
        if job == "sleep" and int(cfg.get("steps") or 0) > 0 and r["status"] == "finished":
            metrics = json.loads((directory / "metrics.json").read_text())
            if metrics["state"]["sha256"] != _state_digest(sleep_state(cfg.get("seed", 0), cfg["steps"])):
                differing.append(r["name"])
    return {"runs": len(rows), "lost": lost, "overlapping_writers": overlaps, "differing": differing,
            "resumed_runs": resumed, "claims": sum(r["claims"] for r in rows)}

