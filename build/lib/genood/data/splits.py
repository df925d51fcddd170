"""The in-distribution validation split: a seeded fraction of the training split held out from training.

Everything fitted or thresholded without OOD labels (the honest dual threshold, typicality's entropy,
combined detectors, background-model selection) is fitted on ``in_val`` rows only; models never
train on them. The split depends on the number of training points, ``data.val_fraction`` and
``run.seed`` only, so ``train.py`` and ``main_ood.py`` hold out the very same points.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def holdout(n: int, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train positions, validation positions), both sorted, disjoint and covering ``range(n)``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {fraction!r}.")
    n_val = int(round(fraction * n))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= n:
        raise ValueError(f"data.val_fraction={fraction} leaves no training points out of {n}; lower it.")
    perm = np.random.default_rng([int(seed), 0x7A1]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
