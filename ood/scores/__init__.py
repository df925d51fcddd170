"""OOD scores, registered by name. A new score is one module here that calls :func:`register`.

A score is a function ``(model, x, cache) -> Tensor[B]`` over one batch ``x`` (B,C,H,W) in
data space [0,256); ``cache`` is a per-batch dict so scores can share work (log_prob is
computed once per batch). ``higher_is_in`` says how to orient the stored column for
detection: metrics use ``column`` if True and ``-column`` if False.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[object, torch.Tensor, dict], torch.Tensor]
    higher_is_in: bool
    unit: str
    description: str


REGISTRY: Dict[str, Score] = {}


def register(name: str, higher_is_in: bool, unit: str, description: str):
    def wrap(fn):
        REGISTRY[name] = Score(name, fn, higher_is_in, unit, description)
        return fn
    return wrap


def get(name: str) -> Score:
    if name not in REGISTRY:
        raise KeyError(f"Unknown OOD score '{name}' in ood.scores: use one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def oriented(name: str, column):
    """The column oriented so that higher = more in-distribution."""
    return column if get(name).higher_is_in else -column


from ood.scores import likelihood  # noqa: E402,F401  (registers its scores)
