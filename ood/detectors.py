"""Single- and dual-threshold detectors.

Dual threshold (seeds 000/001): a point is in-distribution iff ``score_a > t1`` and
``score_b >= t2`` (log-likelihood and LID). Its ROC is the upper-left envelope of the
(FPR, TPR) operating points over all threshold pairs; its AUROC is the area under that
envelope taken as a step function, ``AUROC = integral_0^1 max{TPR : FPR <= f} df``. With one
score constant this is exactly the single-score AUROC (for untied scores). It picks both
thresholds with the OOD labels in hand, so it is an optimistic upper envelope.

The honest variant fixes ``t2`` from in-distribution *training* data alone (the quantile of
score_b that keeps ``keep`` of the training points) and sweeps only ``t1``: points rejected
by ``t2`` get score -inf; this is an ordinary single-score AUROC, comparable to any other.

Exact algorithm: only values of ``score_b`` taken by in-distribution points matter as ``t2``
candidates (K of them; LID is an integer, so K <= D + 1). For each candidate, the best TPR at
"at most k OOD accepted" for every k comes from one sorted search, so the cost is
O(K (n + m) log(n + m)) time and O(n + m) memory.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ood.metrics import _clean, detection_metrics


def dual_threshold_envelope(a_in, b_in, a_ood, b_ood) -> np.ndarray:
    """``g[k]`` = the highest TPR reachable while accepting at most k of the m OOD points, k = 0..m."""
    a_in, b_in, a_ood, b_ood = (_clean(v) for v in (a_in, b_in, a_ood, b_ood))
    n, m = a_in.size, a_ood.size
    best = np.zeros(m + 1)
    for t2 in np.unique(b_in):
        ins = np.sort(a_in[b_in >= t2])
        oods = np.sort(a_ood[b_ood >= t2])[::-1]  # descending
        # accepting at most k OOD: t1 = the (k+1)-th largest passing OOD score (accept a > t1)
        k = np.arange(m + 1)
        t1 = np.where(k < oods.size, oods[np.minimum(k, max(oods.size - 1, 0))] if oods.size else -np.inf, -np.inf)
        tpr = (ins.size - np.searchsorted(ins, t1, side="right")) / n
        np.maximum(best, tpr, out=best)
    return best


def dual_threshold_auroc(a_in, b_in, a_ood, b_ood) -> float:
    """Area under the dual-threshold ROC envelope (step function; see module docstring)."""
    g = dual_threshold_envelope(a_in, b_in, a_ood, b_ood)
    return float(g[:-1].mean())


def dual_threshold_fpr95(a_in, b_in, a_ood, b_ood) -> float:
    """Smallest OOD acceptance rate at which some threshold pair accepts >= 95% of in-distribution."""
    g = dual_threshold_envelope(a_in, b_in, a_ood, b_ood)
    m = g.size - 1
    return float(np.argmax(g >= 0.95) / m) if (g >= 0.95).any() else 1.0


def fixed_second_threshold(b_train, keep: float = 0.95) -> float:
    """The ``t2`` that keeps (at least) ``keep`` of the in-distribution training points (b >= t2)."""
    b_train = np.sort(_clean(b_train))
    return float(b_train[int(np.floor((1.0 - keep) * b_train.size))])


def gated_score(a, b, t2: float) -> np.ndarray:
    """Score ``a`` where ``b >= t2``, -inf elsewhere: the honest dual-threshold detector's score."""
    a, b = _clean(a), _clean(b)
    return np.where(b >= t2, a, -np.inf)


def dual_threshold_metrics(a_in, b_in, a_ood, b_ood, b_train, keep: float = 0.95) -> Dict[str, Dict[str, float]]:
    """metrics.json entries for the dual-threshold detectors (optimistic envelope and honest variant)."""
    n_in, n_ood = int(np.size(a_in)), int(np.size(a_ood))
    t2 = fixed_second_threshold(b_train, keep)
    honest = detection_metrics(gated_score(a_in, b_in, t2), gated_score(a_ood, b_ood, t2))
    honest["t2"] = t2
    return {
        "envelope": {"auroc": dual_threshold_auroc(a_in, b_in, a_ood, b_ood),
                     "fpr95": dual_threshold_fpr95(a_in, b_in, a_ood, b_ood),
                     "n_in": n_in, "n_ood": n_ood, "optimistic": True},
        "fixed": honest,
    }
