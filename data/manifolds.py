"""Synthetic datasets with known intrinsic dimension, for testing LID estimators.

Each generator returns ``(points, true_lid)``: float64 points (n, D) and the intrinsic
dimension of the manifold piece each point was drawn from (n,). A random orthonormal
embedding (seeded) places the manifold in R^D; ``noise`` adds isotropic Gaussian ambient noise.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _embed(points: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    k = points.shape[1]
    if k > dim:
        raise ValueError(f"cannot embed a {k}-dimensional chart in R^{dim}")
    basis, _ = np.linalg.qr(rng.normal(size=(dim, k)))
    return points @ basis.T


def _noisy(x: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return x + noise * rng.normal(size=x.shape) if noise else x


def affine_subspace(n: int, d: int, dim: int, distribution: str = "gaussian", noise: float = 0.0,
                    seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """n points on a d-dimensional affine subspace of R^dim (Gaussian or uniform in [-1,1]^d on it)."""
    rng = np.random.default_rng(seed)
    if distribution == "gaussian":
        chart = rng.normal(size=(n, d))
    elif distribution == "uniform":
        chart = rng.uniform(-1.0, 1.0, size=(n, d))
    else:
        raise ValueError(f"distribution must be 'gaussian' or 'uniform', got {distribution!r}")
    offset = rng.normal(size=dim)
    return _noisy(_embed(chart, dim, rng) + offset, noise, rng), np.full(n, d)


def sphere(n: int, d: int, dim: int, noise: float = 0.0, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """n points uniform on the unit d-sphere (in R^{d+1}) embedded in R^dim."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, d + 1))
    chart = g / np.linalg.norm(g, axis=1, keepdims=True)
    return _noisy(_embed(chart, dim, rng), noise, rng), np.full(n, d)


def lollipop(n: int, dim: int, stick_fraction: float = 0.3, noise: float = 0.0, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A 1-d stick joined to a 2-d disk (in a plane) embedded in R^dim: true LID 1 on the stick, 2 on the disk."""
    rng = np.random.default_rng(seed)
    n_stick = int(round(n * stick_fraction))
    t = rng.uniform(0.0, 1.0, n_stick)
    stick = np.stack([-3.0 + 2.0 * t, np.zeros_like(t)], axis=1)  # from (-3, 0) to the disk's edge at (-1, 0)
    r = np.sqrt(rng.uniform(0.0, 1.0, n - n_stick))
    a = rng.uniform(0.0, 2 * np.pi, n - n_stick)
    disk = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    chart = np.concatenate([stick, disk])
    true = np.concatenate([np.ones(n_stick, int), np.full(n - n_stick, 2)])
    order = rng.permutation(n)
    return _noisy(_embed(chart, dim, rng)[order], noise, rng), true[order]


GENERATORS = {"subspace": affine_subspace, "sphere": sphere, "lollipop": lollipop}
