"""Transforms of a dataset's images (group ``transform``): ``<dataset>:<transform>[=<strength>]``.

Each keeps the content and changes one property the model may rely on; those with a strength are a
severity axis (AUROC against strength is a curve). Strengths are in the units named below; pixel values
are 0..255 and every result is rounded back to bytes.

=================  ==========================================================================
``hflip``          mirror left-right (orientation; a flow's coupling is indifferent to it)
``vflip``          mirror top-bottom
``rot90[=k]``      rotate by k * 90 degrees counter-clockwise (k = 1, 2, 3)
``invert``         255 - x (the same edges on the opposite background)
``gamma=g``        255 (x / 255)^g (brightness curve; g < 1 brightens)
``contrast=c``     m + c (x - m), m the image's own mean (c < 1 flattens, c > 1 sharpens)
``blur=s``         Gaussian blur of standard deviation s pixels (reflecting borders)
``resample=f``     f x f block means, each repeated f x f times (down- then up-sampling; f divides H and W)
``shuffle=b``      the pixels of every b x b block shuffled (a fresh permutation per block and image)
``permute``        one fixed permutation of all pixel positions (same for every image: no local structure)
``noise=s``        additive Gaussian noise of standard deviation s (pixel units)
=================  ==========================================================================
"""
from __future__ import annotations

import numpy as np

from genood.data.derived import DerivationError, register_derivation, to_uint8


def _positive(v):
    return None if v > 0 else "it must be above 0"


@register_derivation("hflip", "transform", "mirror left-right")
def hflip(images, labels, value, rng):
    return images[:, :, ::-1], labels


@register_derivation("vflip", "transform", "mirror top-bottom")
def vflip(images, labels, value, rng):
    return images[:, ::-1], labels


@register_derivation("rot90", "transform", "rotate by k x 90 degrees counter-clockwise", value="int", default=1,
                     check=lambda k: None if k in (1, 2, 3) else "k must be 1, 2 or 3")
def rot90(images, labels, k, rng):
    if k % 2 and images.shape[1] != images.shape[2]:
        raise DerivationError("rot90 by an odd k needs square images")
    return np.rot90(images, k, axes=(1, 2)), labels


@register_derivation("invert", "transform", "255 - x")
def invert(images, labels, value, rng):
    return 255 - images, labels


@register_derivation("gamma", "transform", "255 (x / 255)^g, a brightness curve", value="float", check=_positive)
def gamma(images, labels, g, rng):
    return to_uint8(255.0 * (images / 255.0) ** g), labels


@register_derivation("contrast", "transform", "m + c (x - m) around each image's mean m", value="float",
                     check=lambda c: None if c >= 0 else "it must be 0 or above")
def contrast(images, labels, c, rng):
    x = images.astype(np.float64)
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    return to_uint8(m + c * (x - m)), labels


@register_derivation("blur", "transform", "Gaussian blur, standard deviation in pixels", value="float", check=_positive)
def blur(images, labels, sigma, rng):
    from scipy.ndimage import gaussian_filter

    return to_uint8(gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="reflect")), labels


@register_derivation("resample", "transform", "down- then up-sampling: f x f block means repeated f x f times",
                     value="int", check=lambda f: None if f >= 2 else "f must be 2 or more")
def resample(images, labels, f, rng):
    n, h, w, c = images.shape
    if h % f or w % f:
        raise DerivationError(f"resample={f} needs a factor that divides the image size {h}x{w}")
    means = images.astype(np.float64).reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))
    return to_uint8(np.repeat(np.repeat(means, f, axis=1), f, axis=2)), labels


@register_derivation("shuffle", "transform", "pixels shuffled inside every b x b block", value="int", default=4,
                     check=lambda b: None if b >= 2 else "b must be 2 or more")
def shuffle(images, labels, b, rng):
    n, h, w, c = images.shape
    if h % b or w % b:
        raise DerivationError(f"shuffle={b} needs a block size that divides the image size {h}x{w}")
    blocks = images.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // b, w // b, b * b, c)
    order = np.argsort(rng.random(blocks.shape[:4]), axis=3)  # one permutation per block and image
    blocks = np.take_along_axis(blocks, order[..., None], axis=3)
    return blocks.reshape(n, h // b, w // b, b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c), labels


@register_derivation("permute", "transform", "one fixed permutation of the pixel positions, the same for every image")
def permute(images, labels, value, rng):
    n, h, w, c = images.shape
    perm = rng.permutation(h * w)
    return images.reshape(n, h * w, c)[:, perm].reshape(n, h, w, c), labels


@register_derivation("noise", "transform", "additive Gaussian noise, standard deviation in pixel units", value="float",
                     check=_positive)
def noise(images, labels, sigma, rng):
    return to_uint8(images + rng.normal(0.0, sigma, images.shape)), labels
