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
