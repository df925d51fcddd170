"""LID estimators for diffusion models, registered with the LID stage (:mod:`ood.lid_stage`).

Both work in the model's scaled space y (images: x / 128 - 1) and need ``model.score(y, t)`` and
``model.sde`` (``marginal(t) -> (psi, sigma)``).

FLIPD (Kamkari et al. 2024). For a point y and a small time t0, with psi = psi(t0), sigma = sigma(t0):

    FLIPD(y; t0) = D + sigma^2 [ tr grad s(psi y, t0) + ||s(psi y, t0)||^2 ].

For data on a d-dimensional linear subspace the marginal at small t0 is a Gaussian with D - d variances
sigma^2 and d variances ~ psi^2 lambda, so sigma^2 tr grad s ~ -(D - d) and FLIPD ~ d. The trace is
exact (D backward passes) or Hutchinson (``lid.flipd_probes`` Rademacher probes, seeded by the points'
content and the run seed). The knob is log t0 (natural log): curves over ``lid.log_t0_grid``.

Normal bundle (Stanczuk et al. 2023). Draw K noisy copies y_k = psi y + sigma eps_k at a small time t
(``lid.nb_t``), stack the network's noise predictions eps_hat(y_k, t) = -sigma s(y_k, t) into a K x D
matrix divided by sqrt(K): at small t these vectors span the normal space of the data manifold, so
its singular values are ~1 in the D - d normal directions and small in the d tangent directions.
LID = D - #{singular values > threshold} (missing ones, when K < D, count as zero); the knob is the
log threshold (``lid.nb_log_threshold``, curves over ``lid.nb_log_threshold_grid``).

LIDL (Tempczyk et al. 2022, the regression estimator seed 001 describes): log rho_delta at many noise scales
from the Fokker-Planck equation, LID = D + the slope on log delta (below, beside its registration).
"""
from __future__ import annotations

import math
import zlib
from typing import Dict

import numpy as np
import torch

from genood.models.diffusion import value_and_divergence, _bcast
from genood.ood.lid_stage import LidEstimator, register_estimator


def _generator(y: torch.Tensor, seed: int, salt: int) -> torch.Generator:
    key = zlib.crc32(y.detach().float().cpu().contiguous().numpy().tobytes())
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt * 7919 + key) % (2 ** 63))


def fokker_planck_terms(model, y: torch.Tensor, t: float, probes: int = 1, exact: bool = False,
                        seed: int = 0) -> torch.Tensor:
    """tr grad s + ||s||^2 (B,) at (psi(t) y, t): the one quantity FLIPD and LIDL need from the network
    (exact trace: D backward passes; else Hutchinson with ``probes`` Rademacher probes seeded by the points)."""
    b = y.shape[0]
    tt = torch.full((b,), float(t), dtype=y.dtype, device=y.device)
    psi, _ = model.sde.marginal(tt)
    fn = lambda yy: model.score(yy, tt)
    if exact:
        s, tr = value_and_divergence(fn, _bcast(psi, y) * y, "exact")
    else:
        gen = _generator(y, seed, 1)
        v = (torch.randint(0, 2, (int(probes), *y.shape), generator=gen) * 2 - 1).to(y)
        s, tr = value_and_divergence(fn, _bcast(psi, y) * y, "hutchinson", v)
    return tr + s.flatten(1).pow(2).sum(1)


def flipd(model, y: torch.Tensor, t0: float, probes: int = 1, exact: bool = False, seed: int = 0) -> torch.Tensor:
    """FLIPD (B,) of points y (B, ...) in model space at time t0 (see the module docstring)."""
    tt = torch.full((y.shape[0],), float(t0), dtype=y.dtype, device=y.device)
    _, sigma = model.sde.marginal(tt)
    return y[0].numel() + sigma ** 2 * fokker_planck_terms(model, y, t0, probes, exact, seed)


def _flipd_compute(model, xb, start, lcfg, seed, knobs) -> Dict[str, np.ndarray]:
    y = model.to_model_space(xb)
    cols = [flipd(model, y, math.exp(k), probes=int(lcfg["flipd_probes"]), exact=lcfg["flipd_trace"] == "exact",
                  seed=seed).detach().double().cpu().numpy() for k in knobs]
    return {"flipd": np.stack(cols, axis=1), "knobs": np.tile(np.asarray(knobs, float), (len(xb), 1))}


def _lookup(raw: Dict[str, np.ndarray], key: str, query: np.ndarray) -> np.ndarray:
    """Columns of raw[key] at the stored knob values nearest to ``query``."""
    if len(raw[key]) == 0:
        return np.zeros((0, len(query)))
    stored = raw["knobs"][0]
    idx = np.abs(stored[None, :] - np.asarray(query, float)[:, None]).argmin(axis=1)
    return raw[key][:, idx]


register_estimator(LidEstimator(
    "flipd", needs=("score", "sde"), knob="log_t0", fixed_key="log_t0", grid_key="log_t0_grid",
    settings=lambda lcfg, seed: f"flipd {lcfg['flipd_trace']} {lcfg['flipd_probes']} {seed}",
    compute=_flipd_compute, curve=lambda raw, knobs, lcfg: _lookup(raw, "flipd", knobs),
    progress_label=lambda lcfg: "lid (flipd)", per_knob=True))


@torch.no_grad()
def normal_bundle_singular_values(model, y: torch.Tensor, t: float, k: int, seed: int = 0) -> torch.Tensor:
    """Singular values (B, min(K, D)) of each point's K x D matrix of noise predictions / sqrt(K)."""
    out = []
    gen = _generator(y, seed, 2)
    for i in range(y.shape[0]):
        tt = torch.full((k,), float(t), dtype=y.dtype, device=y.device)
        psi, sigma = model.sde.marginal(tt)
        eps = torch.randn((k, *y.shape[1:]), generator=gen).to(y)
        noisy = _bcast(psi, eps) * y[i:i + 1] + _bcast(sigma, eps) * eps
        preds = []
        for s in range(0, k, 256):
            preds.append(-_bcast(sigma[s:s + 256], eps[s:s + 256]) * model.score(noisy[s:s + 256], tt[s:s + 256]))
        mat = torch.cat(preds).flatten(1).double() / math.sqrt(k)
        out.append(torch.linalg.svdvals(mat))
    return torch.stack(out)


def _nb_compute(model, xb, start, lcfg, seed, knobs) -> Dict[str, np.ndarray]:
    y = model.to_model_space(xb)
    dim = y[0].numel()
    k = int(lcfg["nb_samples"] or 2 * dim)
    sv = normal_bundle_singular_values(model, y, float(lcfg["nb_t"]), k, seed).cpu().numpy()
    return {"singular_values": sv, "dim": np.full(len(xb), dim)}


def _nb_curve(raw, knobs, lcfg) -> np.ndarray:
    sv = raw["singular_values"]
    if len(sv) == 0:
        return np.zeros((0, len(knobs)))
    above = (sv[:, :, None] > np.exp(np.asarray(knobs, float))[None, None, :]).sum(axis=1)
    return (raw["dim"][:, None] - above).astype(float)


register_estimator(LidEstimator(
    "normal_bundle", needs=("score", "sde"), knob="log_threshold", fixed_key="nb_log_threshold",
    grid_key="nb_log_threshold_grid",
    settings=lambda lcfg, seed: f"normal_bundle {lcfg['nb_t']} {lcfg['nb_samples']} {seed}",
    compute=_nb_compute, curve=_nb_curve, progress_label=lambda lcfg: "lid (normal bundle)"))


# --- LIDL (Tempczyk et al. 2022) with a diffusion's Fokker-Planck equation (seed 001) --------------------------
#
# The marginal at time t is the data convolved with noise: p_t(psi y0 + sigma eps), so in the points' own space
# rho_delta(y) = psi^D p_t(psi y) with delta(t) = sigma(t) / psi(t). Along the path y_t = psi(t) y the
# Fokker-Planck equation of dy = f y dt + g dW gives
#
#     d/dt log rho_delta(t)(y) = 1/2 g(t)^2 [ tr grad s(psi y, t) + ||s(psi y, t)||^2 ],
#
# so log rho_delta at every t of a grid follows (up to one constant) by integrating that rate, with no ODE solve
# and no likelihood. LIDL regresses log rho_delta on log delta: for data of dimension d, log rho_delta ~
# (d - D) log delta + c at small delta, so LID = D + slope. The knob is log t (curves over lid.lidl_log_t_grid);
# the slope at a knob value is the least-squares slope over the grid points within lid.lidl_window steps of it.
# (FLIPD is the same rate at one t: d log rho / d log delta = FLIPD - D.)


def _lidl_compute(model, xb, start, lcfg, seed, knobs) -> Dict[str, np.ndarray]:
    """Per point and knob value: d log rho / d log t (smooth in log t, so the trapezoid rule there is accurate)
    and log delta(t) = log sigma - log psi."""
    y = model.to_model_space(xb)
    t = torch.from_numpy(np.exp(np.asarray(knobs, float)))
    psi, sigma = (v.double().numpy() for v in model.sde.marginal(t))
    half_g2_t = 0.5 * model.sde.diffusion_sq(t).double().numpy() * t.numpy()
    cols = [fokker_planck_terms(model, y, float(tk), probes=int(lcfg["flipd_probes"]),
                                exact=lcfg["flipd_trace"] == "exact", seed=seed).detach().double().cpu().numpy()
            for tk in t.tolist()]
    n = len(xb)
    return {"rate": np.stack(cols, axis=1) * half_g2_t[None, :], "log_delta": np.tile(np.log(sigma) - np.log(psi), (n, 1)),
            "knobs": np.tile(np.asarray(knobs, float), (n, 1)), "dim": np.full(n, y[0].numel())}


def lidl_log_rho(raw: Dict[str, np.ndarray]) -> np.ndarray:
    """log rho_delta (N, K) at the stored knobs, relative to the first: the trapezoid rule in log t."""
    knobs = raw["knobs"][0]
    steps = 0.5 * (raw["rate"][:, 1:] + raw["rate"][:, :-1]) * np.diff(knobs)[None, :]
    return np.concatenate([np.zeros((len(raw["rate"]), 1)), np.cumsum(steps, axis=1)], axis=1)


def _lidl_curve(raw, query, lcfg) -> np.ndarray:
    """D + the least-squares slope of log rho_delta on log delta over the stored knobs within lid.lidl_window
    steps of each queried knob value."""
    if len(raw["rate"]) == 0:
        return np.zeros((0, len(query)))
    log_rho, log_delta = lidl_log_rho(raw), raw["log_delta"][0]
    stored, w = raw["knobs"][0], int(lcfg["lidl_window"])
    out = np.empty((len(log_rho), len(query)))
    for j, q in enumerate(np.asarray(query, float)):
        i = int(np.abs(stored - q).argmin())
        sel = slice(max(0, i - w), min(len(stored), i + w + 1))
        xs = log_delta[sel] - log_delta[sel].mean()
        ys = log_rho[:, sel] - log_rho[:, sel].mean(axis=1, keepdims=True)
        out[:, j] = raw["dim"] + (ys * xs[None, :]).sum(1) / (xs ** 2).sum()
    return out


register_estimator(LidEstimator(
    "lidl", needs=("score", "sde"), knob="log_t", fixed_key="lidl_log_t", grid_key="lidl_log_t_grid",
    settings=lambda lcfg, seed: f"lidl {lcfg['flipd_trace']} {lcfg['flipd_probes']} {seed}",
    compute=_lidl_compute, curve=_lidl_curve, progress_label=lambda lcfg: "lid (lidl)", per_knob=True))
