"""The derivative norm ||grad_x log p(x)||_2 (seed 000's "JEM vol" baseline), in nats per unit of the stored data.

Near a mode of the density the gradient vanishes, so a small norm is read as in-distribution: the
score is oriented with higher = more OOD. Flows differentiate their exact log-likelihood; diffusions
give the model's score at the smallest time t_eps (the density the ODE likelihood is of), mapped to
data space (see each family's ``log_prob_grad``).
"""
from __future__ import annotations

import torch

from genood.ood.scores import register


@register("derivative_norm", higher_is_in=False, unit="nats per data unit",
          description="||grad_x log p(x)||_2 in data space [0,256)^D; higher = more OOD, so detection uses its negative",
          needs=("log_prob_grad",))
def derivative_norm(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return model.log_prob_grad(x).flatten(1).norm(dim=1)
