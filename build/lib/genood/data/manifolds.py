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


# ``manifold:<name>[:key=value,...]`` datasets (see data.registry): the keys each generator takes, with
# defaults, plus ``n`` (training points), ``n_test`` (test points) and ``seed``.
DATASET_DEFAULTS = {
    "subspace": {"d": 2, "dim": 5, "distribution": "gaussian", "noise": 0.0},
    "sphere": {"d": 2, "dim": 5, "noise": 0.0},
    "lollipop": {"dim": 5, "stick_fraction": 0.3, "noise": 0.0},
}


def parse_manifold_name(name: str) -> Tuple[str, dict]:
    """``manifold:sphere:d=3,dim=10,n=4000`` -> ("sphere", {"d": 3, "dim": 10, "n": 4000, ...defaults})."""
    parts = name.split(":", 2)
    kind = parts[1] if len(parts) > 1 else ""
    if kind not in GENERATORS:
        raise ValueError(f"Unknown manifold '{kind}' in dataset '{name}': use manifold:<{'|'.join(GENERATORS)}>[:key=value,...].")
    opts = {"n": 4000, "n_test": 1000, "seed": 0, **DATASET_DEFAULTS[kind]}
    if len(parts) > 2 and parts[2]:
        for item in parts[2].split(","):
            key, _, raw = item.partition("=")
            key = key.strip()
            if key not in opts or not raw:
                raise ValueError(f"Dataset '{name}': '{item}' is not key=value with key one of {', '.join(opts)}.")
            default = opts[key]
            try:
                opts[key] = type(default)(raw) if not isinstance(default, str) else raw
            except ValueError:
                raise ValueError(f"Dataset '{name}': {key} must be a {type(default).__name__}, got {raw!r}.") from None
    return kind, opts


def manifold_split(name: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(points float32 (N, dim), true LID (N,)) of one split: one seeded pool, the first ``n`` for train and
    the next ``n_test`` for test, so both splits share the embedding."""
    kind, opts = parse_manifold_name(name)
    n, n_test, seed = opts.pop("n"), opts.pop("n_test"), opts.pop("seed")
    points, true_lid = GENERATORS[kind](n=n + n_test, seed=seed, **opts)
    keep = slice(0, n) if split == "train" else slice(n, n + n_test)
    return points[keep].astype(np.float32), true_lid[keep]
