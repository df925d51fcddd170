"""The density-model protocol every model family implements.

Units: ``log_prob`` is in nats of the dequantized stored data ``x in [0,256)^D`` (see
:mod:`data.transforms`), Jacobians of every preprocessing step included.
"""
from __future__ import annotations

import math
import zlib
from typing import List, Protocol, Tuple, runtime_checkable

import torch

__all__ = ["DensityModel", "BitsPerDimObjective", "REQUIRED", "CAPABILITIES", "undeclared", "check_family", "capabilities",
           "autograd_log_prob_grad", "nats_to_bits_per_dim", "content_generators"]


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


REQUIRED = ("log_prob", "bits_per_dim", "sample", "training_loss")

# Optional capabilities: a score, LID estimator or the runner uses one only when the model has it (``needs=``
# in a registration names these, and registering an undeclared one is an error, so a typo cannot silently
# make a score inapplicable to every model).
CAPABILITIES = {
    "generator": "flows: generator(z) -> x, the latent -> data map whose Jacobian gives LID",
    "encode": "flows: encode(x) -> z, data -> latent",
    "score": "diffusions: score(x, t) -> s, the score of the noised marginal (scaled data space)",
    "sde": "diffusions: the forward SDE (marginal mean scale and std at t)",
    "log_prob_grad": "log_prob_grad(x) -> grad_x log p(x) in data space (flows by autograd, diffusions by their score)",
    "log_prob_terms": "log_prob_terms(x) -> {label: (B,)}, log p(x) (or the ELBO) split into additive terms; the class "
                      "method likelihood_term_labels(model_cfg) names them (flows, HVAEs)",
    "likelihood_term_labels": "class method naming log_prob_terms' labels for a model configuration",
    "bounds": "HVAEs: bounds(x) -> per-level ELBO bounds (the likelihood-ratio score llr)",
    "model_views": "model_views(x) -> [(title, (B, H, W))]: internals drawn for chosen images (coupling flows: s, t, latents)",
    "features": "HVAEs: features(x) -> (B, K) encoder embedding (the feature_flow family's input)",
    "likelihood_regret": "VAEs: likelihood_regret(x, steps, lr, weight_decay) -> the bound gained by fitting each "
                         "point's inference alone (Xiao et al.; hvae: the posterior, vae: a copy of the encoder)",
    "likelihood_nfe": "diffusions: network evaluations the last log_prob batch took",
    "configure": "configure(cfg): the runner hands the resolved run configuration before scoring (ODE tolerances, ...)",
    "set_training_step": "set_training_step(step): the training loop reports the step before each batch",
    "metric_info": "metric_info() -> {score: {key: value}}: settings stored beside a score's metrics",
}


def undeclared(names) -> list:
    """Of ``names``, those that are neither required nor declared optional capabilities."""
    return [n for n in names if n not in REQUIRED and n not in CAPABILITIES]


def check_family(cls: type, family: str, where: str) -> None:
    """A family's model class must implement the required protocol (one sentence otherwise)."""
    missing = [n for n in REQUIRED if not callable(getattr(cls, n, None))]
    if missing:
        raise TypeError(f"Model family {family!r} ({where}): class {cls.__module__}.{cls.__qualname__} lacks "
                        f"{', '.join(missing)} of the model protocol (genood.models.base.DensityModel).")


def capabilities(model) -> list:
    """The optional capabilities ``model`` (an instance or class) has."""
    return [n for n in CAPABILITIES if hasattr(model, n)]


def autograd_log_prob_grad(model, x: torch.Tensor) -> torch.Tensor:
    """grad_x log p(x) by reverse-mode autodiff through ``model.log_prob`` (each sample's log p depends on its x only)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.log_prob(x).sum(), x)
    return g.detach()


def nats_to_bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Convert per-sample log-likelihood in nats to bits per dimension (lower = likelier)."""
    return -log_prob / (dim * math.log(2.0))


class BitsPerDimObjective:
    """For models with an exact ``log_prob`` over ``self.dim`` dimensions: bits/dim, and that as the training loss
    (the negative log-likelihood in bits per dimension)."""

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        return nats_to_bits_per_dim(self.log_prob(x), self.dim)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.bits_per_dim(x)


def content_generators(x: torch.Tensor, seed: int, salt: int) -> List[torch.Generator]:
    """One CPU generator per row of ``x``, seeded by that row's content, ``seed`` and ``salt``: randomness a score
    draws for a point (posterior noise, binarization) that does not depend on the batch the point came in."""
    return [torch.Generator().manual_seed(zlib.crc32(row.detach().float().cpu().numpy().tobytes()) * 1000
                                          + int(seed) * 7 + salt) for row in x]
