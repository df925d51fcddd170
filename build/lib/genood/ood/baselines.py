"""Model-free reference baselines as detectors: what a learned detector must beat to have learned anything.

For every model-free score in the table (``ood.baselines``: the codec length, the mean and standard
deviation of the pixel values, the fraction of saturated pixels; see :mod:`ood.scores.pixel_statistics`),
``baseline:<score>`` is its two-sided p-value against in_val (log min(1, 2 min(left, right))): a point is
OOD when the statistic sits in either tail of the held-out in-distribution data. ``baseline:all`` is
Fisher's combination of those p-values. Nothing here sees test or OOD rows when fitting, and every entry is
``model_free: true``; the aggregation marks a learned detector that does not beat the best of them on a set.
"""
from __future__ import annotations

from typing import Any, Dict, List

from genood.ood.detectors import TaskView, register_detector, scored


def model_free_columns(view: TaskView) -> List[str]:
    from genood.ood import scores as score_registry

    return [n for n in view.names if score_registry.model_free(n)]


@register_detector("baselines", optimistic=False,
                   description="model-free baselines: each pixel statistic's two-sided p-value against in_val, and "
                               "Fisher's combination of them")
def baselines(view: TaskView) -> Dict[str, Dict[str, Any]]:
    from genood.ood.combined import _complete, fit_log_pvalues, oriented_matrix  # combined imports the detectors module

    names = model_free_columns(view)
    out: Dict[str, Dict[str, Any]] = {}
    sets = [[n] for n in names] + ([names] if len(names) > 1 else [])
    for members in sets:
        val, pos, neg = (_complete(f, members) for f in (view.in_val, view.positive, view.negative))
        if len(val) < 4 or not len(pos) or not len(neg):
            continue
        log_p = fit_log_pvalues(oriented_matrix(val, members), [True] * len(members))
        statistic = (lambda f: log_p(oriented_matrix(f, members))[:, 0]) if len(members) == 1 else \
            (lambda f: 2.0 * log_p(oriented_matrix(f, members)).sum(axis=1))
        key = f"baseline:{members[0]}" if len(members) == 1 else "baseline:all"
        out[key] = dict(scored(view, statistic(pos), statistic(neg)), scores=list(members), fitted_on="in_val",
                        n_fit=int(len(val)), two_sided=list(members))
    return out


__all__ = ["baselines", "model_free_columns"]
