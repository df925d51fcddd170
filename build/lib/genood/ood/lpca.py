"""Model-free LID: local PCA (LPCA) over k nearest neighbours.

For each point, take its k nearest neighbours (Euclidean), centre them, and count the
principal components needed to explain ``variance`` of their total variance. This is the
estimator used to calibrate the flow's tau in seed 000 (they used scikit-dimension's lPCA);
ours is a few lines of numpy/scikit-learn with the explained-variance rule stated here.
"""
from __future__ import annotations

import numpy as np


def lpca(points: np.ndarray, k: int = 20, variance: float = 0.95, query: np.ndarray | None = None) -> np.ndarray:
    """Pointwise LPCA estimates (len(query),) for ``query`` rows (default: every point) against ``points`` (n, D)."""
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, dtype=np.float64)
    query = points if query is None else np.asarray(query, dtype=np.float64)
    k = min(k, points.shape[0])
    _, idx = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(query)
    neigh = points[idx]                                # (q, k, D)
    neigh = neigh - neigh.mean(axis=1, keepdims=True)
    s = np.linalg.svd(neigh, compute_uv=False) ** 2    # (q, min(k, D)) component variances
    frac = np.cumsum(s, axis=1) / np.maximum(s.sum(axis=1, keepdims=True), 1e-300)
    return (frac < variance - 1e-12).sum(axis=1) + 1
