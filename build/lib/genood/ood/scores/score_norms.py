"""Score norms at several noise levels (MSMA, Mahmood et al. 2021): ||s(x, t_k)||_2 for K times t_k.

A vector score for diffusions: one column ``score_norms@t=<t_k>`` per level (log-spaced from
``score_norms.t_min`` to ``score_norms.t_max``) holding the norm of s(y, t_k) = grad_y log p_t(y), the
network's score of the noised marginal evaluated at the scaled input y itself (as MSMA evaluates its
noise-conditional score network). Far from the data the score is large, so each component is
oriented with higher = more OOD. Alone each level is a detector; the MSMA detector is a density
fitted to the whole vector on in_val: ``combined.sets: [[score_norms]]``.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

from genood.ood.scores import register


def levels(cfg: Dict[str, Any]) -> np.ndarray:
    scfg = cfg.get("score_norms", {})
    return np.geomspace(float(scfg.get("t_min", 1e-3)), float(scfg.get("t_max", 1.0)), int(scfg.get("levels", 10)))


def _labels(cfg: Dict[str, Any]) -> List[str]:
    return [f"t={t:.3g}" for t in levels(cfg)]


@register("score_norms", higher_is_in=False, unit="per unit of scaled data",
          description="||s(x, t_k)||_2 at K noise levels (MSMA), one column per level; higher = more OOD",
          needs=("score", "sde"), columns=_labels)
def score_norms(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    y = model.to_model_space(x)
    out = []
    for t in levels(cache.get("cfg", {})):
        s = model.score(y, torch.full((y.shape[0],), float(t), device=y.device, dtype=y.dtype))
        out.append(s.flatten(1).norm(dim=1))
    return torch.stack(out, dim=1)
