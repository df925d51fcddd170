#!/usr/bin/env python
"""HVAE, PixelCNN++, RealNVP and Glow benchmarks on 28x28 Fashion-MNIST, one run, identical inputs for every
measurement.

For the tiny presets (and, with --paper, the paper presets at a CPU-sized batch) it measures:
* training images/s: ``models.training.train`` (per-step seeding, dequantization, schedule, clipping, NaN guard,
  KL warm-up hook, progress bar, callbacks) vs a bare torch loop over the very same network and objective
  (random batch, dequantize, ``training_loss``, Adam, the preset's clip); ratio = ours / bare, the median over
  adjacent (bare, ours) pairs (target >= 0.95; five pairs, each timed window >= ~10 s on 2 cores so that a
  scheduler hiccup of one window does not decide the median);
* scoring images/s: ``log_prob`` (HVAE: the bound with S = 1 and S = 10; PixelCNN++: exact), batch 64;
* the cost of LLR>k per image relative to one bound (k = 1, 2, plus the full bound they share);
* sampling images/s (PixelCNN++ needs one network evaluation per pixel).
Usage: python benchmarks/bench_families.py [--quick] [--paper] [--only PRESET,...] [--json out.json]
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

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

warnings.filterwarnings("ignore")


from benchmarks.bench_diffusion import _images  # noqa: E402  (the same real Fashion-MNIST inputs)


def _model(preset: str, overrides=()):
    from genood import runconfig
    from genood.models.registry import build_model
    cfg = runconfig.resolve({"preset": preset}, ["tracking.wandb=false", "training.sample_grid=0", *overrides])
    torch.manual_seed(0)
    return build_model((1, 28, 28), cfg["model"]), cfg


def train_pair(model, cfg, images, steps: int, warm: int) -> tuple:
    """(bare images/s, ours images/s) for the same network, objective and batch size."""
    from genood.models.training import train
    bs = int(cfg["training"]["batch_size"])
    clip = float(cfg["training"]["grad_clip"]) if cfg["training"].get("grad_clip") else None
    make = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg["training"].get("optimizer", "adam")]
    opt = make(model.parameters(), lr=1e-4)  # the preset's optimiser, as ours uses
    g = torch.Generator().manual_seed(1)
    model.train()
    for step in range(warm + steps):
        if step == warm:
            t0 = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (bs,), generator=g)
        x = images[idx].float() + torch.rand((bs, *images.shape[1:]), generator=g)
        loss = model.training_loss(x).mean()
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    bare = steps * bs / (time.perf_counter() - t0)
    marks = {}
    cfg = dict(cfg, training=dict(cfg["training"], steps=warm + steps + 1, checkpoint_every=warm + steps + 1, progress=True),
               run=dict(cfg["run"], device="cpu"))

    def mark(step, loss):
        if step in (warm, warm + steps):
            marks[step] = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, images, cfg, Path(tmp), log=lambda m: None, callbacks=[mark])
    return bare, steps * bs / (marks[warm + steps] - marks[warm])


def per_second(fn, n: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--paper", action="store_true", help="also the paper presets (CPU: small batch, few steps)")
    parser.add_argument("--only", help="comma-separated presets to run (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    images = _images(4096)
    x_eval = images[-64:].float() + torch.rand((64, 1, 28, 28), generator=torch.Generator().manual_seed(5))
    plans = [("hvae_tiny", (), 3, 20 if args.quick else 40), ("pixelcnn_tiny", (), 3, 10 if args.quick else 25),
             ("realnvp_tiny", (), 3, 10 if args.quick else 40), ("glow_tiny", (), 3, 10 if args.quick else 100)]
    if args.paper:
        plans += [("hvae_paper", ("training.batch_size=16",), 1, 4), ("pixelcnn_paper", ("training.batch_size=8",), 1, 3),
                  ("realnvp_paper", ("training.batch_size=16",), 1, 4), ("glow_paper", ("training.batch_size=4",), 1, 3)]
    if args.only:
        plans = [p for p in plans if p[0] in args.only.split(",")]
    results = {"device": "cpu", "threads": torch.get_num_threads()}
    for preset, overrides, warm, steps in plans:
        model, cfg = _model(preset, overrides)
        row = {"preset": preset, "batch_size": int(cfg["training"]["batch_size"]),
               "parameters": sum(p.numel() for p in model.parameters())}
        print(f"== {preset}: {row['parameters']:,} parameters, batch {row['batch_size']}", flush=True)
        ratios, bares, ours = [], [], []
        for _ in range(2 if args.quick else 5):
            b, o = train_pair(model, cfg, images, steps, warm)
            bares.append(b), ours.append(o), ratios.append(o / b)
        row.update(train_bare=statistics.median(bares), train_ours=statistics.median(ours),
                   train_ratio=statistics.median(ratios), train_pair_ratios=ratios)
        print(f"  train: ours {row['train_ours']:.1f} img/s, bare {row['train_bare']:.1f} img/s, ratio "
              f"{row['train_ratio']:.3f} (pairs {' '.join(f'{r:.3f}' for r in ratios)}; target >= 0.95)", flush=True)
        model.eval()
        n = 64 if "tiny" in preset else 16
        xe = x_eval[:n]
        with torch.no_grad():
            if hasattr(model, "bounds"):
                for s in (1, 10):
                    model.configure({"bound": {"samples": s, "seed": 0, "chunk": 1024}, "llr": {"prior": "mode"}})
                    row[f"score_img_s_S{s}"] = per_second(lambda: model.log_prob(xe), n)
                    print(f"  log_prob (bound, S = {s}): {row[f'score_img_s_S{s}']:.1f} img/s", flush=True)
                model.configure({"bound": {"samples": 1, "seed": 0, "chunk": 1024}, "llr": {"prior": "mode"}})
                one = per_second(lambda: model.log_prob(xe), n)
                llr = per_second(lambda: (model.log_prob(xe), model.bounds(xe, [1, 2])), n)
                row["llr_cost_vs_bound"] = one / llr
                print(f"  LLR>k for k = 1, 2 (with the full bound): {row['llr_cost_vs_bound']:.2f}x the cost of one bound "
                      f"(S = 1)", flush=True)
            else:
                row["score_img_s"] = per_second(lambda: model.log_prob(xe), n)
                print(f"  log_prob (exact): {row['score_img_s']:.1f} img/s", flush=True)
            m = 8 if "tiny" in preset else 2
            row["sample_img_s"] = per_second(lambda: model.sample(m, generator=torch.Generator().manual_seed(0)), m, repeats=1)
            print(f"  sampling: {row['sample_img_s']:.3f} img/s ({m} at once)", flush=True)
        results[preset] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
