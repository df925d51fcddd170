"""PixelCNN++ (Salimans et al. 2017), the model of seed 002: an exact autoregressive likelihood over pixels.

Pixels are ordered in raster order (row by row, left to right); within a pixel the channels are coupled by
the discretized logistic mixture's coefficients (R -> G -> B, :mod:`models.dlml`). Causality comes from
two streams of shifted convolutions: a vertical stack ``u`` that sees only the rows above (down-shifted
2x3 convolutions) and a horizontal stack ``ul`` that sees the rows above and the pixels to the left in the
current row (down-right-shifted 2x2 convolutions, conditioned on ``u``). Both run through gated residual
blocks (``resnets`` per scale) at ``scales`` resolutions (strided shifted convolutions down, shifted
transposed convolutions back up, with skip connections), and a 1x1 head gives the mixture parameters of
every pixel. ``log_prob`` is the exact log-probability of the 8-bit image, so with uniform dequantization
it is a density on [0,256)^D in nats, like every other family's. Sampling runs one network evaluation per
pixel (H*W evaluations: 784 for 28x28, each over the rows down to that pixel only; see ``benchmarks/bench_families.py`` for how slow that is).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from genood.models import dlml
from genood.models.base import BitsPerDimObjective
from genood.precision import exact


@exact
def raw_to_dlml(params: torch.Tensor, channels: int, mixtures: int, levels: int) -> torch.Tensor:
    """Seed 002's parameterization (``rescale_pixel_value: False``) in :mod:`models.dlml`'s units: the head gives
    each logistic's location in pixel units (bin k's centre is k) and its scale as ``max(sigmoid(s) * (levels-1),
    0.25)`` pixels; dlml wants means on [-1, 1] (centre of bin k at 2k/(levels-1) - 1) and log scales there."""
    m, c = mixtures, channels
    half = (levels - 1) / 2.0
    means = params[:, m:m + c * m] / half - 1.0
    scales = torch.clamp(torch.sigmoid(params[:, m + c * m:m + 2 * c * m]) * (levels - 1), min=0.25)
    return torch.cat([params[:, :m], means, torch.log(scales / half), params[:, m + 2 * c * m:]], dim=1)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (the top row becomes zeros): output row i sees input rows < i."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2 (no rows below)."""

    def __init__(self, cin: int, cout: int, kernel=(2, 3), stride: int = 1):
        super().__init__()
        self.kh, self.kw = kernel
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        p = (self.kw - 1) // 2
        return self.conv(F.pad(x, (p, p, self.kh - 1, 0)))


class DownRightShiftedConv(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-kw+1..j (nothing below, nothing to the right)."""

    def __init__(self, cin: int, cout: int, kernel=(2, 2), stride: int = 1):
        super().__init__()
        self.kh, self.kw = kernel
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, (self.kw - 1, 0, self.kh - 1, 0)))


class DownShiftedDeconv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(2, 3), stride: int = 2):
        super().__init__()
        self.kh, self.kw = kernel
        self.conv = nn.ConvTranspose2d(cin, cout, kernel, stride=stride, output_padding=1)

    def forward(self, x, size):
        y = self.conv(x)
        p = (self.kw - 1) // 2
        return y[:, :, :size[0], p:p + size[1]]


class DownRightShiftedDeconv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(2, 2), stride: int = 2):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, kernel, stride=stride, output_padding=1)

    def forward(self, x, size):
        return self.conv(x)[:, :, :size[0], :size[1]]


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), (a, b) = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux))))."""

    def __init__(self, filters: int, conv_cls, aux_channels: int = 0, dropout: float = 0.0):
        super().__init__()
        self.c1 = conv_cls(2 * filters, filters)
        self.aux = nn.Conv2d(2 * aux_channels, filters, 1) if aux_channels else None
        self.c2 = conv_cls(2 * filters, 2 * filters)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x, aux=None):
        h = self.c1(concat_elu(x))
        if self.aux is not None:
            h = h + self.aux(concat_elu(aux))
        h = self.c2(self.dropout(concat_elu(h)))
        a, b = h.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class PixelCNNPP(BitsPerDimObjective, nn.Module):
    """The ``pixelcnn`` family: :class:`models.base.DensityModel` with an exact likelihood."""

    loss_name = "bits_per_dim"

    def __init__(self, shape: Tuple[int, ...], cfg: Dict[str, Any]):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"the pixelcnn family models images (C,H,W); got data of shape {tuple(shape)}.")
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        c = self.shape[0]
        f, self.n_res, self.n_scales = int(cfg["filters"]), int(cfg["resnets"]), int(cfg["scales"])
        self.mixtures, self.levels = int(cfg["mixtures"]), int(cfg["levels"])
        self.raw = cfg.get("input", "unit") == "raw"  # seed 002: pixel values 0..levels-1 in, pixel-unit parameters out
        drop = float(cfg["dropout"])
        cin = c + 1  # a constant channel of ones marks the image against the zero padding
        self.u_init = DownShiftedConv(cin, f, (2, 3))
        self.ul_init_v = DownShiftedConv(cin, f, (1, 3))
        self.ul_init_h = DownRightShiftedConv(cin, f, (2, 1))
        dsc = lambda i, o: DownShiftedConv(i, o, (2, 3))
        drc = lambda i, o: DownRightShiftedConv(i, o, (2, 2))
        self.up_u = nn.ModuleList([nn.ModuleList([GatedResnet(f, dsc, 0, drop) for _ in range(self.n_res)])
                                   for _ in range(self.n_scales)])
        self.up_ul = nn.ModuleList([nn.ModuleList([GatedResnet(f, drc, f, drop) for _ in range(self.n_res)])
                                    for _ in range(self.n_scales)])
        self.down_u = nn.ModuleList([DownShiftedConv(f, f, (2, 3), stride=2) for _ in range(self.n_scales - 1)])
        self.down_ul = nn.ModuleList([DownRightShiftedConv(f, f, (2, 2), stride=2) for _ in range(self.n_scales - 1)])
        # the second pass: the lowest resolution takes `resnets` blocks, every other `resnets + 1` (one per skip)
        n_down = [self.n_res if s == self.n_scales - 1 else self.n_res + 1 for s in range(self.n_scales)]
        self.dn_u = nn.ModuleList([nn.ModuleList([GatedResnet(f, dsc, f, drop) for _ in range(n)]) for n in n_down])
        self.dn_ul = nn.ModuleList([nn.ModuleList([GatedResnet(f, drc, 2 * f, drop) for _ in range(n)]) for n in n_down])
        self.up_u_deconv = nn.ModuleList([DownShiftedDeconv(f, f) for _ in range(self.n_scales - 1)])
        self.up_ul_deconv = nn.ModuleList([DownRightShiftedDeconv(f, f) for _ in range(self.n_scales - 1)])
        self.head = nn.Conv2d(f, dlml.n_params(c, self.mixtures), 1)

    # --- the network ------------------------------------------------------------------------------
    def to_model_space(self, k: torch.Tensor) -> torch.Tensor:
        return k if self.raw else 2.0 * k / (self.levels - 1) - 1.0

    def params(self, k: torch.Tensor) -> torch.Tensor:
        """Mixture parameters (B, P, H, W) of every pixel given the pixels before it; k (B,C,H,W) integer bins."""
        x = self.to_model_space(k)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        us = [down_shift(self.u_init(x))]
        uls = [down_shift(self.ul_init_v(x)) + right_shift(self.ul_init_h(x))]
        sizes = []
        for s in range(self.n_scales):
            for bu, bul in zip(self.up_u[s], self.up_ul[s]):
                us.append(bu(us[-1]))
                uls.append(bul(uls[-1], us[-1]))
            if s < self.n_scales - 1:
                sizes.append(us[-1].shape[-2:])
                us.append(self.down_u[s](us[-1]))
                uls.append(self.down_ul[s](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for s in reversed(range(self.n_scales)):
            for bu, bul in zip(self.dn_u[s], self.dn_ul[s]):
                u = bu(u, us.pop())
                ul = bul(ul, torch.cat([u, uls.pop()], dim=1))
            if s > 0:
                size = sizes.pop()
                u, ul = self.up_u_deconv[s - 1](u, size), self.up_ul_deconv[s - 1](ul, size)
        assert not us and not uls
        out = self.head(F.elu(ul))
        return raw_to_dlml(out, self.shape[0], self.mixtures, self.levels) if self.raw else out

    # --- protocol -----------------------------------------------------------------------------------
    def _bins(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x).clamp(0, self.levels - 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log P(floor(x)) in nats: a density on [0,256)^D under uniform dequantization."""
        k = self._bins(x)
        return dlml.log_prob(self.params(k), k, self.mixtures, self.levels)

    def rows_needed(self, i: int) -> int:
        """How many top rows of the image the parameters of row ``i`` depend on, rounded up so that every
        strided (down-sampling) convolution keeps its alignment: ``params`` of the top rows alone equals the
        top rows of ``params`` of the whole image (nothing looks down; the strides count from the top)."""
        m = 2 ** (self.n_scales - 1)
        return min(self.shape[1], -(-(i + 1) // m) * m)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ancestral sampling, one network evaluation per pixel (all channels of a pixel at once); pixel (i, j)
        runs the network on the rows down to i only (:meth:`rows_needed`), about half the work of whole images."""
        device = next(self.parameters()).device
        c, h, w = self.shape
        k = torch.zeros((n, c, h, w), device=device)
        for i in range(h):
            top = self.rows_needed(i)
            for j in range(w):
                p = self.params(k[:, :, :top])[:, :, i:i + 1, j:j + 1]
                k[:, :, i:i + 1, j:j + 1] = dlml.sample(p, c, self.mixtures, self.levels, generator)
        return k


def build_pixelcnn(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> PixelCNNPP:
    return PixelCNNPP(shape, model_cfg)
