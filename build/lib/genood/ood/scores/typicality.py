"""Typicality (Nalisnick et al. 2019): how far a point's negative log-likelihood is from the model's entropy.

H is estimated as the mean of -log p(x) over ``in_val`` (held-out in-distribution points, never test or
OOD data). The per-point score is -| -log p(x) - H | in nats, higher = more typical = more
in-distribution. The batch test of the paper (M points at a time, their mean NLL against H) is the
detector ``typicality_batch`` (``typicality.batch_sizes``), registered below.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from genood.ood.detectors import TaskView, register_detector, scored
from genood.ood.scores import register_derived


def entropy_estimate(table) -> float:
    """H = mean of -log p(x) over the in_val rows (the only rows it ever reads)."""
    val = table.loc[table["split"] == "in_val", "log_likelihood"].to_numpy(dtype=float)
    val = val[~np.isnan(val)]
    if val.size == 0:
        raise ValueError("typicality needs in_val log-likelihoods; set data.val_fraction > 0 and ood.n_in_val >= 1.")
    return float(-val.mean())


@register_derived("typicality", higher_is_in=True, unit="nats",
                  description="-| -log p(x) - H |, H the mean NLL of in_val (Nalisnick et al.); higher = more typical",
                  requires=("log_likelihood",))
def typicality(table, cfg: Dict[str, Any], info: Dict[str, Any] = None):
    h = entropy_estimate(table)
    nll = -table["log_likelihood"].to_numpy(dtype=float)
    return -np.abs(nll - h), {"entropy_nats": h, "n_fit": int((table["split"] == "in_val").sum()), "fitted_on": "in_val"}


def batch_statistic(nll: np.ndarray, h: float, m: int, seed: int, salt: int) -> np.ndarray:
    """-| mean NLL - H | of each of floor(N / m) disjoint random groups of m points (seeded)."""
    perm = np.random.default_rng([int(seed), 0x7E57, salt, m]).permutation(nll.size)
    groups = nll[perm[: (nll.size // m) * m]].reshape(-1, m)
    return -np.abs(groups.mean(axis=1) - h)


@register_detector("typicality_batch", optimistic=False,
                   description="the typicality test on batches of M points (typicality.batch_sizes): the batch's mean "
                               "NLL against H from in_val; AUROC over batches of in-distribution vs OOD points")
def typicality_batch(view: TaskView) -> Dict[str, Dict[str, Any]]:
    if "typicality" not in view.names or "log_likelihood" not in view.names:
        return {}
    val = view.in_val["log_likelihood"].to_numpy(dtype=float)
    if not val.size:
        return {}
    h = float(-val.mean())
    seed = int(view.cfg.get("run", {}).get("seed", 0))
    out = {}
    for m in view.cfg.get("typicality", {}).get("batch_sizes", [10]):
        m = int(m)
        pos = batch_statistic(-view.positive["log_likelihood"].to_numpy(dtype=float), h, m, seed, 1)
        neg = batch_statistic(-view.negative["log_likelihood"].to_numpy(dtype=float), h, m, seed, 2)
        if pos.size and neg.size:
            out[f"typicality_batch_m{m}"] = dict(scored(view, pos, neg), batch_size=m, entropy_nats=h, per="batch")
    return out
