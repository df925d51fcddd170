#!/usr/bin/env python
"""Cost of every OOD score per image relative to one log_prob call, and the combined detectors' fit time.

One run, identical inputs: 512 real Fashion-MNIST test images (dequantized as the runner does) and the
tiny RQ-NSF flow (briefly trained so the numbers are a real model's). For each per-batch score the
time of computing it alone (a fresh per-batch cache, so log_prob is paid again where a score needs it)
is divided by the time of one ``log_prob`` over the same images; what a score adds in a run that
already computes the likelihood (the runner shares log_prob per batch) is printed too. Derived scores
(typicality, likelihood ratio = one more log_prob of the background model) and the stage score LID
(exact Jacobian, 8 points) are timed the same way. Then the label-free combinations: GMM (component
count chosen by 2-fold held-out likelihood), KDE (bandwidth likewise), Fisher and min-p fitted on
1,000 in_val rows of 2 and 4 scores, and the bootstrap intervals of one 12,000-point entry.

    python benchmarks/bench_scores.py [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from genood import runconfig
    from genood.data.registry import load_split
    from genood.data.transforms import eval_dequantization_noise
    from genood.models.registry import build_model
    from genood.models.training import train
    from genood.ood import scores as registry
    from genood.ood.combined import fit_density, fit_min_p, fit_pvalues

    cfg = runconfig.resolve({"preset": "flow_rq_nsf_tiny", "tracking": {"wandb": False},
                             "ood": {"scores": ["log_likelihood", "complexity"]}})
    torch.manual_seed(0)
    model = build_model((1, 28, 28), cfg["model"])
    train_images = torch.from_numpy(load_split("fmnist", "train").images[:8192]).permute(0, 3, 1, 2).contiguous()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        train(model, train_images, dict(cfg, training=dict(cfg["training"], steps=150, progress=False)), Path(tmp),
              log=lambda m: None)
    model.eval()
    n = 512
    stored = load_split("fmnist", "test").images[:n]
    x = torch.from_numpy(stored).permute(0, 3, 1, 2).float() + eval_dequantization_noise(n, (1, 28, 28), 0, "in_test")
    bs = int(cfg["ood"]["batch_size"])

    def run(names):
        for s in range(0, n, bs):
            cache = {"cfg": cfg}
            with torch.no_grad():
                for name in names:
                    registry.get(name).fn(model, x[s:s + bs], cache)

    base = _timed(lambda: run(["log_likelihood"]), args.repeats)
    results = {"device": "cpu", "threads": torch.get_num_threads(), "images": n,
               "log_prob_ms_per_image": 1000 * base / n, "scores": {}}
    print(f"log_prob: {1000 * base / n:.3f} ms per image (tiny RQ-NSF flow, {n} images, batch {bs})")
    print(f"{'score':22s} {'alone / log_prob':>17s} {'added to a run with log_prob':>30s}")
    for name in ("bits_per_dim", "complexity", "codec_bits_per_dim", "derivative_norm", "likelihood_terms"):
        alone = _timed(lambda: run([name]), args.repeats)
        both = _timed(lambda: run(["log_likelihood", name]), args.repeats)
        results["scores"][name] = {"alone_ratio": alone / base, "added_ratio": max(both - base, 0.0) / base}
        print(f"{name:22s} {alone / base:17.2f} {max(both - base, 0.0) / base:30.2f}")
    # derived: typicality is arithmetic on the table; the likelihood ratio is one more log_prob (the background model)
    import pandas as pd
    ll = np.random.default_rng(0).normal(-2000, 50, 12000)
    table = pd.DataFrame({"split": ["in_val"] * 1000 + ["in_test"] * 11000, "log_likelihood": ll})
    t_typ = _timed(lambda: registry.get("typicality").derived(table, cfg, {}), args.repeats)
    results["scores"]["typicality"] = {"alone_ratio": None, "added_ratio": t_typ / (base * 12000 / n)}
    print(f"{'typicality':22s} {'(derived)':>17s} {t_typ / (base * 12000 / n):30.4f}")
    # the likelihood ratio adds one log_prob of the background model (same architecture, its own weights)
    torch.manual_seed(1)
    background = build_model((1, 28, 28), cfg["model"]).eval()

    def bg_pass():
        with torch.no_grad():
            for s in range(0, n, bs):
                background.log_prob(x[s:s + bs])
    t_bg = _timed(bg_pass, args.repeats)
    results["scores"]["likelihood_ratio"] = {"alone_ratio": (base + t_bg) / base, "added_ratio": t_bg / base,
                                             "note": "plus training the background model once (as long as the foreground)"}
    print(f"{'likelihood_ratio':22s} {(base + t_bg) / base:17.2f} {t_bg / base:30.2f}  (+ one background training run)")
    from genood.ood.lid_stage import run_lid_stage
    lcfg = dict(cfg, lid=dict(cfg["lid"], n_per_split=8, log_tau_grid=[-6.0, 0.0, 4]))
    t_lid = _timed(lambda: run_lid_stage(model, [("in_test", "fmnist", x[:8], np.arange(8))], lcfg, 0, lambda m: None),
                   1)
    results["scores"]["lid"] = {"alone_ratio": (t_lid / 8) / (base / n), "added_ratio": (t_lid / 8) / (base / n)}
    print(f"{'lid (exact)':22s} {(t_lid / 8) / (base / n):17.1f} {(t_lid / 8) / (base / n):30.1f}  per point that gets one")
    # the diffusion's own scores against its ODE likelihood (tiny VP preset, untrained weights: the ODE's NFE
    # differs from a trained model's, so this ratio is indicative; bench_diffusion.py has trained-model NFEs)
    dcfg = runconfig.resolve({"preset": "diffusion_vp_tiny", "tracking": {"wandb": False},
                              "ode": {"rtol": 1e-4, "atol": 1e-4, "divergence": "hutchinson", "probes": 1}})
    torch.manual_seed(0)
    diffusion = build_model((1, 28, 28), dcfg["model"]).eval()
    diffusion.configure(dcfg)
    xd = x[:16]

    def drun(name):
        with torch.no_grad():
            return registry.get(name).fn(diffusion, xd, {"cfg": dcfg})
    t_ode = _timed(lambda: drun("log_likelihood"), 1)
    results["diffusion"] = {"ode_log_prob_s_per_image": t_ode / 16, "nfe": float(diffusion.likelihood_nfe.mean())}
    print(f"\ndiffusion (tiny VP, 16 images): ODE log_prob {t_ode / 16:.3f} s per image "
          f"({results['diffusion']['nfe']:.0f} NFE, rtol = atol = 1e-4, 1 probe)")
    for name in ("score_norms", "derivative_norm"):
        t = _timed(lambda: drun(name), args.repeats)
        results["diffusion"][f"{name}_ratio"] = t / t_ode
        print(f"  {name:20s} {t / t_ode:.4f} of one ODE log_prob")
    # combined detectors: fit time on 1,000 in_val rows
    rng = np.random.default_rng(1)
    results["combined_fit_s"] = {}
    print("\ncombined detectors, fit on 1,000 in_val rows:")
    for k in (2, 4):
        xv = rng.normal(size=(1000, k)) @ rng.normal(size=(k, k))
        for label, fn in (("gmm", lambda: fit_density(xv, "gmm", 8, 0)), ("kde", lambda: fit_density(xv, "kde", 8, 0)),
                          ("fisher", lambda: fit_pvalues(xv)), ("min_p", lambda: fit_min_p(xv))):
            t = _timed(fn, 1 if label in ("gmm", "kde") else args.repeats)
            results["combined_fit_s"][f"{label}_{k}"] = t
            print(f"  {label:7s} {k} scores: {t:8.3f} s")
    from genood.ood.metrics import bootstrap_metrics
    s_in, s_ood = rng.normal(1, 1, 10000), rng.normal(0, 1, 2000)
    t_boot = _timed(lambda: bootstrap_metrics(s_in, s_ood, 1000, 0), 1)
    results["bootstrap_s_12000_points_B1000"] = t_boot
    print(f"bootstrap intervals (4 metrics, B = 1000) of a 10,000 + 2,000-point entry: {t_boot:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
