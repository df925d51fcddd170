"""Pixel statistics of the stored image: model-free reference baselines.

* ``intensity_mean``: the mean pixel value (0..255) of the stored image;
* ``intensity_std``: the standard deviation of its pixel values;
* ``saturation``: the fraction of its pixels at 0 or 255.

None uses a model. With the codec length (``codec_bits_per_dim``) they are the baselines every learned
detector is read against (``ood.baselines``, :mod:`ood.baselines`): a detector that a pixel statistic beats
on some set has learned nothing useful there. They have no natural direction (MNIST is darker than
Fashion-MNIST, a constant image is both), so their p-values against in_val are two-sided
(``tails="both"``); the stored orientation (higher = in-distribution) is a convention for the single-score rows.
"""
from __future__ import annotations

import torch

from genood.ood.scores import register
from genood.ood.scores.complexity import stored_images


def _stored(x: torch.Tensor, cache: dict) -> torch.Tensor:
    """The stored uint8 values (B, D) as float64, once per batch."""
    if "stored_flat" not in cache:
        cache["stored_flat"] = torch.from_numpy(stored_images(x)).reshape(x.shape[0], -1).double()
    return cache["stored_flat"]


@register("intensity_mean", higher_is_in=True, unit="pixel value", tails="both", model_free=True,
          description="mean pixel value of the stored image (0..255); no model")
def intensity_mean(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return _stored(x, cache).mean(dim=1)


@register("intensity_std", higher_is_in=True, unit="pixel value", tails="both", model_free=True,
          description="standard deviation of the stored image's pixel values; no model")
def intensity_std(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return _stored(x, cache).std(dim=1, unbiased=False)


@register("saturation", higher_is_in=True, unit="fraction", tails="both", model_free=True,
          description="fraction of the stored image's pixels at 0 or 255; no model")
def saturation(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    v = _stored(x, cache)
    return ((v == 0) | (v == 255)).double().mean(dim=1)
