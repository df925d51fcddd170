#!/usr/bin/env python
"""LID benchmarks on identical inputs, same run (CPU here; the GPU when one is present).

1. exact mode (batched reverse-mode Jacobian + float64 eigvalsh) vs a naive per-sample loop
   (torch.autograd.functional.jacobian + float64 SVD), tiny and paper 28x28 flows:
   throughput (images/s), ratio (target >= 3x), and whether the LIDs are identical;
2. fast mode (stochastic Lanczos quadrature) vs exact on real images with a briefly trained
   tiny flow: the error-vs-cost curve over probes x Lanczos steps (seconds per image, speed-up,
   Spearman correlation of LID at log tau = -3, dual-threshold AUROC difference) and the same at
   D = 3072 (3x32x32) for the speed-up (targets: >= 5x at D=784, >= 20x at D=3072, Spearman
   >= 0.95, dual AUROC within 0.02);
3. peak memory of exact mode per chunk size (each in its own process).
Usage: python benchmarks/bench_lid.py [--quick] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from procmem import peak_mb  # noqa: E402
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

LOG_TAU = -3.0


def _model(preset: str, shape, device, train_steps: int = 0, data=None):
    from genood import runconfig
    from genood.models.flows import build_model
    from genood.models.training import train

    cfg = runconfig.resolve({"preset": preset}, ["training.progress=false", "tracking.wandb=false"])
    torch.manual_seed(0)
    model = build_model(shape, cfg["model"]).to(device)
    if train_steps and data is not None:
        import tempfile
        cfg["training"]["steps"] = train_steps
        cfg["run"]["device"] = str(device)
        with tempfile.TemporaryDirectory() as tmp:
            train(model, data, cfg, Path(tmp), log=lambda m: None)
    else:
        model.train()
        with torch.no_grad():
            model.log_prob(torch.rand(16, *shape, device=device) * 256)
    return model.eval()


def naive_lid_spectra(model, x):
    """The seeds' way: one sample at a time, autograd.functional.jacobian, then a float64 SVD."""
    from genood.ood.lid import _scaled_generator
    g = _scaled_generator(model)
    out = []
    for i in range(x.shape[0]):
        z = model.encode(x[i:i + 1]).detach()
        jac = torch.autograd.functional.jacobian(lambda v: g(v[None])[0], z[0])
        out.append((torch.linalg.svdvals(jac.double()) ** 2).cpu().numpy())
    return np.stack(out)


def _images(name: str, n: int, shape):
    from genood.data.registry import load_split
    from genood.data.transforms import match_shape
    imgs = match_shape(load_split(name, "test").images[:n], shape)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() + 0.5


def bench_exact_vs_naive(device, quick: bool):
    """Naive once per flow, then exact mode at each chunk size (CPU: the default 128; GPU: a few sizes)."""
    from genood.ood import lid
    rows = []
    chunks = (128,) if device.type == "cpu" else (128, 784, 3136)
    for preset, n in (("flow_rq_nsf_tiny", 2 if quick else 4), ("flow_rq_nsf_paper", 1 if quick else 2)):
        model = _model(preset, (1, 28, 28), device)
        x = _images("fmnist", n, (1, 28, 28)).to(device)
        lid.exact_spectra(model, x[:1], chunk_size=chunks[0], batch_points=1)  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        naive = naive_lid_spectra(model, x)
        t_naive = time.perf_counter() - t0
        grid = np.linspace(-10, 4, 57)
        lid_naive = lid.lid_from_spectra(naive, grid)
        for chunk in chunks:
            t0 = time.perf_counter()
            exact = lid.exact_spectra(model, x, chunk_size=chunk, batch_points=n)
            t_exact = time.perf_counter() - t0
            lid_exact = lid.lid_from_spectra(exact, grid)
            same = np.array_equal(lid_naive, lid_exact)
            diff = int(np.abs(lid_naive - lid_exact).max())
            flips = int((lid_naive != lid_exact).sum())
            rows.append({"preset": preset, "chunk_size": chunk, "naive_img_s": n / t_naive, "exact_img_s": n / t_exact,
                         "ratio": t_naive / t_exact, "identical_lid": bool(same), "max_lid_diff": diff,
                         "differing_entries": flips, "entries": int(lid_naive.size)})
            print(f"exact vs naive  {preset:18s} chunk {chunk:5d}  naive {n / t_naive:7.3f} img/s  exact {n / t_exact:7.3f} img/s  "
                  f"x{t_naive / t_exact:5.2f} (target >= 3)  LID identical over 57 taus: {same} "
                  f"(max diff {diff}, {flips}/{lid_naive.size} entries differ)", flush=True)
    return rows


def bench_fast_vs_exact(device, quick: bool, chunk: int = 128):
    from genood.data.registry import load_split
    from genood.ood import lid
    from genood.ood.detectors import dual_threshold_auroc
    from scipy.stats import spearmanr

    train = torch.from_numpy(load_split("fmnist", "train").images[:20000]).permute(0, 3, 1, 2).contiguous()
    model = _model("flow_rq_nsf_tiny", (1, 28, 28), device, train_steps=100 if quick else 400, data=train)
    n = 6 if quick else 16
    x_in = _images("fmnist", n, (1, 28, 28)).to(device)
    x_ood = _images("mnist", n, (1, 28, 28)).to(device)
    x = torch.cat([x_in, x_ood])
    with torch.no_grad():
        ll = model.log_prob(x).cpu().numpy()
    t0 = time.perf_counter()
    spectra = lid.exact_spectra(model, x, chunk_size=chunk, batch_points=4)
    t_exact = (time.perf_counter() - t0) / x.shape[0]
    lid_exact = lid.lid_from_spectra(spectra, [LOG_TAU])[:, 0]
    dual_exact = dual_threshold_auroc(ll[:n], lid_exact[:n], ll[n:], lid_exact[n:])
    print(f"exact at D=784: {t_exact:.2f} s/img; dual-threshold AUROC (n={n}+{n}) {dual_exact:.3f}", flush=True)
    rows = []
    grid_p = (2, 8)
    grid_k = (10, 30) if quick else (10, 30, 60)
    for p in grid_p:
        for k in grid_k:
            t0 = time.perf_counter()
            dens = lid.lanczos_density(model, x, probes=p, steps=k, batch_points=8)
            t_fast = (time.perf_counter() - t0) / x.shape[0]
            est = dens.lid([LOG_TAU])[:, 0]
            rho = float(spearmanr(est, lid_exact).statistic)
            dual = dual_threshold_auroc(ll[:n], np.round(est[:n]), ll[n:], np.round(est[n:]))
            rows.append({"probes": p, "steps": k, "s_per_img": t_fast, "speedup": t_exact / t_fast, "spearman": rho,
                         "dual_auroc": dual, "dual_auroc_exact": dual_exact, "mean_abs_err": float(np.abs(est - lid_exact).mean())})
            print(f"fast D=784  probes {p:3d} steps {k:3d}: {t_fast:6.2f} s/img  x{t_exact / t_fast:5.2f} vs exact  "
                  f"Spearman {rho:6.3f}  |err| {rows[-1]['mean_abs_err']:6.1f}  dual AUROC {dual:.3f} (exact {dual_exact:.3f})",
                  flush=True)
    # D = 3072: speed only (random-init tiny flow on 3x32x32)
    model = _model("flow_rq_nsf_tiny", (3, 32, 32), device)
    x = torch.rand(1, 3, 32, 32, device=device) * 256
    t0 = time.perf_counter()
    lid.exact_spectra(model, x, chunk_size=chunk, batch_points=1)
    t_exact3 = time.perf_counter() - t0
    big = []
    for p, k in ((4, 20), (8, 40)):
        t0 = time.perf_counter()
        lid.lanczos_density(model, x, probes=p, steps=k, batch_points=1)
        t_fast3 = time.perf_counter() - t0
        big.append({"probes": p, "steps": k, "exact_s": t_exact3, "fast_s": t_fast3, "speedup": t_exact3 / t_fast3})
        print(f"fast D=3072 probes {p:3d} steps {k:3d}: exact {t_exact3:6.1f} s/img, fast {t_fast3:6.1f} s/img, "
              f"x{t_exact3 / t_fast3:5.2f} (target >= 20)", flush=True)
    return rows, big


def _memory_child(chunk: int, device: str) -> None:
    from genood.ood import lid
    model = _model("flow_rq_nsf_tiny", (1, 28, 28), torch.device(device))
    x = torch.rand(2, 1, 28, 28, device=device) * 256
    base = peak_mb()
    lid.exact_spectra(model, x, chunk_size=chunk, batch_points=2)
    peak = peak_mb()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
    print(json.dumps({"chunk": chunk, "peak_rss_mb": peak, "before_mb": base, "gpu_peak_mb": gpu}))


def bench_memory(device: str, quick: bool):
    rows = []
    for chunk in ((128, 1024) if quick else (64, 128, 1024, 4096)):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(chunk), "--device", device],
                             capture_output=True, text=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"exact mode chunk_size {chunk:5d}: peak RSS {r['peak_rss_mb']:7.0f} MB (model loaded: {r['before_mb']:.0f} MB)"
              + (f", GPU peak {r['gpu_peak_mb']:.0f} MB" if device == "cuda" else ""), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.device)
        return 0
    device = torch.device(args.device)
    print(f"LID benchmarks on {device} ({os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()})", flush=True)
    results = {"exact_vs_naive": bench_exact_vs_naive(device, args.quick)}
    tiny = [r for r in results["exact_vs_naive"] if r["preset"] == "flow_rq_nsf_tiny"]
    best_chunk = max(tiny, key=lambda r: r["exact_img_s"])["chunk_size"]
    results["fast_vs_exact"], results["fast_vs_exact_3072"] = bench_fast_vs_exact(device, args.quick, best_chunk)
    results["memory"] = bench_memory(args.device, args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
