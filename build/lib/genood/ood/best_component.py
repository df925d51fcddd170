"""The best component of a vector score, chosen by its test AUROC: an ``optimistic`` detector.

Papers often report the best of several variants of a score (seed 004's LLR>k at the best k, a single
noise level of MSMA) chosen by looking at the test AUROC. This detector reproduces that number for every
vector score (columns ``<name>@<label>``) as the entry ``best:<name>``, says which component it chose
(``selected``), and is ``optimistic``: the OOD labels chose it, so it is an upper bound and never the
headline. The label-free counterparts are the combined detectors over the same vector
(``combined.sets: [[<name>]]``: ``minp:<name>``, ``density:<name>``).
"""
from __future__ import annotations

from typing import Any, Dict

from genood.ood.detectors import TaskView, present, register_detector, scored


@register_detector("best_component", optimistic=True,
                   description="per vector score, the component with the highest test AUROC (chosen with OOD labels)")
def best_component(view: TaskView) -> Dict[str, Dict[str, Any]]:
    from genood.ood import scores as score_registry

    groups: Dict[str, list] = {}
    for name in view.names:
        if "@" in name:
            groups.setdefault(name.split("@", 1)[0], []).append(name)
    out = {}
    for base, members in groups.items():
        if len(members) < 2:
            continue
        best = None
        for col in members:
            pos, neg = present(view, col)
            if not (pos.size and neg.size):
                continue
            entry = scored(view, score_registry.oriented(col, pos), score_registry.oriented(col, neg))
            if best is None or entry["auroc"] > best[1]["auroc"]:
                best = (col, entry)
        if best is not None:
            out[f"best:{base}"] = dict(best[1], selected=best[0], candidates=len(members))
    return out
