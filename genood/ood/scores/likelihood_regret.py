"""Likelihood regret (Xiao et al. 2020) for VAEs: how much better the model explains a point once its inference
is fitted to that point alone. The encoder amortises inference over the training data, so an
in-distribution point gains little; an OOD point, whose encoding the encoder never learned, gains more.

For each point, every layer's posterior mean and log-sd start at the encoder's output and are optimised by
Adam for ``likelihood_regret.steps`` steps (``likelihood_regret.lr``) on that point's single-sample ELBO
(fixed noise); the score is the best ELBO reached minus the encoder's ELBO, in nats, >= 0, higher = more OOD.
This is the hierarchical VAE's variant (models/hvae.py), which optimises the posterior parameters rather than a
copy of the encoder's weights. The ``vae`` family (models/vae.py) computes the seed's own version: a copy of the
encoder's weights fitted to each image, the regret being the gain of the importance-weighted bound. Either way
the model is never changed. Cost: ``steps`` forward and backward passes per batch (hvae) or per image (vae).
"""
from __future__ import annotations

import torch

from genood.ood.scores import register


@register("likelihood_regret", higher_is_in=False, unit="nats",
          description="bound gained by fitting each point's inference alone (Xiao et al.); higher = more OOD",
          needs=("likelihood_regret",))
def likelihood_regret(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    rcfg = cache.get("cfg", {}).get("likelihood_regret", {})
    return model.likelihood_regret(x, int(rcfg.get("steps", 50)), float(rcfg.get("lr", 0.01)),
                                   weight_decay=float(rcfg.get("weight_decay", 0.0)))
