"""LLR>k (Havtorn et al. 2021, seed 004): the likelihood ratio between a hierarchical VAE's full bound and
its bound with the k lowest latents taken from the conditional prior, one column per k.

LLR>k(x) = L(x) - L>k(x), both importance-weighted bounds with the same S samples and the same posterior
noise (so LLR>0 = 0 exactly). Out-of-distribution data has in-distribution low-level features: the full
bound explains it well through the low latents, while L>k, which must explain it from the high latents,
does not, so LLR>k is larger for OOD data: each column is oriented with higher = more OOD.

Which k: each k is a column and a detector of its own. The label-free rule (flag a point when any k is far
in in_val's tail) is the min-p combination over the vector: ``combined.sets: [[llr]]`` gives
``minp:llr`` (and a density over the vector, ``density:llr``). The paper's pick of the best k by test AUROC
is the ``best_component`` detector's ``best:llr`` entry, marked ``optimistic``.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from genood.ood.scores import register


def _ks(cfg: Dict[str, Any]) -> List[int]:
    return [int(k) for k in (cfg.get("llr", {}) or {}).get("ks", [1, 2])]


def _labels(cfg: Dict[str, Any]) -> List[str]:
    return [f"k={k}" for k in _ks(cfg)]


@register("llr", higher_is_in=False, unit="nats",
          description="L(x) - L>k(x) per k (Havtorn et al.'s LLR>k), one column per k; higher = more OOD",
          needs=("bounds",), columns=_labels)
def llr(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    cfg = cache.get("cfg", {})
    lcfg = cfg.get("llr", {}) or {}
    ks = _ks(cfg)
    samples = lcfg.get("samples") or None
    same = samples is None or int(samples) == int(model.bound_cfg["samples"])
    if same and "log_prob" in cache:
        # the same S and noise as log_prob: L is the log-likelihood column's value, already computed for this batch
        return cache["log_prob"][:, None] - model.bounds(x, ks)
    both = model.bounds(x, [0] + ks, samples=None if same else int(samples))  # one encoder pass for L and every L>k
    if same:
        cache["log_prob"] = both[:, 0]  # equal to model.log_prob(x): the likelihood scores reuse it
    return both[:, :1] - both[:, 1:]
