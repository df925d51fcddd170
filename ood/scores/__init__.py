"""OOD scores, registered by name. A new score is one module here that calls :func:`register`.

A score is a function ``(model, x, cache) -> Tensor[B]`` over one batch ``x`` (B,C,H,W) in
data space [0,256); ``cache`` is a per-batch dict so scores can share work (log_prob is
computed once per batch). ``higher_is_in`` says how to orient the stored column for
detection: metrics use ``column`` if True and ``-column`` if False.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch


@dataclass(frozen=True)
class Score:
    name: str
    fn: Optional[Callable[[object, torch.Tensor, dict], torch.Tensor]]
    higher_is_in: bool
    unit: str
    description: str
    per_batch: bool = True  # False: computed by a split-level stage of the runner (e.g. LID)


REGISTRY: Dict[str, Score] = {}


def register(name: str, higher_is_in: bool, unit: str, description: str):
    def wrap(fn):
        REGISTRY[name] = Score(name, fn, higher_is_in, unit, description)
        return fn
    return wrap


def register_stage(name: str, higher_is_in: bool, unit: str, description: str) -> None:
    """Register a score that a runner stage computes over whole splits (not batch by batch)."""
    REGISTRY[name] = Score(name, None, higher_is_in, unit, description, per_batch=False)


def get(name: str) -> Score:
    if name not in REGISTRY:
        raise KeyError(f"Unknown OOD score '{name}' in ood.scores: use one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def oriented(name: str, column):
    """The column oriented so that higher = more in-distribution."""
    return column if get(name).higher_is_in else -column


from ood.scores import likelihood  # noqa: E402,F401  (registers its scores)

register_stage("lid", higher_is_in=True, unit="dimensions",
               description="Jacobian-threshold LID of a flow at the chosen tau (see ood.lid)")
