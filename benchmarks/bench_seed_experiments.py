#!/usr/bin/env python
"""Costs of issue 18's estimators and detectors, each against a baseline measured in the same run.

1. The rho_r trend (``fast_lidl``): 120 radii in [-20, 5] from the cached decomposition, against the exact LID
   stage's work on the same points (Jacobian + eigendecomposition; target: the trend <= 0.2x of it); and what
   keeping the latent's projections adds to the eigendecomposition (eigh with vectors vs eigvalsh).
2. LIDL for diffusions (37 knob values, Hutchinson 4 probes), the diffusion path statistics (10 Euler steps),
   per image relative to one ODE log_prob of the tiny VP diffusion (freshly initialised: its adaptive solver
   takes more steps than a trained model's, so the NFE is printed beside it).
3. Likelihood regret (50 Adam steps on the posterior) per image relative to one log_prob (S = 1) of the tiny HVAE.
4. The sampling experiment: drawing 4,096 model samples of the tiny flow, and the distances of 16 points to them.
Inputs are real Fashion-MNIST test images (dequantized); models are freshly initialised (cost does not depend
on training). Usage: python benchmarks/bench_seed_experiments.py [--repeats 3] [--points 8]
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from benchmarks.bench_scores import _timed  # noqa: E402  (one timing helper for the benchmarks)

warnings.filterwarnings("ignore")


def _images(n: int) -> torch.Tensor:
    from genood.data.registry import load_split

    test = load_split("fmnist", "test")
    x = torch.from_numpy(test.images[:n]).permute(0, 3, 1, 2).float()
    return x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


def _model(preset: str, shape=(1, 28, 28)):
    from genood import runconfig
    from genood.models.registry import build_model

    cfg = runconfig.resolve({"preset": preset}, ["training.progress=false", "tracking.wandb=false"])
    torch.manual_seed(0)
    model = build_model(shape, cfg["model"])
    if hasattr(model, "configure"):
        model.configure(cfg)
    model.train()
    with torch.no_grad():  # data-dependent initialisations (actnorm) see one batch
        model.log_prob(_images(16))
    return model.eval(), cfg


def bench_rho_r(points: int, repeats: int) -> None:
    from genood.ood import lid

    model, cfg = _model("flow_rq_nsf_tiny")
    x = _images(points)
    t_stage = _timed(lambda: lid.exact_spectra(model, x, chunk_size=128, batch_points=points, projections=True), repeats)
    spectra, proj = lid.exact_spectra(model, x, chunk_size=128, batch_points=points, projections=True)
    rs = np.linspace(-20.0, 5.0, 120)
    t_trend = _timed(lambda: lid.log_rho_r(spectra, proj, rs), repeats)
    jac = torch.randn(points, 784, 784, dtype=torch.float64)
    z = torch.randn(points, 784, dtype=torch.float64)
    t_vals = _timed(lambda: lid.spectrum_from_jacobians(jac), repeats)
    t_vecs = _timed(lambda: lid.decomposition_from_jacobians(jac, z), repeats)
    print(f"rho_r trend, {points} points of the tiny RQ-NSF (D = 784):")
    print(f"  exact LID stage work (Jacobians + eigendecomposition)  {t_stage:8.3f} s  ({t_stage / points:.2f} s/point)")
    print(f"  120-radius trend from the cached decomposition       {t_trend:8.4f} s  ratio {t_trend / t_stage:.4f} (target <= 0.2)")
    print(f"  eigendecomposition: eigvalsh {t_vals:.3f} s, eigh + projections {t_vecs:.3f} s "
          f"(+{t_vecs - t_vals:.3f} s = {100 * (t_vecs - t_vals) / t_stage:.1f}% of the stage)")


def bench_diffusion(n: int, repeats: int) -> None:
    from genood.ood import lid_diffusion
    from genood.ood.scores import path_statistics as ps

    model, cfg = _model("diffusion_vp_tiny")
    x = _images(n)
    t_lp = _timed(lambda: model.log_prob(x), 1)  # an adaptive ODE solve: one timing (its NFE is printed)
    lcfg = dict(cfg["lid"], flipd_trace="hutchinson", flipd_probes=4)
    knobs = np.linspace(-9.0, 0.0, 37)
    t_lidl = _timed(lambda: lid_diffusion._lidl_compute(model, x, 0, lcfg, 0, knobs), repeats)
    times = ps.path_times(model.t_eps, 1.0, 10)
    t_path = _timed(lambda: ps.path_features(ps.noise_predictions_along_path(model, model.to_model_space(x), times), times), repeats)
    print(f"diffusion_vp_tiny, {n} images: one ODE log_prob {t_lp / n * 1000:.1f} ms/image (NFE {float(model.likelihood_nfe[0]):.0f})")
    print(f"  LIDL (37 log t values, Hutchinson 4 probes)  {t_lidl / n * 1000:8.1f} ms/image = {t_lidl / t_lp:.2f}x one log_prob")
    print(f"  path statistics (10 Euler steps)             {t_path / n * 1000:8.1f} ms/image = {t_path / t_lp:.3f}x one log_prob")


def bench_regret(n: int, repeats: int) -> None:
    model, cfg = _model("hvae_tiny")
    x = _images(n)
    t_lp = _timed(lambda: model.log_prob(x), repeats)
    steps, lr = int(cfg["likelihood_regret"]["steps"]), float(cfg["likelihood_regret"]["lr"])
    t_reg = _timed(lambda: model.likelihood_regret(x, steps, lr), repeats)
    print(f"hvae_tiny, {n} images: one log_prob (S = 1) {t_lp / n * 1000:.2f} ms/image")
    print(f"  likelihood regret ({steps} Adam steps)        {t_reg / n * 1000:8.2f} ms/image = {t_reg / t_lp:.1f}x one log_prob")


def bench_sampling(repeats: int) -> None:
    from genood.ood.scores import sampling

    model, _ = _model("flow_rq_nsf_tiny")
    gen = lambda: torch.cat([model.sample(256, generator=torch.Generator().manual_seed(s)) for s in range(16)])
    t_draw = _timed(gen, 1)
    samples = gen().reshape(4096, -1).double() / 256
    pts = _images(16).reshape(16, -1).double() / 256
    t_dist = _timed(lambda: sampling.kde_log_rho(sampling.squared_distances(pts, samples), np.linspace(-6, 2, 33), 784), repeats)
    print(f"sampling experiment (tiny RQ-NSF): 4,096 samples {t_draw:.1f} s; 16 points x 33 radii from them {t_dist:.3f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_rho_r(args.points, args.repeats)
    bench_diffusion(16, args.repeats)
    bench_regret(256, args.repeats)
    bench_sampling(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
