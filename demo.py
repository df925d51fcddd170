#!/usr/bin/env python
"""``make demo``: reproduce the likelihood paradox on real Fashion-MNIST vs MNIST.

Trains the tiny RQ-NSF flow on fmnist and on mnist (two processes side by side when the
machine has two or more cores), scores each against the other, prints the AUROC table and
writes runs/demo/report.html. Rerunning resumes or reuses finished runs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIGS = ["configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml", "configurations/ood_mnist_vs_fmnist_rq_nsf_tiny.yaml"]
PROGRESS = re.compile(r"(train|in_train|in_test|ood|generated):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def _status(log: Path) -> str:
    if not log.exists():
        return "starting"
    tail = log.read_bytes()[-4000:].decode(errors="replace").replace("\r", "\n")
    found = PROGRESS.findall(tail)
    if "AUROC" in tail:
        return "done"
    return f"{found[-1][0]} {found[-1][1]}/{found[-1][2]}" if found else "preparing"


def main() -> int:
    sweep = "demo"
    out = ROOT / "runs" / sweep
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    parallel = 2 if cores >= 2 else 1
    threads = max(1, cores // parallel)
    print(f"demo: training the tiny RQ-NSF flow on fmnist and on mnist ({parallel} at a time, {threads} thread(s) each); "
          f"logs in {out}/*.log", flush=True)
    pending = list(CONFIGS)
    running = []
    failed = []
    t0 = time.time()
    last, last_print = "", 0.0
    while pending or running:
        while pending and len(running) < parallel:
            cfg = pending.pop(0)
            log = out / (Path(cfg).stem + ".log")
            cmd = [sys.executable, str(ROOT / "main_ood.py"), "--config", cfg, f"run.sweep_id={sweep}",
                   f"run.num_threads={threads}"]
            running.append((cfg, log, subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)))
        time.sleep(2)
        line = " | ".join(f"{Path(c).stem.replace('ood_', '').replace('_rq_nsf_tiny', '')}: {_status(l)}" for c, l, _ in running)
        phases = [part.split(": ")[-1].split(" ")[0] for part in line.split(" | ")]
        if phases != last or time.time() - last_print >= 20:  # a line on every phase change, else every 20 s
            print(f"  [{time.time() - t0:5.0f}s] {line}", flush=True)
            last, last_print = phases, time.time()
        for item in list(running):
            cfg, log, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    failed.append((cfg, log))
    if failed:
        for cfg, log in failed:
            lines = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
            print(f"demo: {cfg} failed: {lines[-1] if lines else '(no output)'} (full log: {log})", file=sys.stderr)
        return 1
    print(f"demo: finished in {time.time() - t0:.0f}s\n", flush=True)
    from reports.aggregate import collect_runs, format_table, run_dirs_under, write_outputs

    dirs = run_dirs_under([out])
    frame, _ = collect_runs(dirs)
    frame = frame[frame["detector"].isin(["log_likelihood", "generated_vs_ood/log_likelihood"])]
    print(format_table(frame))
    paths = write_outputs(frame, dirs, out)
    print(f"\nreport: {paths[2]}\ntables: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
