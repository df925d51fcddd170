#!/usr/bin/env python
"""Training precision, memory layout and compilation: speed, and what they do to the trained model.

Three parts, on 28x28 Fashion-MNIST with the project's own training step (``models.training._loss``: seeded
batch, dequantization, autocast as ``training.precision`` says, the objective, backward, clipping, Adam):

* ``throughput``: images/s of every family's tiny and paper preset in fp32, bf16, bf16 + channels-last and bf16 +
  a compiled objective. Each setting is timed against fp32 in adjacent (fp32, setting) windows; the ratio is the
  median over the pairs, so a slow moment of the machine hits both sides of a pair. Compile time is reported.
* ``quality``: at equal steps (1,000 of the tiny preset, 3 seeds, the preset's schedule), the held-out loss of the
  family (flows and PixelCNN++: bits/dim; HVAE and VAE: negative ELBO in bits/dim; diffusion: the denoising loss) of bf16
  training minus fp32 training, measured in fp32 on 1,000 in_val images. Target: within 0.02.
* ``walltime``: the held-out loss after the same wall time (``--minutes`` per run) in fp32 and in bf16: the step
  count of each is what its measured throughput fits in that time, with the preset's schedule over those steps.
* ``scoring``: ``ood.precision: bf16`` against fp32 scoring of a briefly trained model per family: per-point error,
  AUROC of Fashion-MNIST test vs MNIST test, and the scoring speed-up.

Usage: python benchmarks/bench_precision.py [throughput] [quality] [walltime] [scoring] [--presets a,b] [--paper-only]
       [--tiny-only] [--pairs 3] [--window 4] [--no-compile] [--seeds 3] [--steps 1000] [--minutes 3]
       [--threads N] [--json out.json]
(no part named: all four).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

TINY = ["flow_rq_nsf_tiny", "flow_affine_tiny", "realnvp_tiny", "glow_tiny", "diffusion_vp_tiny", "hvae_tiny",
        "pixelcnn_tiny", "vae_tiny"]
PAPER = ["flow_rq_nsf_paper", "flow_affine_paper", "realnvp_paper", "glow_paper", "diffusion_vp_paper", "hvae_paper",
         "pixelcnn_paper", "vae_regret_paper"]
# paper presets at a CPU-sized batch (the throughput per image is what is compared)
PAPER_BATCH = 16
SETTINGS = {"fp32": {"training.precision": "fp32"},
            "bf16": {"training.precision": "bf16"},
            "bf16+channels_last": {"training.precision": "bf16", "training.channels_last": True},
            "bf16+compile": {"training.precision": "bf16", "training.compile": True}}


def _train_images():
    from genood.data.registry import load_split
    return load_split("fmnist", "train").images


def _config(preset: str, setting: dict, extra=()):
    from genood import runconfig
    overrides = ["tracking.wandb=false", "training.sample_grid=0", "training.progress=false", *extra]
    overrides += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in setting.items()]
    return runconfig.resolve({"preset": preset}, overrides)


def _chw(images) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Stepper:
    """One model trained step by step with the project's training step under one setting."""

    def __init__(self, preset: str, setting: dict, images: torch.Tensor, batch=None):
        from genood.models.registry import build_model
        from genood.models.training import step_setting
        extra = [f"training.batch_size={batch}"] if batch else []
        self.cfg = _config(preset, setting, extra)
        torch.manual_seed(0)
        self.model = build_model(tuple(images.shape[1:]), self.cfg["model"])
        self.images, self.step = images, 0
        self.device = torch.device("cpu")
        self.setting = step_setting(self.model, self.cfg, self.device, log=lambda s: None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-5)
        self.batch = int(self.cfg["training"]["batch_size"])
        self.clip = float(self.cfg["training"]["grad_clip"] or 0.0)
        self.model.train()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        from genood.models.training import _loss, _optimizer_step
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = _loss(self.model, self.images, self.step, 10 ** 6, self.cfg, [], self.device, self.setting)
            _optimizer_step(self.model, loss, self.opt, self.setting.scaler, self.clip)
            self.step += 1
        return time.perf_counter() - t0


def throughput(presets, pairs: int, window: float, settings, batch_for, log) -> dict:
    images = _chw(_train_images()[:4096])
    out = {}
    for preset in presets:
        batch = batch_for(preset)
        base = Stepper(preset, SETTINGS["fp32"], images, batch)
        base.run(2)  # warm-up (allocations, oneDNN kernel choice)
        one = base.run(1)
        steps = max(1, int(round(window / max(one, 1e-3))))
        row = {"batch": base.batch, "steps_per_window": steps}
        fp32_rates = []
        for name in settings:
            if name == "fp32":
                continue
            try:
                other = Stepper(preset, SETTINGS[name], images, batch)
                t0 = time.perf_counter()
                other.run(1)
                first = time.perf_counter() - t0
                other.run(1)
            except Exception as exc:  # a setting that does not run for this family is reported, not hidden
                row[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                log(f"{preset:22s} {name:20s} failed: {row[name]['error']}")
                continue
            ratios, rates = [], []
            for _ in range(pairs):
                t_base = base.run(steps)
                t_other = other.run(steps)
                fp32_rates.append(steps * base.batch / t_base)
                rates.append(steps * base.batch / t_other)
                ratios.append(t_base / t_other)
            row[name] = {"img_s": statistics.median(rates), "ratio": statistics.median(ratios), "ratios": ratios}
            if name.endswith("compile"):
                row[name]["first_step_s"] = first
            log(f"{preset:22s} {name:20s} {row[name]['img_s']:8.1f} img/s  x{row[name]['ratio']:.2f} vs fp32"
                + (f"  (first, compiling step {first:.1f}s)" if name.endswith("compile") else ""))
        row["fp32"] = {"img_s": statistics.median(fp32_rates) if fp32_rates else None}
        out[preset] = row
    return out


def held_out_loss(model, val: torch.Tensor, n: int = 1000, batch: int = 250) -> float:
    """The family's training loss on ``n`` held-out images, in fp32, eval mode, fixed randomness."""
    from genood.data.transforms import dequantize_uniform
    model.eval()
    if hasattr(model, "set_training_step"):
        model.set_training_step(10 ** 9, 10 ** 9)  # warm-ups over: the plain objective
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(4321)
    vals = []
    with torch.no_grad():
        for i in range(0, min(n, val.shape[0]), batch):
            x = dequantize_uniform(val[i:i + batch].float(), gen)
            vals.append(model.training_loss(x).double())
    loss = float(torch.cat(vals).mean())
    if str(getattr(model, "loss_name", "")).endswith("_nats"):  # a loss in nats per image: per dimension, in bits
        loss /= float(np.prod(val.shape[1:])) * np.log(2.0)
    return loss


def _fit(preset: str, setting: dict, seed: int, steps: int, train_images, val):
    from genood.models.training import fit
    cfg = _config(preset, setting, [f"run.seed={seed}", f"training.steps={steps}",
                                    f"training.checkpoint_every={10 ** 9}"])
    with tempfile.TemporaryDirectory() as d:
        model, result = fit(cfg, Path(d), train_images, log=lambda s: None)
    return held_out_loss(model, val), result


def _val(images):
    from genood.data.splits import holdout
    from genood.runconfig import CORE_DEFAULTS
    _, val_idx = holdout(len(images), float(CORE_DEFAULTS["data"]["val_fraction"]), 0)
    return _chw(images[val_idx])


def quality(presets, seeds: int, steps: int, log) -> dict:
    images = _train_images()
    val = _val(images)  # in_val of seed 0's holdout; every seed's run holds out its own, these images included only
    out = {}
    for preset in presets:
        row = {"fp32": [], "bf16": [], "seconds": {"fp32": [], "bf16": []}}
        for seed in range(seeds):
            for name in ("fp32", "bf16"):
                loss, res = _fit(preset, SETTINGS[name], seed, steps, images, val)
                row[name].append(loss)
                row["seconds"][name].append(res.seconds)
            log(f"{preset:22s} seed {seed}: fp32 {row['fp32'][-1]:.4f}  bf16 {row['bf16'][-1]:.4f}  "
                f"diff {row['bf16'][-1] - row['fp32'][-1]:+.4f}  ({row['seconds']['fp32'][-1]:.0f}s / "
                f"{row['seconds']['bf16'][-1]:.0f}s)")
        diffs = [b - f for b, f in zip(row["bf16"], row["fp32"])]
        row["mean_diff"], row["max_abs_diff"] = float(np.mean(diffs)), float(np.max(np.abs(diffs)))
        row["within_0.02"] = abs(row["mean_diff"]) <= 0.02
        log(f"{preset:22s} mean bf16 - fp32 {row['mean_diff']:+.4f} (max |diff| {row['max_abs_diff']:.4f}) "
            f"{'OK' if row['within_0.02'] else 'OUTSIDE 0.02'}")
        out[preset] = row
    return out


def walltime(presets, minutes: float, log) -> dict:
    images = _train_images()
    val = _val(images)
    chw = _chw(images[:4096])
    out = {}
    for preset in presets:
        row = {}
        for name in ("fp32", "bf16"):
            probe = Stepper(preset, SETTINGS[name], chw)
            probe.run(2)
            per_step = probe.run(10) / 10
            # a longer probe (5% of the budget, at least 10 s): a short one mistakes a busy moment for the speed
            n = max(10, int(max(10.0, 0.05 * minutes * 60) / per_step))
            per_step = probe.run(n) / n
            steps = max(50, int(minutes * 60 / per_step * 0.9))  # ~10% for the rest of fit (holdout, checks)
            loss, res = _fit(preset, SETTINGS[name], 0, steps, images, val)
            row[name] = {"steps": steps, "seconds": res.seconds, "held_out": loss}
            log(f"{preset:22s} {name}: {steps} steps in {res.seconds:.0f}s, held-out {loss:.4f}")
        row["gain"] = row["fp32"]["held_out"] - row["bf16"]["held_out"]
        out[preset] = row
    return out


def scoring(presets, steps: int, n: int, log) -> dict:
    """ood.precision bf16 against fp32 on a model trained ``steps`` steps (fp32): per-point error and AUROC of the
    per-batch scores on ``n`` Fashion-MNIST test and ``n`` MNIST test images (diffusions: score norms, their ODE
    likelihood is minutes per batch here)."""
    from genood.data.registry import load_split
    from genood.ood.metrics import auroc
    from genood.ood.runner import score_images
    from genood.runconfig import deep_merge
    images = _train_images()
    x_in = _chw(load_split("fmnist", "test").images[:n]).float() + 0.5
    x_ood = _chw(load_split("mnist", "test").images[:n]).float() + 0.5
    out = {}
    for preset in presets:
        cfg = _config(preset, SETTINGS["fp32"], [f"training.steps={steps}", f"training.checkpoint_every={10 ** 9}"])
        from genood.models.training import fit
        with tempfile.TemporaryDirectory() as d:
            model, _ = fit(cfg, Path(d), images, log=lambda s: None)
        names = ["score_norms"] if preset.startswith("diffusion") else ["log_likelihood"]
        if hasattr(model, "configure"):
            model.configure(cfg)
        row = {}
        cols = {}
        for name in ("fp32", "bf16"):
            c = deep_merge(cfg, {"ood": {"precision": name}})
            t0 = time.perf_counter()
            a = score_images(model, x_in, names, 100, torch.device("cpu"), progress=False, cfg=c)
            b = score_images(model, x_ood, names, 100, torch.device("cpu"), progress=False, cfg=c)
            cols[name] = (a, b, time.perf_counter() - t0)
        for col in cols["fp32"][0]:
            ref = np.concatenate([cols["fp32"][0][col], cols["fp32"][1][col]])
            low = np.concatenate([cols["bf16"][0][col], cols["bf16"][1][col]])
            scale = np.log(2) * 784 if col == "log_likelihood" else 1.0  # nats -> bits/dim for likelihoods
            err = np.abs(low - ref) / scale
            row[col] = {"max_abs_err": float(err.max()), "median_abs_err": float(np.median(err)),
                        "unit": "bits/dim" if col == "log_likelihood" else "score",
                        "auroc_fp32": auroc(cols["fp32"][0][col], cols["fp32"][1][col]),
                        "auroc_bf16": auroc(cols["bf16"][0][col], cols["bf16"][1][col]),
                        "speedup": cols["fp32"][2] / cols["bf16"][2]}
            r = row[col]
            log(f"{preset:22s} {col:22s} max |err| {r['max_abs_err']:.2e} {r['unit']} (median {r['median_abs_err']:.1e}), "
                f"AUROC fp32 {r['auroc_fp32']:.4f} bf16 {r['auroc_bf16']:.4f}, bf16 scoring x{r['speedup']:.2f}")
        out[preset] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="*", default=[], help="throughput, quality, walltime, scoring (default: all four)")
    p.add_argument("--presets")
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--paper-only", action="store_true")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--window", type=float, default=4.0, help="seconds per timed window")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--score-steps", type=int, default=300, help="training steps of the models the scoring part scores")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    parts = args.parts or ["throughput", "quality", "walltime", "scoring"]
    unknown = [x for x in parts if x not in ("throughput", "quality", "walltime", "scoring")]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}: name throughput, quality, walltime or scoring")
    if args.threads:
        torch.set_num_threads(args.threads)
    from genood.precision import native_bf16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 on this CPU: "
          f"{native_bf16(torch.device('cpu'))}", flush=True)

    def log(msg):
        print(msg, flush=True)
    tiny = [] if args.paper_only else TINY
    paper = [] if args.tiny_only else PAPER
    chosen = args.presets.split(",") if args.presets else None
    results = {}
    if "throughput" in parts:
        presets = chosen or tiny + paper
        settings = [s for s in SETTINGS if not (args.no_compile and s.endswith("compile"))]
        results["throughput"] = throughput(presets, args.pairs, args.window, settings,
                                           lambda pr: PAPER_BATCH if pr.endswith("_paper") else None, log)
    if "quality" in parts:
        results["quality"] = quality(chosen or TINY, args.seeds, args.steps, log)
    if "walltime" in parts:
        results["walltime"] = walltime(chosen or TINY, args.minutes, log)
    if "scoring" in parts:
        results["scoring"] = scoring(chosen or TINY, args.score_steps, 500, log)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
