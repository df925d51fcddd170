"""The runner's LID stage: LID curves per split, calibration of the estimator's knob, the LID column.

An LID *estimator* (``lid.method``, registered in :data:`ESTIMATORS`; ``auto`` picks the first whose
model capabilities are present) turns each point into raw per-point results, cached and resumable,
and those into LID over a grid of its knob:

* ``jacobian`` (flows: ``generator``): the Jacobian spectrum (exact) or its Lanczos quadrature (fast);
  knob log tau, LID = #{singular values > tau} (``lid.log_tau``, ``lid.log_tau_grid``).
* ``flipd`` (diffusions: ``score``): FLIPD (Kamkari et al. 2024), knob log t0 (``lid.log_t0``,
  ``lid.log_t0_grid``); see :mod:`ood.lid_diffusion`.
* ``normal_bundle`` (diffusions): Stanczuk et al.'s estimator, knob the log singular-value threshold
  (``lid.nb_log_threshold``, ``lid.nb_log_threshold_grid``).
* ``lidl`` (diffusions): LIDL (Tempczyk et al. 2022) with the diffusion's Fokker-Planck equation (seed 001):
  log rho_delta integrated over a grid of log t from the score, LID = D + the slope on log delta; knob log t
  (``lid.lidl_log_t``, ``lid.lidl_log_t_grid``, ``lid.lidl_window``); see :mod:`ood.lid_diffusion`.

For ``n_per_split`` seeded points of each split it computes the LID curve over the knob's grid, then
picks the knob: ``fixed`` (the configured value) or ``lpca`` (the grid value where the mean in_train
LID is closest to the mean local-PCA estimate of the same in_train points, as in seed 000), and
returns each point's LID there.

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
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from genood.ood import lid as lidlib
from genood.ood.lpca import lpca
from genood.registry import Registry
from genood.ood.stages import fingerprint as _fingerprint, model_digest as _model_digest, resumable_blocks as _blocks

__all__ = ["LidResult", "LidEstimator", "ESTIMATORS", "register_estimator", "choose_estimator", "point_positions", "raw_results", "run_lid_stage"]


@dataclass
class LidResult:
    positions: Dict[str, np.ndarray]   # split -> row positions (within the split) that have an LID
    values: Dict[str, np.ndarray]      # split -> LID at the chosen knob value
    curves: pd.DataFrame               # long format: split, dataset, index, <knob>, lid
    log_tau: float                     # the chosen knob value (log tau for the Jacobian estimator)
    calibration: Dict[str, float]
    knob: str = "log_tau"              # the knob's name (curves column): log_tau | log_t0 | log_threshold
    method: str = "jacobian"


@dataclass(frozen=True)
class LidEstimator:
    """How one LID estimator plugs into the stage.

    ``compute(model, xb, start, lcfg, seed, knobs)`` -> raw arrays per point (cached block by block);
    ``curve(raw, knobs, lcfg)`` -> LID (N, len(knobs)). ``knobs`` holds the grid and the fixed value
    (estimators whose raw results are per knob value, like FLIPD, compute exactly these)."""
    name: str
    needs: Tuple[str, ...]
    knob: str                 # curves column and metric_info key
    fixed_key: str            # lid.<key>: the fixed knob value
    grid_key: str             # lid.<key>: [min, max, points]
    settings: Callable[[Dict[str, Any], int], str]
    compute: Callable[..., Dict[str, np.ndarray]]
    curve: Callable[[Dict[str, np.ndarray], np.ndarray, Dict[str, Any]], np.ndarray]
    progress_label: Callable[[Dict[str, Any]], str]
    per_knob: bool = False    # raw results exist only at the knob values computed (the fixed value joins the grid)


ESTIMATORS: Registry[LidEstimator] = Registry("LID estimator", modules=(__name__, "genood.ood.lid_diffusion"))


def register_estimator(est: LidEstimator) -> LidEstimator:
    from genood.models.base import undeclared

    if undeclared(est.needs):
        raise ValueError(f"LID estimator {est.name!r} needs {undeclared(est.needs)}, which the model protocol does not "
                         f"declare (genood.models.base.CAPABILITIES)")
    return ESTIMATORS.add(est.name, est, est.compute.__module__)


def _jacobian_compute(model, xb, start, lcfg, seed, knobs):
    block = int(lcfg["batch_points"])
    if lcfg["mode"] == "exact":
        spectra, proj = lidlib.exact_spectra(model, xb, chunk_size=int(lcfg["chunk_size"]), batch_points=block,
                                             projections=True)
        return {"spectra": spectra, "latent_proj_sq": proj}
    probes, steps = int(lcfg["probes"]), int(lcfg["lanczos_steps"])
    width = min(steps, int(np.prod(xb.shape[1:])))
    # probes seeded per block, so a resumed run draws the same probes as an uninterrupted one
    d = lidlib.lanczos_density(model, xb, probes=probes, steps=steps, seed=seed * 1_000_003 + start, batch_points=block)
    pad = width - d.nodes.shape[2]
    return {"nodes": np.pad(d.nodes, ((0, 0), (0, 0), (0, pad)), constant_values=-np.inf),
            "weights": np.pad(d.weights, ((0, 0), (0, 0), (0, pad))), "dim": np.full(len(xb), d.dim)}


def _jacobian_curve(raw, knobs, lcfg):
    if "spectra" in raw:
        return lidlib.lid_from_spectra(raw["spectra"], knobs).astype(float)
    return lidlib.SpectralDensity(raw["nodes"], raw["weights"], int(raw["dim"][0])).lid(knobs)


register_estimator(LidEstimator(
    "jacobian", needs=("generator", "encode"), knob="log_tau", fixed_key="log_tau", grid_key="log_tau_grid",
    settings=lambda lcfg, seed: "exact+proj" if lcfg["mode"] == "exact" else f"fast {lcfg['probes']} {lcfg['lanczos_steps']} {seed}",
    compute=_jacobian_compute, curve=_jacobian_curve, progress_label=lambda lcfg: f"lid ({lcfg['mode']})"))


def choose_estimator(model, lcfg: Dict[str, Any]) -> LidEstimator:
    """The estimator ``lid.method`` names, or for ``auto`` the first whose capabilities the model has."""
    from genood.ood.scores import ScoreUnavailable

    method = lcfg.get("method", "auto")
    if method == "auto":
        for est in ESTIMATORS.values():
            if all(hasattr(model, n) for n in est.needs):
                return est
        wants = ", ".join(f"{e.name} needs {'+'.join(e.needs)}" for e in ESTIMATORS.values())
        raise ScoreUnavailable(f"No LID estimator fits this model: {wants}.")
    est = ESTIMATORS[method]
    if not all(hasattr(model, n) for n in est.needs):
        fits = [e.name for e in ESTIMATORS.values() if all(hasattr(model, n) for n in e.needs)]
        raise ScoreUnavailable(f"lid.method '{method}' needs a model with {'+'.join(est.needs)}; this model fits "
                               f"lid.method {' or '.join(fits) or '(none)'} (or auto).")
    return est


def point_positions(split: str, n_rows: int, n_per: int, seed: int) -> np.ndarray:
    """The seeded rows (sorted positions within the split) that get per-point LID work: ``lid.n_per_split`` of them."""
    return np.sort(np.random.default_rng([seed, 7, len(split)]).permutation(n_rows)[:n_per])


def raw_results(model, splits: List[tuple], cfg: Dict, seed: int, log: Callable[[str], None],
                cache_dir: Optional[Path] = None, shared_dir: Optional[Path] = None,
                est: Optional[LidEstimator] = None) -> Tuple[LidEstimator, Dict[str, np.ndarray], Dict[str, Dict[str, np.ndarray]]]:
    """The estimator's raw per-point results for the seeded ``lid.n_per_split`` points of every split, from this
    run's cache, the shared store or computed (resumable): (estimator, positions per split, raw arrays per split).
    Other stages that read the same decomposition (the rho_r trend) call this and so reuse what LID computed."""
    lcfg = cfg["lid"]
    est = est or choose_estimator(model, lcfg)
    lo, hi, num = lcfg[est.grid_key]
    grid = np.linspace(float(lo), float(hi), int(num))
    fixed = float(lcfg[est.fixed_key])
    knobs = np.unique(np.append(grid, fixed)) if est.per_knob else grid
    n_per = int(lcfg["n_per_split"])
    positions, raws = {}, {}
    total = sum(min(n_per, x.shape[0]) for _, _, x, _ in splits)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=est.progress_label(lcfg), unit="pt", dynamic_ncols=True, mininterval=1.0,
               disable=not cfg["training"].get("progress", True))
    digest = _model_digest(model)
    settings = est.settings(lcfg, seed)
    if est.per_knob:  # the knob values computed are part of what is cached
        settings += " " + ",".join(f"{k:.6g}" for k in knobs)
    block = int(lcfg["batch_points"])
    for name, dataset, x, index in splits:
        pos = point_positions(name, x.shape[0], n_per, seed)
        positions[name] = pos
        sub = x[torch.from_numpy(pos)].to(next(model.parameters()).device)
        cache = Path(cache_dir) / f"{name}.npz" if cache_dir is not None else None
        fp = _fingerprint(digest, sub, settings)
        shared = Path(shared_dir) / f"{fp[:40]}.npz" if shared_dir is not None else None
        raws[name] = _blocks(lambda xb, s: est.compute(model, xb, s, lcfg, seed, knobs), sub, block, cache, shared, fp,
                             bar.update, log, label=name)
    bar.close()
    return est, positions, raws


def run_lid_stage(model, splits: List[tuple], cfg: Dict, seed: int, log: Callable[[str], None],
                  cache_dir: Optional[Path] = None, shared_dir: Optional[Path] = None) -> LidResult:
    """``splits``: (name, dataset, x (N,C,H,W) float data in [0,256), index (N,)) per split; ``cache_dir``
    makes the stage resumable and ``shared_dir`` lets runs share raw results (see the module docstring)."""
    lcfg = cfg["lid"]
    est, positions, raws = raw_results(model, splits, cfg, seed, log, cache_dir, shared_dir)
    lo, hi, num = lcfg[est.grid_key]
    grid = np.linspace(float(lo), float(hi), int(num))
    fixed = float(lcfg[est.fixed_key])
    curves = {name: est.curve(raws[name], grid, lcfg) for name in raws}

    calibration: Dict[str, float] = {"method": lcfg["calibration"]}
    if lcfg["calibration"] == "lpca" and "in_train" in curves:
        x_train = next(x for n, _, x, _ in splits if n == "in_train")
        pool = x_train.reshape(x_train.shape[0], -1).numpy() / 256.0
        pool = pool[: int(lcfg["lpca_points"])]
        query = x_train[torch.from_numpy(positions["in_train"])].reshape(len(positions["in_train"]), -1).numpy() / 256.0
        target = float(lpca(pool, k=int(lcfg["lpca_k"]), variance=float(lcfg["lpca_variance"]), query=query).mean())
        best = int(np.argmin(np.abs(curves["in_train"].mean(axis=0) - target)))
        chosen = float(grid[best])
        calibration.update({"lpca_mean_lid": target, "in_train_mean_lid": float(curves["in_train"][:, best].mean())})
        log(f"lid: LPCA mean LID of in_train = {target:.1f}; calibrated {est.knob} = {chosen:.3f}")
    else:
        chosen = fixed
    calibration[est.knob] = chosen

    values = {name: est.curve(raws[name], np.array([chosen]), lcfg)[:, 0].astype(float) for name in curves}
    rows = []
    for name, dataset, _, index in splits:
        c = curves[name]
        idx = np.asarray(index)[positions[name]]
        rows.append(pd.DataFrame({"split": name, "dataset": dataset, "index": np.repeat(idx, grid.size),
                                  est.knob: np.tile(grid, len(idx)), "lid": c.reshape(-1)}))
    return LidResult(positions, values, pd.concat(rows, ignore_index=True), chosen, calibration, est.knob, est.name)
