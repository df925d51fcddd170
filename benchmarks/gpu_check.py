#!/usr/bin/env python
"""`make gpu-check`: one short check that the system trains and scores on a GPU (about 5-8 minutes on one GPU).

1. Every family's paper preset trains for ``--steps`` steps (default 200) with ``training.precision: auto``
   through the project's training loop; printed: images/s, peak GPU memory and the precision ``auto`` chose.
2. A two-agent sweep on GPU 0 (``meta_configurations/gpu/gpu_check.yaml``): a flow with the Jacobian LID and a
   diffusion with FLIPD, each agent started as ``./meta_run_ood.sh <sweep-id> 0``; printed: each run's state, its
   log-likelihood and LID AUROCs and the agents' wall time.

Without CUDA it stops at once with exit status 2 (it checks a GPU; on a CPU there is nothing to check).
Usage: python benchmarks/gpu_check.py [--steps 200] [--presets a,b] [--runs-root DIR] [--skip-sweep]
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

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["flow_rq_nsf_paper", "flow_affine_paper", "realnvp_paper", "glow_paper", "diffusion_vp_paper",
           "hvae_paper", "pixelcnn_paper", "vae_regret_paper"]


def train_presets(presets, steps: int, runs_root: Path) -> list:
    import numpy as np
    import torch

    from genood import runconfig
    from genood.data.registry import load_split
    from genood.models.training import fit

    images = load_split("fmnist", "train").images
    rows = []
    for preset in presets:
        cfg = runconfig.resolve({"preset": preset}, [f"training.steps={steps}", "training.precision=auto",
                                                     "training.progress=false", "training.sample_grid=0",
                                                     "tracking.wandb=false", f"training.checkpoint_every={steps}",
                                                     "run.device=cuda"])
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, result = fit(cfg, runs_root / preset, images, log=lambda m: None)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        row = {"preset": preset, "batch": int(cfg["training"]["batch_size"]), "steps": steps,
               "precision": result.precision, "img_s": result.images_per_second, "peak_gib": peak,
               "final_loss": result.final_loss, "wall_s": wall}
        rows.append(row)
        print(f"{preset:20s} {row['precision']}  batch {row['batch']:3d}  {row['img_s']:9.1f} img/s  "
              f"peak {peak:6.2f} GiB  loss {np.round(result.final_loss, 4)}", flush=True)
    return rows


def two_agent_sweep(runs_root: Path) -> dict:
    env = dict(os.environ, PYTHON=sys.executable)
    create = subprocess.run([sys.executable, "sweep.py", "--runs-root", str(runs_root), "create", "--config",
                             "meta_configurations/gpu/gpu_check.yaml", "--backend", "local"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    sweep_id = create.stdout.strip().splitlines()[-1]
    print(f"sweep {sweep_id}: two agents on GPU 0", flush=True)
    t0 = time.perf_counter()
    agents = [subprocess.Popen(["./meta_run_ood.sh", sweep_id, "0", "--runs-root", str(runs_root)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [a.communicate()[0] for a in agents]
    wall = time.perf_counter() - t0
    codes = [a.returncode for a in agents]
    status = subprocess.run([sys.executable, "sweep.py", "--runs-root", str(runs_root), "status", sweep_id],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    print(status.stdout.strip(), flush=True)
    metrics = {}
    for path in sorted((runs_root / sweep_id).glob("*/metrics.json")):
        data = json.loads(path.read_text())
        metrics[path.parent.name] = {k: round(v["auroc"], 4) for k, v in data.items()
                                     if isinstance(v, dict) and "auroc" in v and k in ("log_likelihood", "lid", "dual_threshold")}
        print(f"  {path.parent.name}: {metrics[path.parent.name]}", flush=True)
    if any(codes) or len(metrics) < 2:
        for out in outputs:
            print(out[-3000:], file=sys.stderr)
        raise SystemExit(f"gpu-check: the two-agent sweep did not finish both runs (agent exit codes {codes}).")
    print(f"two agents finished the sweep in {wall:.0f}s", flush=True)
    return {"sweep_id": sweep_id, "wall_s": wall, "metrics": metrics}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--presets")
    p.add_argument("--runs-root")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); run it "
              "on a GPU machine with a CUDA build of torch.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0)
    print(f"device: {name} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}), "
          f"torch {torch.__version__}", flush=True)
    root = Path(args.runs_root) if args.runs_root else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.perf_counter()
    result = {"device": name, "train": train_presets(args.presets.split(",") if args.presets else PRESETS, args.steps,
                                                     root / "train")}
    if not args.skip_sweep:
        result["sweep"] = two_agent_sweep(root / "sweep")
    print(f"gpu-check done in {time.perf_counter() - t0:.0f}s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
