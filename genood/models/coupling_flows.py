"""RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018) as seed 003 (Kirichenko, Izmailov, Wilson 2020)
builds them for its study of why flows fail at OOD detection: the ``realnvp`` and ``glow`` families.

Both map stored data in [0,256) to logit space first (:class:`DataToLogit`, its exact Jacobian counted, so
``log_prob`` is in nats of the data like every family), then run a multiscale stack of invertible layers:

* ``realnvp``: per scale but the last, ``realnvp_checkerboard`` affine couplings with a checkerboard mask
  (alternating parity; ``realnvp_mask: cycle`` uses seed 003's cycle-mask instead: each coupling transforms one
  image quadrant given the previous one, so information needs four couplings to return to a quadrant), a 2x2 squeeze, ``realnvp_channel`` couplings with a channel-wise mask (alternating
  halves), then half of the channels are factored out to the latent; the last scale has
  ``realnvp_checkerboard + 1`` checkerboard couplings (RealNVP's 3-3 / 4 layout by default);
* ``glow``: per scale a squeeze, then ``coupling_layers`` x [actnorm, invertible 1x1 convolution
  (LU-parametrised), affine coupling on channel halves], and half the channels factored out (not at the last).

Every coupling y_b = x_b * exp(s(x_a)) + t(x_a), y_a = x_a, with s = ``s_scale`` * tanh(.) for stability and
s, t from one network of ``st_type``: ``resnet`` (``num_blocks`` residual blocks), ``highway`` (gated residual
blocks, the seed's Glow choice), ``convnet`` (Glow's plain 3-layer net) or ``mlp_bottleneck`` (a per-pixel
network: 1x1 convolutions only, no spatial context). ``mid_channels`` and ``kernel_size`` set its width and
receptive field: seed 003's point is that couplings which see local pixel correlations learn them instead of
semantics, so these are the knobs its comparisons turn. The last layer of every s/t network starts at zero, so
each coupling starts as the identity. The latent is the concatenation of the factored-out pieces (flattened, in
scale order); ``encode``/``generator`` expose the data <-> latent maps for the Jacobian LID.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from genood.data.transforms import logit_forward, logit_inverse
from genood.models.flows import _FlowObjective, std_normal_log_density
from genood.precision import exact, network

ST_TYPES = ("resnet", "highway", "convnet", "mlp_bottleneck")


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 block to channels (a permutation: log-det 0)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def quadrant(h: int, w: int, k: int, device=None) -> torch.Tensor:
    """(1, 1, H, W) mask of quadrant k % 4 (0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left: a cycle)."""
    m = torch.zeros(1, 1, h, w, device=device)
    rows = slice(0, h // 2) if k % 4 in (0, 1) else slice(h // 2, h)
    cols = slice(0, w // 2) if k % 4 in (0, 3) else slice(w // 2, w)
    m[..., rows, cols] = 1.0
    return m


def checkerboard(h: int, w: int, parity: int, device=None) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 where (i + j + parity) is even: the conditioning pixels."""
    i, j = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return (((i + j + parity) % 2) == 0).float()[None, None]


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale), initialised from the first training batch to give
    zero mean and unit variance per channel; log-det = H W sum(log_scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x):
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                mean = x.mean(dim=(0, 2, 3), keepdim=True)
                std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
                self.loc.copy_(-mean)
                self.log_scale.copy_(-torch.log(std))
                self.initialized.fill_(1)
        y = (x + self.loc) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().expand(x.shape[0]) * x.shape[2] * x.shape[3]

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.loc


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution W = P L (U + diag(sign * exp(log_s))), LU-parametrised (Glow);
    log-det = H W sum(log_s)."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        lu, pivots = torch.linalg.lu_factor(w)
        p, lower, upper = torch.lu_unpack(lu, pivots)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.p.shape[0], dtype=self.p.dtype, device=self.p.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    @exact  # on the data path: the flow's invertibility and latent stay float32
    def forward(self, x):
        y = F.conv2d(x, self.weight()[:, :, None, None])
        return y, self.log_s.sum().expand(x.shape[0]) * x.shape[2] * x.shape[3]

    @exact
    def inverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class STNet(nn.Module):
    """in_channels -> (s, t), each ``out_channels``; see the module docstring for ``st_type``."""

    def __init__(self, in_channels: int, out_channels: int, cfg: Dict[str, Any]):
        super().__init__()
        kind, mid, k = cfg["st_type"], int(cfg["mid_channels"]), int(cfg["kernel_size"])
        if kind not in ST_TYPES:
            raise ValueError(f"model.st_type '{kind}' is not one of {', '.join(ST_TYPES)}.")
        k = 1 if kind == "mlp_bottleneck" else k
        pad = k // 2
        self.kind, self.blocks = kind, int(cfg["num_blocks"])
        self.inp = nn.Conv2d(in_channels, mid, k, padding=pad)
        self.body = nn.ModuleList(nn.Conv2d(mid, mid, k if kind != "convnet" else 1, padding=pad if kind != "convnet" else 0)
                                  for _ in range(self.blocks if kind != "convnet" else 1))
        self.gates = nn.ModuleList(nn.Conv2d(mid, mid, 1) for _ in self.body) if kind == "highway" else None
        self.out = nn.Conv2d(mid, 2 * out_channels, k, padding=pad)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)
        self.s_scale = nn.Parameter(torch.full((1, out_channels, 1, 1), float(cfg["s_scale"])))

    def forward(self, x):
        h = F.relu(self.inp(x))
        for i, conv in enumerate(self.body):
            f = F.relu(conv(h))
            if self.kind == "highway":
                g = torch.sigmoid(self.gates[i](h))
                h = g * f + (1 - g) * h
            elif self.kind == "convnet":
                h = f
            else:
                h = h + f
        s, t = self.out(h).chunk(2, dim=1)
        return self.s_scale * torch.tanh(s), t


class AffineCoupling(nn.Module):
    """Affine coupling with a checkerboard mask (``mask='checkerboard'``: conditioning pixels where the mask is 1), seed 003's cycle-mask
    (``mask='cycle'``: quadrant ``parity + 1`` is transformed given quadrant ``parity``, the others pass through)
    or a channel mask (``mask='channel'``: the first half of the channels conditions the second, or the reverse
    with ``parity`` 1). Keeps the last (s, t) it computed in ``last_st`` for the coupling-layer views."""

    def __init__(self, channels: int, mask: str, parity: int, cfg: Dict[str, Any]):
        super().__init__()
        self.mask, self.parity = mask, int(parity)
        if mask == "channel":
            half = channels // 2
            self.sizes = (half, channels - half) if not parity else (channels - half, half)
            self.net = network(STNet(self.sizes[0], self.sizes[1], cfg))
        else:
            self.net = network(STNet(channels, channels, cfg))  # s and t enter the log-det: float32 out
        self.last_st: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def _split(self, x):
        a, b = torch.split(x, (x.shape[1] // 2, x.shape[1] - x.shape[1] // 2), dim=1)
        return (a, b) if not self.parity else (b, a)

    def _join(self, cond, other):
        return torch.cat([cond, other], 1) if not self.parity else torch.cat([other, cond], 1)

    def _masks(self, x):
        """(conditioning mask, transformed mask) of the spatial couplings."""
        h, w = x.shape[2], x.shape[3]
        if self.mask == "cycle":  # seed 003's cycle-mask: quadrant k+1 is transformed given quadrant k
            return quadrant(h, w, self.parity, x.device), quadrant(h, w, self.parity + 1, x.device)
        m = checkerboard(h, w, self.parity, x.device)
        return m, 1 - m

    def forward(self, x):
        if self.mask == "channel":
            cond, other = self._split(x)
            s, t = self.net(cond)
            self.last_st = (s.detach(), t.detach())
            return self._join(cond, other * torch.exp(s) + t), s.flatten(1).sum(1)
        m, out = self._masks(x)
        s, t = self.net(x * m)
        s, t = s * out, t * out
        self.last_st = (s.detach(), t.detach())
        return x * (1 - out) + out * (x * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y):
        if self.mask == "channel":
            cond, other = self._split(y)
            s, t = self.net(cond)
            return self._join(cond, (other - t) * torch.exp(-s))
        m, out = self._masks(y)
        s, t = self.net(y * m)
        s, t = s * out, t * out
        return y * (1 - out) + out * ((y - t) * torch.exp(-s))


class Squeeze(nn.Module):
    def forward(self, x):
        return squeeze(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, y):
        return unsqueeze(y)


def _realnvp_scale(c: int, h: int, w: int, last: bool, cfg: Dict[str, Any]) -> Tuple[List[nn.Module], Tuple[int, int, int]]:
    n_cb = int(cfg["realnvp_checkerboard"]) + (1 if last else 0)
    kind = cfg.get("realnvp_mask", "checkerboard")  # checkerboard (parity alternating) | cycle (quadrants in turn)
    steps: List[nn.Module] = [AffineCoupling(c, kind, i % (4 if kind == "cycle" else 2), cfg) for i in range(n_cb)]
    if last:
        return steps, (c, h, w)
    steps.append(Squeeze())
    steps += [AffineCoupling(4 * c, "channel", i % 2, cfg) for i in range(int(cfg["realnvp_channel"]))]
    return steps, (4 * c, h // 2, w // 2)


def _glow_scale(c: int, h: int, w: int, last: bool, cfg: Dict[str, Any]) -> Tuple[List[nn.Module], Tuple[int, int, int]]:
    c4 = 4 * c
    steps: List[nn.Module] = [Squeeze()]
    for _ in range(int(cfg["coupling_layers"])):
        steps += [ActNorm(c4), InvConv1x1(c4), AffineCoupling(c4, "channel", 0, cfg)]
    return steps, (c4, h // 2, w // 2)


class CouplingFlow(_FlowObjective, nn.Module):
    """A multiscale RealNVP or Glow on images (C,H,W), implementing :class:`models.base.DensityModel`."""

    def __init__(self, shape: Tuple[int, int, int], cfg: Dict[str, Any], architecture: str):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        self.data_scale = 256.0
        self.loss_name = "bits_per_dim"
        self.alpha = float(cfg["logit_alpha"])
        self.architecture = architecture
        build = _realnvp_scale if architecture == "realnvp" else _glow_scale
        scales = int(cfg["num_scales"])
        c, h, w = self.shape
        self.scales = nn.ModuleList()
        self.latent_shapes: List[Tuple[int, int, int]] = []
        for i in range(scales):
            last = i == scales - 1
            needs_squeeze = architecture == "glow" or not last
            if needs_squeeze and (h % 2 or w % 2):
                raise ValueError(f"model.num_scales={scales} needs the image side to halve evenly at every squeeze; "
                                 f"scale {i} sees {h}x{w}: use fewer scales or model.shape with even sides.")
            steps, (c, h, w) = build(c, h, w, last, cfg)
            self.scales.append(nn.ModuleList(steps))
            if not last:
                self.latent_shapes.append((c // 2, h, w))
                c = c - c // 2
        self.latent_shapes.append((c, h, w))

    def _to_latent(self, x: torch.Tensor, views: Optional[list] = None,
                   terms: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        h, logdet = logit_forward(x, self.alpha)
        if terms is not None:
            terms["preprocess"] = logdet
        h = h.reshape(x.shape[0], *self.shape)
        pieces = []
        for i, steps in enumerate(self.scales):
            level = torch.zeros_like(logdet)
            for step in steps:
                h, ld = step(h)
                level = level + ld
                if views is not None and isinstance(step, AffineCoupling):
                    views.append((i, step, h.detach()))
            logdet = logdet + level
            if i < len(self.scales) - 1:
                out, h = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2:]
            else:
                out = h
            pieces.append(out.flatten(1))
            if terms is not None:
                terms[f"level{i}_logdet"] = level
                terms[f"level{i}_latent"] = std_normal_log_density(pieces[-1])
        return torch.cat(pieces, 1), logdet

    @staticmethod
    def likelihood_term_labels(model_cfg: Dict[str, Any]) -> List[str]:
        """Names of the additive terms of ``log_prob_terms`` for a RealNVP / Glow built from ``model_cfg``."""
        return ["preprocess"] + [f"level{i}_{kind}" for i in range(int(model_cfg["num_scales"]))
                                 for kind in ("logdet", "latent")]

    def log_prob_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """log p(x) split into additive terms (B,) each, in nats, summing to ``log_prob(x)`` (as the RQ-NSF
        flow's): ``preprocess`` the log-Jacobian of [0,256) -> logit space, per scale i ``level{i}_logdet`` the
        log-Jacobian of its steps (couplings, actnorms, 1x1 convolutions) and ``level{i}_latent`` the standard
        normal log-density of the channels it factors out (the last scale: all that remain)."""
        terms: Dict[str, torch.Tensor] = {}
        self._to_latent(x, terms=terms)
        return terms

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self._to_latent(x)
        return std_normal_log_density(z) + logdet

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._to_latent(x)[0]

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        sizes = [int(math.prod(s)) for s in self.latent_shapes]
        parts = list(torch.split(z, sizes, dim=1))
        h = parts[-1].reshape(z.shape[0], *self.latent_shapes[-1])
        for i in reversed(range(len(self.scales))):
            if i < len(self.scales) - 1:
                h = torch.cat([parts[i].reshape(z.shape[0], *self.latent_shapes[i]), h], 1)
            for step in reversed(self.scales[i]):
                h = step.inverse(h)
        return logit_inverse(h, self.alpha)[0].reshape(z.shape[0], *self.shape)

    def coupling_views(self, x: torch.Tensor) -> List[Dict[str, Any]]:
        """Per coupling layer (in order): its scale, mask, the (s, t) it computed and its output, for ``x``."""
        views: list = []
        with torch.no_grad():
            self._to_latent(x, views)
        return [{"scale": i, "mask": f"{step.mask}{step.parity}", "s": step.last_st[0], "t": step.last_st[1], "out": out}
                for i, step, out in views]

    def model_views(self, x: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
        """Seed 003's views of ``x``: the input, each coupling layer's s and t (mean over channels, at the
        layer's resolution) and the latent of every scale (mean over channels): [(title, (B, H, W))]."""
        panels = [("input", x.reshape(x.shape[0], *self.shape).mean(1))]
        for k, view in enumerate(self.coupling_views(x)):
            tag = f"c{k} {view['mask']} s{view['scale']}"
            panels += [(f"{tag}: s", view["s"].mean(1)), (f"{tag}: t", view["t"].mean(1))]
        z = self.encode(x).detach()
        sizes = [int(math.prod(s)) for s in self.latent_shapes]
        for i, (piece, shp) in enumerate(zip(torch.split(z, sizes, dim=1), self.latent_shapes)):
            panels.append((f"latent, scale {i}", piece.reshape(x.shape[0], *shp).mean(1)))
        return panels

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        param = next(self.parameters())
        z = torch.randn((n, self.dim), generator=generator).to(device=param.device, dtype=param.dtype) * temperature
        return self.generator(z).clamp(0.0, 256.0 - 1e-4)


def build_realnvp(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> CouplingFlow:
    """The ``realnvp`` family (seed 003's RealNVP) on (C,H,W) images."""
    return CouplingFlow(tuple(shape), model_cfg, "realnvp")


def build_glow(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> CouplingFlow:
    """The ``glow`` family (seed 003's Glow) on (C,H,W) images."""
    return CouplingFlow(tuple(shape), model_cfg, "glow")
