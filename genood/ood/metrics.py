"""Detection metrics. In-distribution is the positive class; scores are oriented so that
higher means "more in-distribution". Nothing is ever flipped per dataset pair: an AUROC
below 0.5 is reported as it is (for plain likelihood it is the paradox).

Definitions:
* ``auroc``: P(s_in > s_ood) + 0.5 P(s_in = s_ood) (Mann-Whitney; area under the ROC curve).
* ``aupr_in``: average precision with in-distribution as positive (sklearn's step-wise
  definition, sum over thresholds of (R_k - R_{k-1}) P_k).
* ``aupr_out``: average precision with OOD as positive and the score negated.
* ``fpr95``: the fraction of OOD samples accepted (score >= t) at the threshold t that
  accepts 95% of in-distribution test samples, i.e. the largest t with TPR >= 0.95.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy.stats import rankdata

__all__ = ["auroc", "average_precision", "fpr_at_tpr", "detection_metrics", "roc_curve_points", "lid_error_metrics",
           "METRIC_KEYS", "bootstrap_metrics", "percentile_interval", "with_intervals"]


def _clean(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("metrics need at least one in-distribution and one OOD score.")
    if np.isnan(a).any():
        raise ValueError("scores contain NaN; fix the score before computing metrics.")
    return a


def auroc(s_in, s_ood) -> float:
    """Area under the ROC curve, in-distribution positive; ties count one half."""
    s_in, s_ood = _clean(s_in), _clean(s_ood)
    ranks = rankdata(np.concatenate([s_in, s_ood]))  # average ranks handle ties
    n_in, n_ood = s_in.size, s_ood.size
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_ood))


def average_precision(s_pos, s_neg) -> float:
    """Average precision of ranking positives above negatives (sklearn's definition)."""
    s_pos, s_neg = _clean(s_pos), _clean(s_neg)
    scores = np.concatenate([s_pos, s_neg])
    labels = np.concatenate([np.ones(s_pos.size), np.zeros(s_neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # one threshold per distinct score value
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]  # not np.diff: -inf - -inf is nan
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / s_pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(s_in, s_ood, tpr: float = 0.95) -> float:
    """Fraction of OOD with score >= t, t the largest threshold accepting >= ``tpr`` of in-distribution."""
    s_in, s_ood = _clean(s_in), _clean(s_ood)
    k = int(math.ceil(tpr * s_in.size))
    t = np.sort(s_in)[::-1][k - 1]
    return float(np.mean(s_ood >= t))


def detection_metrics(s_in, s_ood) -> Dict[str, float]:
    """All metrics for one score: auroc, aupr_in, aupr_out, fpr95, n_in, n_ood."""
    s_in, s_ood = _clean(s_in), _clean(s_ood)
    return {"auroc": auroc(s_in, s_ood), "aupr_in": average_precision(s_in, s_ood),
            "aupr_out": average_precision(-s_ood, -s_in), "fpr95": fpr_at_tpr(s_in, s_ood),
            "n_in": int(s_in.size), "n_ood": int(s_ood.size)}


def roc_curve_points(s_in, s_ood):
    """(fpr, tpr) arrays of the ROC curve from (0,0) to (1,1), for plotting."""
    s_in, s_ood = _clean(s_in), _clean(s_ood)
    thresholds = np.unique(np.concatenate([s_in, s_ood]))[::-1]
    tpr = np.r_[0.0, np.searchsorted(-np.sort(s_in)[::-1], -thresholds, side="right") / s_in.size]
    fpr = np.r_[0.0, np.searchsorted(-np.sort(s_ood)[::-1], -thresholds, side="right") / s_ood.size]
    return fpr, tpr


def lid_error_metrics(estimate, truth) -> Dict[str, object]:
    """How an LID estimate (N,) matches the known LID (N,) of points on synthetic manifolds: mean absolute
    error overall and per manifold piece (true LID value), fraction within +-1, Spearman rank correlation
    (None when either side is constant), mean estimate per piece."""
    from scipy.stats import spearmanr

    est, true = np.asarray(estimate, dtype=float), np.asarray(truth, dtype=float)
    keep = ~np.isnan(est)
    est, true = est[keep], true[keep]
    err = np.abs(est - true)
    rho = None
    if est.size > 1 and np.ptp(est) > 0 and np.ptp(true) > 0:
        rho = float(spearmanr(est, true).statistic)
    pieces = sorted(set(true.tolist()))
    return {"mae": float(err.mean()) if err.size else None, "within_1": float((err <= 1.0).mean()) if err.size else None,
            "spearman": rho, "n": int(est.size),
            "mae_by_true_lid": {f"{p:g}": float(err[true == p].mean()) for p in pieces},
            "mean_by_true_lid": {f"{p:g}": float(est[true == p].mean()) for p in pieces}}


# ---------------------------------------------------------------------------------------------------------
# Bootstrap intervals. A stratified bootstrap resamples the in-distribution and the OOD scores separately
# (each with replacement, to its own size). A resample is a vector of multiplicities, so every metric of a
# resample is computed on the original sorted scores with weights: one sort, then O(n + m) per resample,
# exactly the metric of the resampled data (ties included).

METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def _multiplicities(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """(b, n) counts of each point in b resamples of size n drawn with replacement."""
    draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _weighted_ap(weights, tp, fp) -> np.ndarray:
    """Average precision of weighted resamples: sum_i w_i precision_i / sum_i w_i over the positive points, with
    precision at the end of each point's tie group (``tp``, ``fp``: (b, n) weights of positives and negatives
    scoring at least as well). Summing per point gives each distinct threshold its recall increment."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return (weights * precision).sum(axis=1) / weights.sum(axis=1)


def _cumulative(weights: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(b, n + 1): 0 then the running sums of ``weights`` taken in ``order`` (ascending scores)."""
    out = np.zeros((weights.shape[0], weights.shape[1] + 1))
    np.cumsum(weights[:, order], axis=1, out=out[:, 1:])
    return out


def bootstrap_metrics(s_in, s_ood, b: int = 1000, seed: int = 0, chunk: int = 64) -> Dict[str, np.ndarray]:
    """Each metric of :func:`detection_metrics` over ``b`` stratified bootstrap resamples: {key: (b,) array}.

    Every metric is a sum over points of the resample weights times a function of the running weights of the
    two sides at the point's score, so one sort of each side and O(b (n + m)) work serve them all."""
    s_in, s_ood = _clean(s_in), _clean(s_ood)
    n, m = s_in.size, s_ood.size
    rng = np.random.default_rng([int(seed), 0xB007])
    order_ood, order_in = np.argsort(s_ood, kind="mergesort"), np.argsort(s_in, kind="mergesort")
    o, i_asc = s_ood[order_ood], s_in[order_in]
    ood_below, ood_upto = np.searchsorted(o, s_in, side="left"), np.searchsorted(o, s_in, side="right")
    in_below = np.searchsorted(i_asc, s_in, side="left")       # in-dist points scoring below each in-dist point
    ood_upto_o = np.searchsorted(o, s_ood, side="right")        # OOD points scoring at most each OOD point
    in_upto_o = np.searchsorted(i_asc, s_ood, side="right")     # in-dist points scoring at most each OOD point
    # FPR95: in-distribution scores sorted descending
    order_desc = np.argsort(-s_in, kind="mergesort")
    in_desc = s_in[order_desc]
    k = int(math.ceil(0.95 * n))
    out = {key: [] for key in METRIC_KEYS}
    for start in range(0, b, chunk):
        c = min(chunk, b - start)
        w, v = _multiplicities(rng, n, c), _multiplicities(rng, m, c)
        wc, vc = _cumulative(w, order_in), _cumulative(v, order_ood)
        big_w, big_v = wc[:, -1:], vc[:, -1:]
        below, upto = vc[:, ood_below], vc[:, ood_upto]
        out["auroc"].append((w * (below + 0.5 * (upto - below))).sum(axis=1) / (big_w[:, 0] * big_v[:, 0]))
        out["aupr_in"].append(_weighted_ap(w, big_w - wc[:, in_below], big_v - below))
        out["aupr_out"].append(_weighted_ap(v, vc[:, ood_upto_o], wc[:, in_upto_o]))
        cum = np.cumsum(w[:, order_desc], axis=1)
        t = in_desc[np.argmax(cum >= k, axis=1)]
        pos = np.searchsorted(o, t, side="left")
        out["fpr95"].append((vc[:, -1] - vc[np.arange(c), pos]) / m)
    return {key: np.concatenate(vals) for key, vals in out.items()}


def percentile_interval(samples, level: float = 0.95) -> list:
    """[low, high] percentile interval of bootstrap samples (NaNs ignored)."""
    a = (1.0 - float(level)) / 2.0
    lo, hi = np.nanquantile(np.asarray(samples, dtype=float), [a, 1.0 - a])
    return [float(lo), float(hi)]


def with_intervals(entry: Dict[str, object], s_in, s_ood, b: int, level: float, seed: int) -> Dict[str, object]:
    """``entry`` plus ``<metric>_ci`` = [low, high] for every metric it has (``b`` = 0: unchanged)."""
    if not b:
        return entry
    boot = bootstrap_metrics(s_in, s_ood, b, seed)
    out = dict(entry)
    for key in METRIC_KEYS:
        if out.get(key) is not None:
            out[f"{key}_ci"] = percentile_interval(boot[key], level)
    out.update(bootstrap=int(b), confidence=float(level))
    return out
