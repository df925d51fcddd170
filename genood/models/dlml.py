"""The discretized logistic mixture likelihood (Salimans et al. 2017) over ``levels`` intensity bins.

A pixel with C channels takes integer values k in {0, ..., levels-1} per channel, placed at the bin
centres c_k = 2k/(levels-1) - 1 in [-1, 1], each bin 2/(levels-1) wide. Per pixel, a mixture of
``mixtures`` components; in component m, channel c is a logistic with mean mu_{m,c} plus a linear
function of the channels before it (coefficients coupling R -> G -> B, as PixelCNN++ does), and scale
s_{m,c}. The probability of bin k is the logistic CDF mass over the bin; the two edge bins take the
tails. Probabilities of one pixel sum to 1 over all levels^C values, so the log-probability of 8-bit
data is a density on [0,256)^D under uniform dequantization (each bin is one unit wide): the nats our
other families report.

Parameters per pixel: ``n_params(C, mixtures)`` channels of a network output, in the order
[logits (M) | means (C*M) | log scales (C*M) | coefficients (C(C-1)/2 * M)].
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from genood.precision import exact

MIN_LOG_SCALE = -7.0


def n_params(channels: int, mixtures: int) -> int:
    return mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def _split(params: torch.Tensor, channels: int, mixtures: int):
    """params (B, P, H, W) -> logits (B,M,H,W), means and log scales (B,M,C,H,W), coeffs (B,M,C(C-1)/2,H,W)."""
    b, _, h, w = params.shape
    m, c = mixtures, channels
    n_coef = c * (c - 1) // 2
    logits = params[:, :m]
    means = params[:, m:m + c * m].reshape(b, m, c, h, w)
    log_scales = params[:, m + c * m:m + 2 * c * m].reshape(b, m, c, h, w).clamp(min=MIN_LOG_SCALE)
    coeffs = torch.tanh(params[:, m + 2 * c * m:m + (2 * c + n_coef) * m].reshape(b, m, n_coef, h, w))
    return logits, means, log_scales, coeffs


def _coupled_means(means: torch.Tensor, coeffs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Channel c's mean plus sum_{j<c} coeff_{c,j} * value_j (values (B,C,H,W) in [-1,1], broadcast over M)."""
    c = means.shape[2]
    if c == 1:
        return means
    out = [means[:, :, 0]]
    k = 0
    for ch in range(1, c):
        mean = means[:, :, ch]
        for j in range(ch):
            mean = mean + coeffs[:, :, k] * values[:, None, j]
            k += 1
        out.append(mean)
    return torch.stack(out, dim=2)


def _log_bin_mass(centre: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, k: torch.Tensor,
                  levels: int) -> torch.Tensor:
    """log P(bin k) for a logistic(mean, exp(log_scale)); centre is bin k's centre in [-1, 1]."""
    half = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    upper = (centre - mean + half) * inv
    lower = (centre - mean - half) * inv
    # log(sigmoid(upper) - sigmoid(lower)) = logsig(upper) + logsig(-lower) + log(1 - exp(lower - upper))
    middle = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper).clamp(max=-1e-30))
    first = F.logsigmoid(upper)            # bin 0: everything below its upper edge
    last = F.logsigmoid(-lower)            # bin levels-1: everything above its lower edge
    return torch.where(k <= 0, first, torch.where(k >= levels - 1, last, middle))


@exact
def log_prob(params: torch.Tensor, k: torch.Tensor, mixtures: int, levels: int = 256) -> torch.Tensor:
    """log P(k) per image: params (B, P, H, W), k (B, C, H, W) integer bins -> (B,) nats (summed over pixels);
    float32 also when the network that gave ``params`` ran in reduced precision."""
    c = k.shape[1]
    logits, means, log_scales, coeffs = _split(params, c, mixtures)
    kf = k.to(params.dtype)
    centre = 2.0 * kf / (levels - 1) - 1.0                          # (B,C,H,W)
    means = _coupled_means(means, coeffs, centre)
    per_channel = _log_bin_mass(centre[:, None], means, log_scales, kf[:, None], levels)  # (B,M,C,H,W)
    per_pixel = torch.logsumexp(per_channel.sum(2) + F.log_softmax(logits, dim=1), dim=1)  # (B,H,W)
    return per_pixel.flatten(1).sum(1)


def sample(params: torch.Tensor, channels: int, mixtures: int, levels: int = 256,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per pixel: (B, C, H, W) integer bins (as float) in [0, levels-1]."""
    logits, means, log_scales, coeffs = _split(params, channels, mixtures)
    b, m, _, h, w = means.shape
    dev = params.device
    u = torch.rand(logits.shape, generator=generator).to(dev).clamp(1e-6, 1 - 1e-6)
    comp = (logits - torch.log(-torch.log(u))).argmax(dim=1)           # Gumbel-max: (B,H,W)
    pick = lambda t: torch.gather(t, 1, comp[:, None, None].expand(b, 1, t.shape[2], h, w)).squeeze(1)
    mean, log_scale = pick(means), pick(log_scales)                    # (B,C,H,W)
    coef = pick(coeffs) if coeffs.shape[2] else None
    values = []
    k = 0
    for ch in range(channels):
        mu = mean[:, ch]
        for j in range(ch):
            mu = mu + coef[:, k] * values[j]
            k += 1
        r = torch.rand(mu.shape, generator=generator).to(dev).clamp(1e-5, 1 - 1e-5)
        v = (mu + torch.exp(log_scale[:, ch]) * (torch.log(r) - torch.log1p(-r))).clamp(-1.0, 1.0)
        v = 2.0 * torch.round((v + 1.0) * (levels - 1) / 2.0) / (levels - 1) - 1.0  # snap to a bin centre
        values.append(v)
    return torch.round((torch.stack(values, 1) + 1.0) * (levels - 1) / 2.0)


def nats_per_image_to_bits_per_dim(nats: torch.Tensor, dim: int) -> torch.Tensor:
    return -nats / (dim * math.log(2.0))
