"""The density-model protocol every model family implements.

Units: ``log_prob`` is in nats of the dequantized stored data ``x in [0,256)^D`` (see
:mod:`data.transforms`), Jacobians of every preprocessing step included.
"""
from __future__ import annotations

import math
from typing import Protocol, Tuple, runtime_checkable

import torch


@runtime_checkable
class DensityModel(Protocol):
    """What the OOD code needs from a model."""

    shape: Tuple[int, int, int]  # (C, H, W) of the data the model is defined on

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,C,H,W) float in [0,256) -> (B,) log-density in nats."""

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,C,H,W) -> (B,) ``-log_prob / (D ln 2)``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n,C,H,W) in data space [0,256)."""

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,...) a dequantized training batch -> (B,) the objective the one training loop minimises
        (flows: bits/dim; diffusions: denoising score matching; VAEs: the negative ELBO). What it
        measures is named by the family spec's ``loss`` key (logged as ``train/<loss>``)."""


# Optional capabilities a score may ask for (checked with hasattr, see ood.scores):
#   generator(z) -> x         flows: the latent -> data map whose Jacobian gives LID
#   encode(x) -> z            flows: data -> latent
#   score(x, t) -> s          diffusions: the score of the noised marginal (scaled data space)
#   sde                       diffusions: the forward SDE (marginal mean scale and std at t)
#   log_prob_grad(x) -> g     grad_x log p(x) in data space (B, ...): flows by autograd, diffusions by their score
#   log_prob_terms(x) -> {label: (B,)}   log p(x) (or the ELBO) split into additive terms, with the class method
#                             likelihood_term_labels(model_cfg) naming them (flows, HVAEs; ood/scores/likelihood_terms.py)


def autograd_log_prob_grad(model, x: torch.Tensor) -> torch.Tensor:
    """grad_x log p(x) by reverse-mode autodiff through ``model.log_prob`` (each sample's log p depends on its x only)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.log_prob(x).sum(), x)
    return g.detach()


def nats_to_bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Convert per-sample log-likelihood in nats to bits per dimension (lower = likelier)."""
    return -log_prob / (dim * math.log(2.0))
