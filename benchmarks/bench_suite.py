#!/usr/bin/env python
"""What an added OOD set costs: one run over several OOD sets against the same run over one.

The tiny RQ-NSF flow with the suite's flow scores (likelihood, bits/dim, likelihood ratio, complexity,
derivative norm, typicality, the likelihood's terms, the model-free baselines, the combined detectors with
bootstrap intervals). Measured in one process, on this machine, in this order:

1. the first pair: ``main_ood``'s whole job for fmnist -> mnist (2,000 OOD images), training the flow and
   its background model included: wall time T1;
2. the same pair again on that checkpoint (no training): T1';
3. the same checkpoint against mnist plus K derived sets of 2,000 images each (transforms and synthetic
   sets): TK.

The cost of one added set is (TK - T1') / K, printed as a fraction of T1 (target <= 0.10), together with the
in-distribution work a second one-set run would repeat (T1' minus the added-set cost), which the suite does
once.

    python benchmarks/bench_suite.py [--sets 4] [--bootstrap 1000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
warnings.filterwarnings("ignore")

EXTRA = ["fmnist:hflip", "fmnist:noise=32", "fmnist:uniform", "fmnist:constant", "fmnist:blur=1", "fmnist:checkerboard=2",
         "fmnist:blend=0.5", "fmnist:permute"]


def _config(root: Path, ood, bootstrap: int, checkpoint=None):
    from genood import runconfig
    return runconfig.resolve({
        "preset": "flow_rq_nsf_tiny",
        "run": {"runs_root": str(root), "num_threads": None},
        "data": {"in_distribution": "fmnist", "ood": ood},
        "training": {"progress": False},
        "ood": {"scores": ["log_likelihood", "bits_per_dim", "likelihood_ratio", "complexity", "derivative_norm",
                           "typicality", "likelihood_terms"],
                "n_in_train": 512, "n_in_val": 1000, "n_in_test": 2000, "n_ood": 2000, "n_generated": 256,
                "batch_size": 128, "bootstrap": bootstrap, "checkpoint": checkpoint, "figures": False},
        "likelihood_ratio": {"selection": "none", "mutation_rate": 0.2, "l2_penalty": 0.0},
        "combined": {"sets": [["log_likelihood", "complexity"], ["likelihood_terms"],
                              ["log_likelihood", "complexity", "likelihood_terms"], ["likelihood_terms@preprocess"]]},
        "tracking": {"wandb": False},
    })


def _timed_run(cfg) -> tuple:
    from genood.ood.runner import run_ood

    t0 = time.perf_counter()
    directory = run_ood(cfg, echo=False)
    return time.perf_counter() - t0, directory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=4, help=f"added OOD sets (at most {len(EXTRA)})")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per metrics entry")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    k = max(1, min(args.sets, len(EXTRA)))
    root = Path(tempfile.mkdtemp(prefix="bench_suite_"))
    try:
        t1, first = _timed_run(_config(root, "mnist", args.bootstrap))
        t1b, _ = _timed_run(_config(root / "again", "mnist", args.bootstrap, checkpoint=str(first)))
        tk, _ = _timed_run(_config(root / "suite", ["mnist"] + EXTRA[:k], args.bootstrap, checkpoint=str(first)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_set = (tk - t1b) / k
    result = {"first_pair_s": t1, "first_pair_on_checkpoint_s": t1b, f"pair_plus_{k}_sets_s": tk, "added_set_s": per_set,
              "added_set_over_first_pair": per_set / t1, "target": 0.10, "sets": EXTRA[:k], "bootstrap": args.bootstrap,
              "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None}
    print(f"first pair (training the flow and its background model included): {t1:7.1f} s")
    print(f"same pair on its checkpoint:                                     {t1b:7.1f} s")
    print(f"same checkpoint, mnist + {k} derived sets of 2,000 images:        {tk:7.1f} s")
    print(f"one added OOD set: {per_set:.1f} s = {per_set / t1:.3f} of the first pair (target <= 0.10: "
          f"{'met' if per_set / t1 <= 0.10 else 'NOT met'}); a one-set run per set would repeat "
          f"{max(0.0, t1 - per_set):.1f} s of in-distribution work each")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
