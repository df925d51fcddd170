"""Blends of two in-distribution images (group ``transform``): ``<dataset>:blend=a`` is
round(a x_i + (1 - a) x_j), x_j a fixed, seeded partner of x_i from the same split (never itself).

At a = 1 it is the data itself; a = 0.5 is an even superposition of two images, which is no image of
the dataset yet has its pixel statistics nearly unchanged: a shift in content, not in intensity.
Each blend carries the label of its dominant image (x_i when a >= 0.5, else x_j), so that whether a blend keeps
the meaning can be measured (genood.ood.semantics): at a = 0.5 neither image dominates and a classifier can
agree with x_i's label only about as often as it picks the right one of two.
"""
from __future__ import annotations

import numpy as np

from genood.data.derived import register_derivation, to_uint8


def partners(n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded derangement of range(n): partner[i] != i (n >= 2)."""
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]  # i -> the element before i in a random cycle


@register_derivation("blend", "transform", "a x_i + (1 - a) x_j with a fixed partner j of the same split",
                     value="float", check=lambda a: None if 0.0 <= a <= 1.0 else "a must be in [0, 1]")
def blend(images, labels, a, rng):
    j = partners(len(images), rng)
    kept = None if labels is None else (labels if a >= 0.5 else labels[j])
    return to_uint8(a * images.astype(np.float64) + (1.0 - a) * images[j]), kept
