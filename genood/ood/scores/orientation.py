"""Orientation: does the model find the image likelier as given than mirrored or turned?

For each transform T of the image plane (``orientation.transforms``: ``hflip``, ``vflip``, ``rot90``, ``rot180``,
``rot270``) the column ``orientation@<T>`` is ``log p(x) - log p(T x)`` in nats, both likelihoods from the same
model on the same (dequantized) pixels, so whatever makes an image cheap or expensive to code (its
complexity, its background) cancels and what is left is how much the model prefers the orientation it was
given. A training set photographed or drawn in one orientation makes the difference positive on
in-distribution images, near 0 on symmetric ones and negative on mirrored or turned ones: higher = more
in-distribution (the lower tail is the unusual one). Label-free: nothing is fitted; combinations fit their
densities on in_val as for every score. Costs one more ``log_prob`` per transform and batch.

The idea is the test-time-transformation consistency of self-supervised detectors (e.g. Hendrycks et al.
2019's rotation prediction) read through a likelihood instead of a trained head. Stochastic bounds (an
HVAE's ELBO, its noise seeded by each image's content) make each column a difference of two independent draws:
their noise adds to the score's spread (more ``bound.samples`` shrink it).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from genood.ood.scores import ScoreUnavailable, register
from genood.ood.scores.likelihood import _log_prob

TRANSFORMS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
}


def _labels(cfg: Dict[str, Any]) -> List[str]:
    names = list((cfg.get("orientation", {}) or {}).get("transforms", ["hflip", "vflip", "rot90"]))
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown or not names:
        raise ScoreUnavailable(f"orientation.transforms has {'unknown transform(s) ' + str(unknown) if unknown else 'none'}"
                               f": use some of {', '.join(TRANSFORMS)}.")
    return names


@register("orientation", higher_is_in=True, unit="nats",
          description="log p(x) - log p(T x) for mirrored and turned versions T x of the image (orientation.transforms),"
                      " one column each; higher = the model prefers the image as given", needs=("log_prob",),
          columns=_labels)
def orientation(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    labels = _labels(cache.get("cfg", {}))
    if x.dim() != 4:
        raise ScoreUnavailable("Score 'orientation' (ood.scores) needs images (B,C,H,W); this dataset holds vectors: "
                               "drop 'orientation' from ood.scores.")
    turns = [t for t in labels if t in ("rot90", "rot270")]
    if turns and x.shape[-1] != x.shape[-2]:
        raise ScoreUnavailable(f"orientation.transforms {turns} turn the image by a quarter, which needs square images "
                               f"({tuple(x.shape[-2:])} here): use hflip, vflip and rot180.")
    base = _log_prob(model, x, cache)
    return torch.stack([base - model.log_prob(TRANSFORMS[t](x).contiguous()) for t in labels], dim=1)
