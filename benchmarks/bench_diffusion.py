#!/usr/bin/env python
"""Diffusion benchmarks on 28x28 Fashion-MNIST, one run, identical inputs for every measurement.

For the tiny and paper VP presets it measures:
* training images/s: ``models.training.train`` (dequantization, per-step seeding, schedule, clipping,
  progress bar, checkpoint) vs a bare diffusers + torch loop over the very same ``UNet2DModel``
  (the model's padding, DSM loss inline, Adam, the preset's gradient clip); ratio = ours / bare as the median over adjacent (bare, ours)
  pairs (target >= 0.95);
* ODE likelihood images/s (probability-flow ODE, dopri5, its rtol/atol, Hutchinson probes, mean NFE);
* FLIPD images/s at one t0 (one score evaluation and one vector-Jacobian product per probe);
* normal-bundle images/s (K = 2D = 1568 noisy copies per point);
* the ratios FLIPD speed / ODE-likelihood speed (target >= 10) and FLIPD / normal bundle (target >= 50).

The tiny model is first trained for a few hundred steps on real Fashion-MNIST (so the ODE's NFE is that
of a trained model). On a CPU the paper network (114M parameters, ~10 s per forward of 8 images) is
measured for training and FLIPD only; its ODE and normal-bundle costs are printed as estimates from
the measured per-evaluation cost (NFE taken from the tiny model, K forwards), marked "est.".
``--device cuda`` measures everything. Usage: python benchmarks/bench_diffusion.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")


def _images(n: int) -> torch.Tensor:
    from genood.data.registry import load_split
    x = load_split("fmnist", "train").images[:n]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _model(preset: str, device: torch.device, overrides=()):
    from genood import runconfig
    from genood.models.registry import build_model
    cfg = runconfig.resolve({"preset": preset}, ["tracking.wandb=false", *overrides])
    torch.manual_seed(0)
    return build_model((1, 28, 28), cfg["model"]).to(device), cfg


def train_pair(model, cfg, images, steps: int, warm: int, device) -> tuple:
    """(bare images/s, ours images/s) for the same network and batches of the same size."""
    from genood.models.diffusion import _bcast
    from genood.models.training import train
    bs = int(cfg["training"]["batch_size"])
    # bare: diffusers + torch only
    unet = model.net.net
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    sde = model.sde
    # the same padding as the model (28x28 -> a size the U-Net's levels halve evenly: 28 for 3 levels, 32 for 6)
    top, left = model.net.pad_h // 2, model.net.pad_w // 2
    pad = (left, model.net.pad_w - left, top, model.net.pad_h - top)
    # the same recipe: a configured gradient clip is part of the training the user asked for, so the bare
    # loop clips too (the ratio measures our loop's overhead, not the cost of clipping)
    clip = float(cfg["training"]["grad_clip"]) if cfg["training"].get("grad_clip") else None
    g = torch.Generator().manual_seed(1)
    for step in range(warm + steps):
        if step == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (bs,), generator=g)
        y = (images[idx].float() + torch.rand((bs, 1, 28, 28), generator=g)).to(device) / 128.0 - 1.0
        t = 1e-5 + (1 - 1e-5) * torch.rand(bs, device=device)
        eps = torch.randn_like(y)
        psi, sigma = sde.marginal(t)
        yt = torch.nn.functional.pad(_bcast(psi, y) * y + _bcast(sigma, y) * eps, pad)
        loss = (unet(yt, t * 999.0).sample[:, :, top:top + 28, left:left + 28] - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), clip)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare = steps * bs / (time.perf_counter() - t0)
    # ours: the project's training loop over the same model
    marks = {}
    # one step past the window: the final checkpoint write (1.4 GB with Adam state for the paper net) falls
    # outside the timed steps; its cost is measured on its own (``checkpoint_s``)
    cfg = dict(cfg, training=dict(cfg["training"], steps=warm + steps + 1, checkpoint_every=warm + steps + 1, progress=True),
               run=dict(cfg["run"], device=device.type))

    def mark(step, loss):
        if step in (warm, warm + steps, warm + steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, images, cfg, Path(tmp), log=lambda m: None, callbacks=[mark])
    per_step = (marks[warm + steps] - marks[warm]) / steps
    checkpoint_s = max(marks[warm + steps + 1] - marks[warm + steps] - per_step, 0.0)
    return bare, steps * bs / (marks[warm + steps] - marks[warm]), checkpoint_s


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    from genood.ood.lid_diffusion import flipd, normal_bundle_singular_values
    images = _images(4096)
    x_eval = images[-64:].float() + torch.rand((64, 1, 28, 28), generator=torch.Generator().manual_seed(5))
    results = {"device": str(torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"),
               "threads": torch.get_num_threads()}
    plans = {"tiny": dict(pretrain=150 if args.quick else 400, pairs=2 if args.quick else 3, steps=20 if args.quick else 60,
                          warm=3, ode_n=8 if args.quick else 32, flipd_n=32, nb_n=1 if args.quick else 2, overrides=()),
             "paper": dict(pretrain=0, pairs=2 if cpu else 1, steps=3 if cpu else 20, warm=1 if cpu else 3, ode_n=0 if cpu else 16,
                           flipd_n=2 if cpu else 32, nb_n=0 if cpu else 2,
                           overrides=("training.batch_size=4",) if cpu else ())}
    tiny_nfe = None
    for size, plan in plans.items():
        preset = f"diffusion_vp_{size}"
        model, cfg = _model(preset, device, plan["overrides"])
        row = {"preset": preset, "batch_size": int(cfg["training"]["batch_size"])}
        print(f"== {preset}: {sum(p.numel() for p in model.parameters()):,} parameters, batch {row['batch_size']}", flush=True)
        if plan["pretrain"]:
            with tempfile.TemporaryDirectory() as tmp:
                from genood.models.training import train
                c = dict(cfg, training=dict(cfg["training"], steps=plan["pretrain"], progress=False),
                         run=dict(cfg["run"], device=device.type))
                train(model, images, c, Path(tmp), log=lambda m: None)
        ratios, bares, ours, ckpts = [], [], [], []
        for _ in range(plan["pairs"]):
            b, o, c = train_pair(model, cfg, images, plan["steps"], plan["warm"], device)
            bares.append(b), ours.append(o), ratios.append(o / b), ckpts.append(c)
        every = int(cfg["training"]["checkpoint_every"])
        row.update(train_bare=statistics.median(bares), train_ours=statistics.median(ours),
                   train_ratio=statistics.median(ratios), train_pair_ratios=ratios,
                   checkpoint_s=statistics.median(ckpts), checkpoint_every=every)
        step_s = row["batch_size"] / row["train_ours"]
        row["train_ratio_with_checkpoints"] = row["train_ratio"] * step_s / (step_s + row["checkpoint_s"] / every)
        print(f"  train: ours {row['train_ours']:.1f} img/s, bare {row['train_bare']:.1f} img/s, "
              f"ratio {row['train_ratio']:.3f} (pairs {' '.join(f'{r:.3f}' for r in ratios)}; target >= 0.95); "
              f"checkpoint write {row['checkpoint_s']:.2f} s, every {every} steps: ratio with it amortized "
              f"{row['train_ratio_with_checkpoints']:.3f}", flush=True)
        model.eval()
        y = model.to_model_space(x_eval.to(device))
        t_flipd = timed(lambda: flipd(model, y[:plan["flipd_n"]], math.exp(-4.0), probes=1), device)
        row["flipd_img_s"] = plan["flipd_n"] / t_flipd
        print(f"  FLIPD (1 t0, 1 Hutchinson probe): {row['flipd_img_s']:.2f} img/s", flush=True)
        if plan["ode_n"]:
            model.configure(dict(cfg, ode=dict(cfg["ode"], rtol=1e-5, atol=1e-5, probes=1)))
            with torch.no_grad():
                t_ode = timed(lambda: model.log_prob(x_eval[:plan["ode_n"]].to(device)), device)
            row.update(ode_img_s=plan["ode_n"] / t_ode, ode_nfe=float(model.likelihood_nfe.mean()), ode_rtol=1e-5, ode_atol=1e-5,
                       ode_probes=1)
            tiny_nfe = tiny_nfe or row["ode_nfe"]
            print(f"  ODE likelihood (dopri5, rtol=atol=1e-5, 1 probe): {row['ode_img_s']:.3f} img/s, mean NFE {row['ode_nfe']:.0f}", flush=True)
        if plan["nb_n"]:
            t_nb = timed(lambda: normal_bundle_singular_values(model, y[:plan["nb_n"]], 0.01, 2 * 784), device)
            row["nb_img_s"] = plan["nb_n"] / t_nb
            print(f"  normal bundle (K = 1568): {row['nb_img_s']:.4f} img/s", flush=True)
        if not plan["ode_n"] or not plan["nb_n"]:
            # estimates from the measured cost of one score evaluation (forward) and one FLIPD (forward + vjp)
            with torch.no_grad():
                t_fwd = timed(lambda: model.score(y[:plan["flipd_n"]], torch.full((plan["flipd_n"],), 0.01, device=device)), device)
            per_fwd = t_fwd / plan["flipd_n"]
            if not plan["ode_n"] and tiny_nfe:
                row["ode_img_s_est"] = 1.0 / (tiny_nfe / row["flipd_img_s"])  # each NFE = forward + one vjp, like FLIPD
                print(f"  ODE likelihood est.: {row['ode_img_s_est']:.5f} img/s ({tiny_nfe:.0f} NFE as the tiny model)", flush=True)
            if not plan["nb_n"]:
                row["nb_img_s_est"] = 1.0 / (2 * 784 * per_fwd)
                print(f"  normal bundle est.: {row['nb_img_s_est']:.5f} img/s (1568 forwards at {per_fwd:.2f} s)", flush=True)
        ode = row.get("ode_img_s", row.get("ode_img_s_est"))
        nb = row.get("nb_img_s", row.get("nb_img_s_est"))
        row["flipd_vs_ode"] = row["flipd_img_s"] / ode if ode else None
        row["flipd_vs_nb"] = row["flipd_img_s"] / nb if nb else None
        est = lambda key: " (est.)" if f"{key}_img_s_est" in row else ""
        print(f"  FLIPD is {row['flipd_vs_ode']:.1f}x cheaper than the ODE likelihood{est('ode')} (target >= 10) and "
              f"{row['flipd_vs_nb']:.1f}x cheaper than the normal bundle{est('nb')} (target >= 50)", flush=True)
        results[size] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
