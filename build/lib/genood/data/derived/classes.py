"""Class splits (group ``near``): ``<dataset>:classes=<list>`` keeps the images of the listed classes.

Train a model on ``fmnist:classes=0-4`` and score ``fmnist:classes=5-9`` as OOD: the same photographs,
framing and pixel statistics, other objects. This is semantic ("near") OOD, the hardest kind for a
likelihood, and the kind no pixel statistic can find. A list is ranges and single classes joined by
commas (``0-4``, ``0,2,4,6,8``, ``0-2,7``); every listed class must occur in the base's labels.
"""
from __future__ import annotations

import numpy as np

from genood.data.derived import DerivationError, register_derivation


@register_derivation("classes", "near", "the images of the listed classes only (train on some, score the rest)",
                     value="classes")
def keep_classes(images, labels, classes, rng):
    if labels is None:
        raise DerivationError("'classes=' needs a labelled base dataset, and this one has no labels")
    have = set(np.unique(labels).tolist())
    missing = [c for c in classes if c not in have]
    if missing:
        raise DerivationError(f"classes {', '.join(map(str, missing))} do not occur in the base's labels "
                              f"({', '.join(map(str, sorted(have)))})")
    keep = np.isin(labels, np.asarray(classes))
    return images[keep], labels[keep]
