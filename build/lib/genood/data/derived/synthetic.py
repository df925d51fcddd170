"""Synthetic far-OOD sets (group ``far``): ``<dataset>:<kind>[=<value>]`` makes as many images as the base's
split has, of its size and channels, matched to its pixel statistics where that is said.

=====================  ======================================================================
``uniform``            every pixel uniform on 0..255
``gaussian``           every pixel N(m, s), m and s the base split's mean and standard deviation
``bernoulli``          every pixel 255 with probability m / 255, else 0 (the base's mean)
``constant``           one value per image, uniform on 0..255
``checkerboard=p``     squares of side p pixels, two random grey levels, random phase
``stripes=p``          stripes of width p pixels, horizontal or vertical, two random grey levels
``blobs=s``            uniform noise smoothed by a Gaussian of s pixels, stretched to 0..255
=====================  ======================================================================

These test whether a detector finds the obvious: a likelihood model often does not (constant images
get high likelihood under most image models).
"""
from __future__ import annotations

import numpy as np

from genood.data.derived import register_derivation, to_uint8


def _period(p):
    return None if p >= 1 else "it must be 1 or more"


@register_derivation("uniform", "far", "uniform noise on 0..255")
def uniform(images, labels, value, rng):
    return rng.integers(0, 256, images.shape, dtype=np.uint8), None


@register_derivation("gaussian", "far", "Gaussian noise with the base split's pixel mean and standard deviation")
def gaussian(images, labels, value, rng):
    m, s = float(images.mean()), float(images.std())
    return to_uint8(rng.normal(m, s, images.shape)), None


@register_derivation("bernoulli", "far", "binary noise: 255 with probability mean/255 of the base split")
def bernoulli(images, labels, value, rng):
    p = float(images.mean()) / 255.0
    return np.where(rng.random(images.shape) < p, 255, 0).astype(np.uint8), None


@register_derivation("constant", "far", "one grey level per image, uniform on 0..255")
def constant(images, labels, value, rng):
    levels = rng.integers(0, 256, len(images), dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], images.shape).copy(), None


def _two_levels(rng, n):
    dark = rng.integers(0, 128, n)
    light = rng.integers(128, 256, n)
    return dark[:, None, None, None], light[:, None, None, None]


@register_derivation("checkerboard", "far", "squares of side p pixels in two random grey levels, random phase",
                     value="int", check=_period)
def checkerboard(images, labels, p, rng):
    n, h, w, c = images.shape
    oy, ox = rng.integers(0, 2 * p, n), rng.integers(0, 2 * p, n)
    yy = (np.arange(h)[None, :, None] + oy[:, None, None]) // p
    xx = (np.arange(w)[None, None, :] + ox[:, None, None]) // p
    on = ((yy + xx) % 2).astype(bool)[..., None]
    dark, light = _two_levels(rng, n)
    return np.broadcast_to(np.where(on, light, dark), images.shape).astype(np.uint8), None


@register_derivation("stripes", "far", "stripes of width p pixels, horizontal or vertical, two random grey levels",
                     value="int", check=_period)
def stripes(images, labels, p, rng):
    n, h, w, c = images.shape
    offset = rng.integers(0, 2 * p, n)
    vertical = rng.random(n) < 0.5
    along = np.where(vertical[:, None, None], np.arange(w)[None, None, :], np.arange(h)[None, :, None])
    on = (((along + offset[:, None, None]) // p) % 2).astype(bool)[..., None]
    dark, light = _two_levels(rng, n)
    return np.broadcast_to(np.where(on, light, dark), images.shape).astype(np.uint8), None


@register_derivation("blobs", "far", "uniform noise smoothed by a Gaussian of s pixels, stretched to 0..255",
                     value="float", check=lambda s: None if s > 0 else "it must be above 0")
def blobs(images, labels, s, rng):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.random(images.shape), sigma=(0, s, s, 0), mode="wrap")
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    return to_uint8(255.0 * (x - lo) / np.maximum(hi - lo, 1e-12)), None
