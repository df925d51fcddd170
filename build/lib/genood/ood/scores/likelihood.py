"""Likelihood scores: log-likelihood in nats of the stored data, and bits per dimension."""
from __future__ import annotations

import torch

from genood.models.base import nats_to_bits_per_dim
from genood.ood.scores import register


def _log_prob(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    if "log_prob" not in cache:
        cache["log_prob"] = model.log_prob(x)
    return cache["log_prob"]


@register("log_likelihood", higher_is_in=True, unit="nats",
          description="log p(x) in nats of the dequantized data in [0,256)^D", needs=("log_prob",))
def log_likelihood(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return _log_prob(model, x, cache)


@register("bits_per_dim", higher_is_in=False, unit="bits/dim",
          description="-log p(x) / (D ln 2); lower is likelier, so detection uses its negative", needs=("log_prob",))
def bits_per_dim(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return nats_to_bits_per_dim(_log_prob(model, x, cache), int(x[0].numel()))


@register("likelihood_nfe", higher_is_in=False, unit="function evaluations",
          description="the adaptive ODE solver's number of score evaluations for the batch holding x "
                      "(diffusions; ood.batch_size=1 makes it per sample); more evaluations = less in-distribution",
          needs=("likelihood_nfe",))
def likelihood_nfe(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    _log_prob(model, x, cache)
    return model.likelihood_nfe.to(x.device)
