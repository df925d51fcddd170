"""Multiscale image normalizing flows built from nflows: RQ-NSF or affine coupling.

Architecture (RealNVP/Glow-style multiscale, per level): squeeze 2x2 -> ``steps_per_level``
x [ActNorm] -> [invertible 1x1 conv] -> coupling (channel mask alternating per step, a
convolutional residual net predicting the coupling parameters, dropout ``dropout`` while training) -> factor
out half the channels (all but the last level). With ``final_squeeze`` = k > 0 a last level follows (seed 000's
third level): squeeze k x k (the 4x7x7 map left of a 28x28 image becomes 196x1x1 with k = 7), then
``final_steps`` x [ActNorm] -> coupling with ``final_hidden_channels``-channel conditioners. In front sits
:class:`DataToLogit`, mapping stored data in [0,256) to logit space with its exact Jacobian, so ``log_prob`` is
in nats of the data.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from nflows.distributions.normal import StandardNormal
    from nflows.nn.nets import ConvResidualNet
    from nflows.transforms import (ActNorm, AffineCouplingTransform, CompositeTransform,
                                   MultiscaleCompositeTransform, OneByOneConvolution,
                                   PiecewiseRationalQuadraticCouplingTransform, SqueezeTransform)
    from nflows.transforms.base import Transform

from genood.data.transforms import logit_forward, logit_inverse
from genood.models.base import BitsPerDimObjective, autograd_log_prob_grad
from genood.precision import exact, exact_module, network

# nflows 0.14 emits deprecation warnings on current torch (e.g. torch.triangular_solve, searchsorted
# on non-contiguous input); they are harmless for RQ-NSF and affine coupling.
warnings.filterwarnings("ignore", module=r"nflows(\.|$)")
warnings.filterwarnings("ignore", message=r".*(triangular_solve|torch\.linalg\.solve_triangular).*")

COUPLINGS = ("rq_nsf", "affine")


class DataToLogit(Transform):
    """Stored data ``x in [0,256)`` <-> logit space, exact log-Jacobian (see data.transforms)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, inputs, context=None):
        return logit_forward(inputs, self.alpha)

    def inverse(self, inputs, context=None):
        return logit_inverse(inputs, self.alpha)


def _conditioned(coupling: Transform) -> Transform:
    """A coupling whose conditioner network runs in the training precision and hands float32 parameters to the
    spline or affine map (whose log-det stays exact)."""
    network(coupling.transform_net)
    return coupling


def _coupling(kind: str, mask: torch.Tensor, channels: int, cfg: Dict[str, Any], img_hw: Tuple[int, int],
              hidden: Optional[int] = None) -> Transform:
    def net(in_c: int, out_c: int) -> nn.Module:
        return ConvResidualNet(in_channels=in_c, out_channels=out_c,
                               hidden_channels=int(hidden or cfg["hidden_channels"]), num_blocks=int(cfg["num_blocks"]),
                               dropout_probability=float(cfg.get("dropout", 0.0)), use_batch_norm=False)

    if kind == "rq_nsf":
        return _conditioned(PiecewiseRationalQuadraticCouplingTransform(
            mask=mask, transform_net_create_fn=net, num_bins=int(cfg["num_bins"]), tails="linear",
            tail_bound=float(cfg["tail_bound"]), img_shape=list(img_hw)))
    if kind == "affine":
        return _conditioned(AffineCouplingTransform(mask=mask, transform_net_create_fn=net))
    raise ValueError(f"Unknown coupling '{kind}': use one of {', '.join(COUPLINGS)}.")


def level_count(cfg: Dict[str, Any]) -> int:
    """Levels of the multiscale flow: ``levels`` 2x2 levels, plus the final k x k one when ``final_squeeze`` > 0."""
    return int(cfg["levels"]) + (1 if int(cfg.get("final_squeeze") or 0) > 0 else 0)


def build_transform(shape: Tuple[int, int, int], cfg: Dict[str, Any]) -> Transform:
    """The full data -> latent nflows transform for images of ``shape`` (C,H,W)."""
    c, h, w = shape
    levels = int(cfg["levels"])
    multiscale = MultiscaleCompositeTransform(num_transforms=level_count(cfg))
    level_shape: Optional[Tuple[int, int, int]] = (c, h, w)
    for level in range(levels):
        lc, lh, lw = level_shape
        if lh % 2 or lw % 2:
            raise ValueError(f"model.levels={levels} needs the image side to halve evenly at every level; "
                             f"level {level} sees {lh}x{lw}.")
        lc, lh, lw = lc * 4, lh // 2, lw // 2
        steps = [SqueezeTransform()]
        for step in range(int(cfg["steps_per_level"])):
            if cfg.get("actnorm", True):
                steps.append(ActNorm(lc))
            if cfg.get("one_by_one_conv", True):
                steps.append(exact_module(OneByOneConvolution(lc)))  # data path: float32
            mask = torch.zeros(lc)
            mask[(step % 2)::2] = 1  # alternate which half of the channels is transformed
            steps.append(_coupling(cfg["coupling"], mask, lc, cfg, (lh, lw)))
        if cfg.get("actnorm", True):
            steps.append(ActNorm(lc))
        level_shape = multiscale.add_transform(CompositeTransform(steps), (lc, lh, lw))
    k = int(cfg.get("final_squeeze") or 0)
    if k > 0:
        lc, lh, lw = level_shape
        if lh % k or lw % k:
            raise ValueError(f"model.final_squeeze={k} must divide the {lh}x{lw} map the last of model.levels={levels} "
                             f"leaves.")
        lc, lh, lw = lc * k * k, lh // k, lw // k
        steps = [SqueezeTransform(factor=k)]
        for step in range(int(cfg["final_steps"])):
            if cfg.get("actnorm", True):
                steps.append(ActNorm(lc))
            mask = torch.zeros(lc)
            mask[(step % 2)::2] = 1
            steps.append(_coupling(cfg["coupling"], mask, lc, cfg, (lh, lw), hidden=int(cfg["final_hidden_channels"])))
        if cfg.get("actnorm", True):
            steps.append(ActNorm(lc))
        multiscale.add_transform(CompositeTransform(steps), (lc, lh, lw))
    return CompositeTransform([DataToLogit(float(cfg["logit_alpha"])), multiscale])


@exact
def std_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row of (B, D): a flow's latent term."""
    return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


class _FlowObjective(BitsPerDimObjective):
    """What both flows compute from their exact ``log_prob``: bits/dim, the loss, and an exact gradient."""

    def log_prob_grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) in data space, exact (autograd through the flow)."""
        return autograd_log_prob_grad(self, x)


class ImageFlow(_FlowObjective, nn.Module):
    """A normalizing flow on images implementing :class:`models.base.DensityModel`.

    ``log_prob(x)``: x (B,C,H,W) in [0,256) -> (B,) nats. ``encode(x)``: data -> latent (B,D).
    ``generator(z)``: latent (B,D) -> data (B,C,H,W), the map whose Jacobian LID uses.
    """

    def __init__(self, shape: Tuple[int, int, int], cfg: Dict[str, Any]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        self.data_scale = 256.0  # stored data lives in [0, 256); LID is measured in [0, 1] units
        self.loss_name = "bits_per_dim"
        self.divergence_hint = " (or raise model.logit_alpha)"
        self.transform = build_transform(self.shape, cfg)
        self.base = StandardNormal([self.dim])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logabsdet = self.transform(x)
        return self.base.log_prob(z) + logabsdet

    @staticmethod
    def likelihood_term_labels(model_cfg: Dict[str, Any]) -> List[str]:
        """Names of the additive terms of ``log_prob_terms`` for a flow built from ``model_cfg``."""
        return ["preprocess"] + [f"level{i}_{kind}" for i in range(level_count(model_cfg))
                                 for kind in ("logdet", "latent")]

    def log_prob_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """log p(x) split into its additive terms (B,) each, in nats, summing to ``log_prob(x)``:
        ``preprocess`` the log-Jacobian of [0,256) -> logit space (a fixed function of the pixel values),
        per level i ``level{i}_logdet`` the log-Jacobian of the level's steps and ``level{i}_latent`` the standard
        normal log-density of the channels that level factors out (the last level: all that remain)."""
        pre, multiscale = self.transform._transforms
        h, ld = pre(x)
        terms = {"preprocess": ld}
        b = x.shape[0]
        steps = list(multiscale._transforms)
        for i, step in enumerate(steps):
            out, ld = step(h)
            if i < len(steps) - 1:  # as MultiscaleCompositeTransform: the first half of the channels leaves here
                out, h = torch.chunk(out, 2, dim=1)
            flat = out.reshape(b, -1)
            terms[f"level{i}_logdet"] = ld
            terms[f"level{i}_latent"] = std_normal_log_density(flat)
        return terms

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)[0]

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        x, _ = self.transform.inverse(z)
        return x.reshape(z.shape[0], *self.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        device = next(self.parameters()).device
        z = torch.randn((n, self.dim), generator=generator).to(device) * temperature
        # the data space is [0, 256)^D; a flow without a bounded preprocessing (affine) can map past it
        return self.generator(z).clamp(0.0, 256.0 - 1e-4)


class TabularFlow(_FlowObjective, nn.Module):
    """An RQ-NSF (or affine) coupling flow on vectors in R^D, for synthetic manifolds.

    Per layer: a fixed random permutation, then a coupling whose parameters come from a
    residual MLP. No dequantization or logit transform: ``log_prob`` is in nats of the vectors
    as given, and ``data_scale`` is 1 (LID is measured in the data's own units).
    """

    def __init__(self, dim: int, cfg: Dict[str, Any]):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nflows.nn.nets import ResidualNet
            from nflows.transforms import RandomPermutation
        self.dim = int(dim)
        self.shape = (self.dim,)
        self.data_scale = 1.0
        self.loss_name = "bits_per_dim"
        hidden = int(cfg["hidden_channels"])

        def net(in_f: int, out_f: int) -> nn.Module:
            return ResidualNet(in_f, out_f, hidden_features=hidden, num_blocks=int(cfg["num_blocks"]))
        layers = []
        for i in range(int(cfg["steps_per_level"])):
            layers.append(RandomPermutation(self.dim))
            mask = torch.zeros(self.dim)
            mask[(i % 2)::2] = 1
            if cfg["coupling"] == "rq_nsf":
                layers.append(_conditioned(PiecewiseRationalQuadraticCouplingTransform(
                    mask=mask, transform_net_create_fn=net, num_bins=int(cfg["num_bins"]), tails="linear",
                    tail_bound=float(cfg["tail_bound"]))))
            else:
                layers.append(_conditioned(AffineCouplingTransform(mask=mask, transform_net_create_fn=net)))
        self.transform = CompositeTransform(layers)
        self.base = StandardNormal([self.dim])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logabsdet = self.transform(x.reshape(x.shape[0], -1))
        return self.base.log_prob(z) + logabsdet

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x.reshape(x.shape[0], -1))[0]

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        return self.transform.inverse(z)[0]

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        z = torch.randn((n, self.dim), generator=generator).to(next(self.parameters()).device) * temperature
        return self.generator(z)


def build_image_flow(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> nn.Module:
    """The ``flow`` family: a multiscale image flow on (C,H,W) data."""
    return ImageFlow(shape, model_cfg)


def build_tabular_flow(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> nn.Module:
    """The ``tabular_flow`` family: a coupling flow on vectors of D = prod(shape) dimensions."""
    return TabularFlow(int(math.prod(shape)), model_cfg)


def build_model(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> nn.Module:
    """Build any registered family (kept for callers that import it from here; see models.registry)."""
    from genood.models.registry import build_model as build
    return build(shape, model_cfg)
