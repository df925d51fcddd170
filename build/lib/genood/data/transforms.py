"""Transforms between stored images and a model's input space, with their log-Jacobians.

Convention (stated once, used everywhere): a model's density is over the *dequantized
stored data* ``x in [0, 256)^D``, where ``x = uint8 value + u`` and ``u in [0, 1)``.
Log-likelihoods are in nats of that ``x``; bits/dim is ``-log p(x) / (D ln 2)``, the usual
discrete-data bound for 8-bit images.

* Training dequantizes with fresh uniform noise ``u ~ U[0, 1)``.
* Evaluation is deterministic: ``u`` is drawn from a generator seeded by
  ``(seed, split name)`` in the order of the sample indices, so a sample scores the same
  whatever the batch size (``mode='midpoint'`` uses ``u = 0.5`` instead).
"""
from __future__ import annotations

import math
import zlib
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert('L')


def to_chw_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float32 tensor (N,C,H,W) holding the same integer values."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def match_shape(images: np.ndarray, shape_chw: Tuple[int, int, int]) -> np.ndarray:
    """Convert uint8 (N,H,W,C) images to the model's (C,H,W), staying uint8.

    RGB -> greyscale uses BT.601 luma; greyscale -> RGB repeats the channel; the spatial
    size changes by antialiased bilinear resizing. The result is rounded back to uint8 so
    it is again "stored data" and goes through the same dequantization as training data.
    """
    if images.ndim == 2:  # vectors (synthetic manifolds): used as they are
        if tuple(shape_chw) != (images.shape[1],):
            raise ValueError(f"Vector data of dimension {images.shape[1]} cannot take data.shape {list(shape_chw)}.")
        return images
    c, h, w = shape_chw
    n, h0, w0, c0 = images.shape
    if (c0, h0, w0) == (c, h, w):
        return images
    x = to_chw_float(images)
    if c0 == 3 and c == 1:
        x = sum(wt * x[:, i:i + 1] for i, wt in enumerate(LUMA_WEIGHTS))
    elif c0 == 1 and c == 3:
        x = x.repeat(1, 3, 1, 1)
    elif c0 != c:
        raise ValueError(f"Cannot convert {c0}-channel images to {c} channels.")
    if (h0, w0) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out


def dequantize_uniform(x_int: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer-valued float tensor -> ``x + u``, ``u ~ U[0,1)`` elementwise (in [0, 256))."""
    noise = torch.rand(x_int.shape, generator=generator, dtype=x_int.dtype, device="cpu").to(x_int.device)
    return x_int + noise


def eval_dequantization_noise(n: int, shape_chw: Tuple[int, int, int], seed: int, split: str,
                              mode: str = "uniform") -> torch.Tensor:
    """The fixed evaluation noise ``u`` (n,C,H,W) for one split: seeded by (seed, split)."""
    if mode == "midpoint":
        return torch.full((n, *shape_chw), 0.5)
    if mode != "uniform":
        raise ValueError(f"Unknown evaluation dequantization '{mode}': use 'uniform' or 'midpoint'.")
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(split.encode())) % (2**63))
    return torch.rand((n, *shape_chw), generator=gen)


def logit_forward(x: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Data ``x in [0,256)^D`` -> logit space, with the per-sample log|det dz/dx|.

    ``y = alpha + (1 - 2 alpha) x / 256``, ``z = log y - log(1 - y)``;
    ``log|dz/dx| = sum_d [log(1 - 2 alpha) - log 256 - log y_d - log(1 - y_d)]``.
    """
    y = alpha + (1.0 - 2.0 * alpha) * (x / 256.0)
    z = torch.log(y) - torch.log1p(-y)
    per_dim = math.log(1.0 - 2.0 * alpha) - math.log(256.0) - torch.log(y) - torch.log1p(-y)
    return z, per_dim.flatten(1).sum(1)


def logit_inverse(z: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`logit_forward`: logit space -> data in (0, 256), with log|det dx/dz|."""
    y = torch.sigmoid(z)
    x = (y - alpha) * 256.0 / (1.0 - 2.0 * alpha)
    # d x / d z = 256/(1-2a) * y (1 - y)
    per_dim = math.log(256.0) - math.log(1.0 - 2.0 * alpha) + F.logsigmoid(z) + F.logsigmoid(-z)
    return x, per_dim.flatten(1).sum(1)


def mutate(x_int: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Ren et al.'s input perturbation for background models: each value of the integer-valued batch is
    replaced, with probability ``rate``, by a uniformly drawn *different* value in 0..255."""
    if rate <= 0:
        return x_int
    hit = torch.rand(x_int.shape, generator=generator) < rate
    shift = torch.randint(1, 256, x_int.shape, generator=generator, dtype=torch.int64)
    other = (x_int.long() + shift) % 256  # never the original value
    return torch.where(hit, other.to(x_int.dtype), x_int)
