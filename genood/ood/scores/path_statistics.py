"""Statistics of the probability-flow path (DiffPath, Heng et al. 2024), a vector score for diffusions.

From the image y_0 (model space) at the model's t_eps, ``path_statistics.steps`` Euler steps of the
probability-flow ODE dy/dt = f(t) y - 1/2 g(t)^2 s(y, t) carry it towards the prior at ``t_max``, one network
evaluation per step. With the noise prediction eps_k = -sigma(t_k) s(y_k, t_k) at each step the columns are

* ``path_statistics@eps<k>``  = log( ||eps_k||^2 / D ), k = 0..K-1   (the score's size along the path),
* ``path_statistics@rate<k>`` = log( ||(eps_{k+1} - eps_k) / (t_{k+1} - t_k)||^2 / D ), k = 0..K-2  (its rate of change),

DiffPath's first- and second-order path features per step rather than integrated. Far from the training data
the path bends more and the prediction changes faster, but no single direction holds for every component, so
they are registered with ``tails: both``; the detector is a label-free density fitted to the whole vector on
in_val: ``combined.sets: [[path_statistics]]`` (density gmm). About ``steps`` network evaluations per image
(no divergence, no ODE solver).
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

from genood.ood.scores import register


def _steps(cfg: Dict[str, Any]) -> int:
    return int(cfg.get("path_statistics", {}).get("steps", 10))


def _labels(cfg: Dict[str, Any]) -> List[str]:
    k = _steps(cfg)
    return [f"eps{i}" for i in range(k)] + [f"rate{i}" for i in range(k - 1)]


def path_times(t_eps: float, t_max: float, steps: int) -> np.ndarray:
    return np.linspace(float(t_eps), float(t_max), int(steps) + 1)


@torch.no_grad()
def noise_predictions_along_path(model, y0: torch.Tensor, times: np.ndarray) -> List[torch.Tensor]:
    """eps_k (B, D) at times[0..K-1] along the Euler-discretised probability-flow path from y0."""
    y, out = y0, []
    for k in range(len(times) - 1):
        tt = torch.full((y.shape[0],), float(times[k]), dtype=y.dtype, device=y.device)
        s = model.score(y, tt)
        _, sigma = model.sde.marginal(tt)
        out.append((-sigma.reshape(-1, *([1] * (y.dim() - 1))) * s).flatten(1))
        g2 = model.sde.diffusion_sq(tt).reshape(-1, *([1] * (y.dim() - 1)))
        y = y + (model.sde.drift(y, tt) - 0.5 * g2 * s) * float(times[k + 1] - times[k])
    return out


def path_features(eps: List[torch.Tensor], times: np.ndarray) -> torch.Tensor:
    """(B, 2K - 1): log mean square of each eps_k, then of each finite-difference rate."""
    dim = eps[0].shape[1]
    sizes = [e.double().pow(2).sum(1) / dim for e in eps]
    rates = [((eps[k + 1] - eps[k]).double() / float(times[k + 1] - times[k])).pow(2).sum(1) / dim
             for k in range(len(eps) - 1)]
    return torch.log(torch.stack(sizes + rates, dim=1).clamp_min(1e-300))


@register("path_statistics", higher_is_in=True, unit="log mean square (per dimension)",
          description="DiffPath: log size of the noise prediction and of its rate of change at each Euler step of the "
                      "probability-flow path (about path_statistics.steps network evaluations); no direction: "
                      "p-value combinations test both tails, the detector is a density over the vector",
          needs=("score", "sde"), columns=_labels, tails="both")
def path_statistics(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    cfg = cache.get("cfg", {})
    times = path_times(model.t_eps, float(cfg.get("path_statistics", {}).get("t_max", 1.0)), _steps(cfg))
    eps = noise_predictions_along_path(model, model.to_model_space(x), times)
    return path_features(eps, times).to(x.dtype if x.is_floating_point() else torch.float32)
