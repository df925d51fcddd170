"""The runner's LID stage: LID curves per split, tau calibration, the LID column.

For ``n_per_split`` seeded points of each split it computes the Jacobian spectrum (exact) or
its Lanczos quadrature (fast), the LID curve over ``lid.log_tau_grid``, then picks log tau:
``fixed`` (``lid.log_tau``) or ``lpca`` (the grid value where the mean in_train LID is closest
to the mean local-PCA estimate of the same in_train points, as in seed 000), and returns each
point's LID at that tau.

Resumable: with a ``cache_dir`` (the runner passes ``<run>/lid_spectra``) each split's spectra (exact)
or Lanczos nodes and weights (fast) are written atomically after every block of ``batch_points``
points, keyed by a fingerprint of the model's parameters, the points and the LID settings; a rerun
of a killed run continues where it stopped and ends with the same numbers. The files stay as an
artifact: ``lid_spectra/<split>.npz`` holds each point's squared singular values, so LID at any tau
can be recomputed without a Jacobian. Complete results are also published to ``shared_dir`` (the
runner passes ``<runs_root>/lid_cache``) under their fingerprint, so another run with the same model
and points (a sweep over ``lid.log_tau`` or the calibration, a LID-curve run then a dual-threshold
run on one checkpoint) reuses them instead of recomputing every Jacobian.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from ood import lid as lidlib
from ood.lpca import lpca
from ood.stages import fingerprint as _fingerprint, model_digest as _model_digest, resumable_blocks as _blocks


@dataclass
class LidResult:
    positions: Dict[str, np.ndarray]   # split -> row positions (within the split) that have an LID
    values: Dict[str, np.ndarray]      # split -> LID at the chosen tau
    curves: pd.DataFrame               # long format: split, dataset, index, log_tau, lid
    log_tau: float
    calibration: Dict[str, float]


def run_lid_stage(model, splits: List[tuple], cfg: Dict, seed: int, log: Callable[[str], None],
                  cache_dir: Optional[Path] = None, shared_dir: Optional[Path] = None) -> LidResult:
    """``splits``: (name, dataset, x (N,C,H,W) float data in [0,256), index (N,)) per split; ``cache_dir``
    makes the stage resumable and ``shared_dir`` lets runs share spectra (see the module docstring)."""
    lcfg = cfg["lid"]
    lo, hi, num = lcfg["log_tau_grid"]
    grid = np.linspace(float(lo), float(hi), int(num))
    n_per = int(lcfg["n_per_split"])
    positions, curves, exact_at = {}, {}, {}
    total = sum(min(n_per, x.shape[0]) for _, _, x, _ in splits)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=f"lid ({lcfg['mode']})", unit="pt", dynamic_ncols=True, mininterval=1.0,
               disable=not cfg["training"].get("progress", True))
    dens_by_split = {}
    digest = _model_digest(model)
    for name, dataset, x, index in splits:
        pos = np.sort(np.random.default_rng([seed, 7, len(name)]).permutation(x.shape[0])[:n_per])
        positions[name] = pos
        sub = x[torch.from_numpy(pos)].to(next(model.parameters()).device)
        block = int(lcfg["batch_points"])
        cache = Path(cache_dir) / f"{name}.npz" if cache_dir is not None else None

        def blocks(compute, fp: str) -> Dict[str, np.ndarray]:
            shared = Path(shared_dir) / f"{fp[:40]}.npz" if shared_dir is not None else None
            return _blocks(compute, sub, block, cache, shared, fp, bar.update, log, label=name)
        if lcfg["mode"] == "exact":
            fp = _fingerprint(digest, sub, "exact")
            got = blocks(lambda xb, s: {"spectra": lidlib.exact_spectra(model, xb, chunk_size=int(lcfg["chunk_size"]),
                                                                         batch_points=block)}, fp)
            spectra = got["spectra"]
            curves[name] = lidlib.lid_from_spectra(spectra, grid).astype(float)
            exact_at[name] = spectra
        else:
            probes, steps = int(lcfg["probes"]), int(lcfg["lanczos_steps"])
            width = min(steps, int(np.prod(sub.shape[1:])))

            def fast(xb, s):
                # probes seeded per block, so a resumed run draws the same probes as an uninterrupted one
                d = lidlib.lanczos_density(model, xb, probes=probes, steps=steps, seed=seed * 1_000_003 + s,
                                           batch_points=block)
                pad = width - d.nodes.shape[2]
                return {"nodes": np.pad(d.nodes, ((0, 0), (0, 0), (0, pad)), constant_values=-np.inf),
                        "weights": np.pad(d.weights, ((0, 0), (0, 0), (0, pad))), "dim": np.full(len(xb), d.dim)}
            fp = _fingerprint(digest, sub, f"fast {probes} {steps} {seed}")
            got = blocks(fast, fp)
            dens = lidlib.SpectralDensity(got["nodes"], got["weights"], int(got["dim"][0]))
            curves[name] = dens.lid(grid)
            dens_by_split[name] = dens
    bar.close()

    calibration: Dict[str, float] = {"method": lcfg["calibration"]}
    if lcfg["calibration"] == "lpca" and "in_train" in curves:
        x_train = next(x for n, _, x, _ in splits if n == "in_train")
        pool = x_train.reshape(x_train.shape[0], -1).numpy() / 256.0
        pool = pool[: int(lcfg["lpca_points"])]
        query = x_train[torch.from_numpy(positions["in_train"])].reshape(len(positions["in_train"]), -1).numpy() / 256.0
        target = float(lpca(pool, k=int(lcfg["lpca_k"]), variance=float(lcfg["lpca_variance"]), query=query).mean())
        best = int(np.argmin(np.abs(curves["in_train"].mean(axis=0) - target)))
        log_tau = float(grid[best])
        calibration.update({"lpca_mean_lid": target, "in_train_mean_lid": float(curves["in_train"][:, best].mean())})
        log(f"lid: LPCA mean LID of in_train = {target:.1f}; calibrated log tau = {log_tau:.3f}")
    else:
        log_tau = float(lcfg["log_tau"])
    calibration["log_tau"] = log_tau

    values = {}
    for name in curves:
        if lcfg["mode"] == "exact":
            values[name] = lidlib.lid_from_spectra(exact_at[name], [log_tau])[:, 0].astype(float)
        else:
            values[name] = dens_by_split[name].lid([log_tau])[:, 0]
    rows = []
    for name, dataset, _, index in splits:
        c = curves[name]
        idx = np.asarray(index)[positions[name]]
        rows.append(pd.DataFrame({"split": name, "dataset": dataset, "index": np.repeat(idx, grid.size),
                                  "log_tau": np.tile(grid, len(idx)), "lid": c.reshape(-1)}))
    return LidResult(positions, values, pd.concat(rows, ignore_index=True), log_tau, calibration)
