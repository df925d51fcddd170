"""The DCGAN-style VAE of likelihood regret (Xiao et al. 2020): one Gaussian latent vector, a 256-way categorical
likelihood per pixel.

Layout (the seed's ``DCGAN_VAE_pixel.py``, written anew here): images live on an S x S canvas, S a power of two
and at least 16. The encoder is a stride-2 4x4 convolution to ``filters`` channels, then stride-2 4x4 convolutions
doubling the channels down to 4 x 4 (each followed by batch normalization and ReLU, no biases), and two 4x4
"valid" convolutions reading the mean and the log-variance of the ``latent``-dimensional posterior. The decoder
mirrors it with transposed convolutions (batch normalization and ReLU between them) up to S x S with
``C * 256`` output channels: the logits of each pixel's 256 values. Weights start as the seed's DCGAN
initialization (N(0, 0.02) convolutions, N(1, 0.02) batch-norm gains).

Units: the likelihood is a distribution over the 256 values of each stored pixel, P(x | z) = prod softmax(.)[x],
so with uniform dequantization it is a density on [0,256)^D with the same value (each bin has width 1): ``log_prob``
is in nats of the data in [0,256)^D like every family's. Images smaller than the canvas (28 x 28 in S = 32) are
zero-padded at the centre for the encoder and only their own pixels enter the likelihood, so D is the data's
C*H*W. (Seed's preprocessing resizes 28 -> 32; the ``vae_regret_paper`` preset does that through
``data.shape: [1, 32, 32]``, and then D = 1,024 of the resized image.)

``log_prob`` is the importance-weighted bound with ``bound.samples`` posterior samples (the seed computes its NLL
with 1,000); ``training_loss`` is the seed's objective, the negative single-sample ELBO in nats per image (not per
dimension: with Adam's L2 weight decay the scale of the loss matters). ``likelihood_regret`` is the seed's score:
a copy of the encoder's weights is fitted to each image alone and the bound gained is the regret.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from genood.models.base import content_generators, nats_to_bits_per_dim
from genood.precision import exact, network

__all__ = ["DCGANVAE", "build_vae", "canvas_side"]

LOG_2PI = math.log(2 * math.pi)
LEVELS = 256


def canvas_side(height: int, width: int) -> int:
    """The square canvas the DCGAN layout works on: the smallest power of two >= max(H, W), at least 16."""
    return max(16, 1 << (max(height, width) - 1).bit_length())


def _encoder(channels: int, side: int, filters: int, latent: int) -> Tuple[nn.Module, nn.Module, nn.Module]:
    n = int(math.log2(side))
    body: List[nn.Module] = [nn.Conv2d(channels, filters, 4, 2, 1, bias=False), nn.BatchNorm2d(filters), nn.ReLU()]
    width = filters
    for _ in range(n - 3):  # side/2 -> 4
        body += [nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU()]
        width *= 2
    return nn.Sequential(*body), nn.Conv2d(width, latent, 4), nn.Conv2d(width, latent, 4)


def _decoder(channels: int, side: int, filters: int, latent: int) -> nn.Module:
    width, size = max(1, filters // 2), 4
    while size != side:
        width, size = width * 2, size * 2
    body: List[nn.Module] = [nn.ConvTranspose2d(latent, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    size = 4
    while size < side // 2:
        body += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU()]
        width, size = width // 2, size * 2
    body.append(nn.ConvTranspose2d(width, channels * LEVELS, 4, 2, 1, bias=False))
    return nn.Sequential(*body)


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@exact
def _categorical_log_lik(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C, 256, H, W) logits and (B, C, H, W) integer targets -> (B,) sum of log softmax(logits)[target]."""
    b, c, levels, h, w = logits.shape  # (B*C, 256, H, W): cross_entropy's class axis 1, its fastest layout
    ce = F.cross_entropy(logits.float().reshape(b * c, levels, h, w), targets.long().reshape(b * c, h, w),
                         reduction="none")
    return -ce.reshape(b, -1).sum(1)


@exact
def _kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent, (B,)."""
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


@exact
def _log_weight(log_lik: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) per row."""
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(1)
    log_qz = -0.5 * ((z - mu).pow(2) / logvar.exp() + LOG_2PI + logvar).sum(1)
    return log_lik + log_pz - log_qz


class DCGANVAE(nn.Module):
    """The ``vae`` family (see the module docstring)."""

    loss_name = "nelbo_nats"

    def __init__(self, shape: Tuple[int, ...], cfg: Dict[str, Any]):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"model.family 'vae' needs image data (C, H, W), got shape {tuple(shape)}.")
        self.shape = tuple(int(s) for s in shape)
        c, h, w = self.shape
        self.dim = c * h * w
        self.side = canvas_side(h, w)
        self.top, self.left = (self.side - h) // 2, (self.side - w) // 2
        self.latent = int(cfg["latent"])
        body, mu_head, logvar_head = _encoder(c, self.side, int(cfg["filters"]), self.latent)
        self.encoder = nn.ModuleDict({"body": body, "mu": mu_head, "logvar": logvar_head})
        self.decoder = _decoder(c, self.side, int(cfg["filters"]), self.latent)
        self.apply(_dcgan_init)
        for net in (body, mu_head, logvar_head, self.decoder):  # convolutions in the training precision, outputs fp32
            network(net)
        self.bound_cfg: Dict[str, Any] = {"samples": 1, "seed": 0, "chunk": 256}
        self.log_prob_unit = "nats of the data in [0,256)^D"

    # --- settings -------------------------------------------------------------------------------------------------
    def configure(self, cfg: Dict[str, Any]) -> None:
        """Evaluation settings of a run: ``bound.*`` (importance samples, noise seed, chunk)."""
        self.bound_cfg = dict(cfg.get("bound") or self.bound_cfg)

    def metric_info(self) -> Dict[str, Dict[str, Any]]:
        info = {"likelihood": "categorical", "unit": self.log_prob_unit, "iw_samples": int(self.bound_cfg["samples"])}
        return {"log_likelihood": dict(info), "bits_per_dim": dict(info)}

    # --- pieces ---------------------------------------------------------------------------------------------------
    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x).clamp(0, LEVELS - 1)

    def _canvas(self, t: torch.Tensor) -> torch.Tensor:
        """Integer targets (B, C, H, W) -> the encoder's input on the canvas: value / 255 (the seed's ToTensor),
        zero outside the image."""
        inp = t / 255.0
        if (self.top, self.left) == (0, 0) and inp.shape[-1] == self.side:
            return inp
        _, _, h, w = inp.shape
        return F.pad(inp, (self.left, self.side - w - self.left, self.top, self.side - h - self.top))

    def _encode(self, inp: torch.Tensor, params: Optional[Dict[str, torch.Tensor]] = None):
        """(mu, logvar), each (B, latent); ``params`` replaces the encoder's weights (likelihood regret's copy)."""
        if params is None:
            d = self.encoder["body"](inp)
            return self.encoder["mu"](d).flatten(1), self.encoder["logvar"](d).flatten(1)
        d = torch.func.functional_call(self.encoder["body"], _sub(params, "body."), (inp,))
        mu = torch.func.functional_call(self.encoder["mu"], _sub(params, "mu."), (d,))
        logvar = torch.func.functional_call(self.encoder["logvar"], _sub(params, "logvar."), (d,))
        return mu.flatten(1), logvar.flatten(1)

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) -> (B, C, 256, H, W) logits of the image's own pixels (the canvas cropped)."""
        c, h, w = self.shape
        out = self.decoder(z[:, :, None, None]).reshape(z.shape[0], c, LEVELS, self.side, self.side)
        return out[..., self.top:self.top + h, self.left:self.left + w]

    def _elbo(self, t: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        z = mu + torch.exp(0.5 * logvar) * eps
        return _categorical_log_lik(self._logits(z), t) - _kl_standard_normal(mu, logvar)

    def _generators(self, x: torch.Tensor, salt: int) -> List[torch.Generator]:
        return content_generators(x, int(self.bound_cfg.get("seed", 0)), salt)

    def _iw(self, t: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, gens: List[torch.Generator],
            samples: int) -> torch.Tensor:
        """(B,) importance-weighted bound with ``samples`` posterior draws per image (each image's own generator)."""
        b = t.shape[0]
        out = torch.empty(b, samples, device=t.device)
        per = max(1, int(self.bound_cfg.get("chunk", 256)) // max(b, 1))
        for s0 in range(0, samples, per):
            r = min(samples, s0 + per) - s0
            eps = torch.cat([torch.randn((r, self.latent), generator=g) for g in gens]).to(t.device)
            mu_r, lv_r = mu.repeat_interleave(r, 0), logvar.repeat_interleave(r, 0)
            z = mu_r + torch.exp(0.5 * lv_r) * eps
            lw = _log_weight(_categorical_log_lik(self._logits(z), t.repeat_interleave(r, 0)), z, mu_r, lv_r)
            out[:, s0:s0 + r] = lw.reshape(b, r)
        return torch.logsumexp(out, dim=1) - math.log(samples)

    # --- protocol -------------------------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the seed's objective: -(log p(x | z) - KL(q(z|x) || N(0, I))) with one posterior draw, nats per image."""
        t = self._targets(x)
        mu, logvar = self._encode(self._canvas(t))
        return -self._elbo(t, mu, logvar, torch.randn_like(mu))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the importance-weighted bound with ``bound.samples`` draws (a lower bound on log p(x)), nats; the
        posterior noise is seeded by each image's content, so a score does not depend on the batch."""
        t = self._targets(x)
        mu, logvar = self._encode(self._canvas(t))
        return self._iw(t, mu, logvar, self._generators(x, 0), int(self.bound_cfg["samples"]))

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        return nats_to_bits_per_dim(self.log_prob(x), self.dim)

    @staticmethod
    def likelihood_term_labels(model_cfg: Dict[str, Any]) -> List[str]:
        """Names of the additive terms of ``log_prob_terms``."""
        return ["reconstruction", "kl"]

    def log_prob_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The single-sample ELBO split into its two terms, (B,) each in nats: ``reconstruction`` log p(x | z) at one
        posterior draw (the bound's first, seeded per image) and ``kl`` = -KL(q(z|x) || N(0, I)) (analytic). They sum
        to the ELBO the seed trains on, at that draw (DoSE's VAE statistics); the one-sample bound of ``log_prob``
        estimates the same ELBO with a sampled KL instead."""
        t = self._targets(x)
        mu, logvar = self._encode(self._canvas(t))
        eps = torch.cat([torch.randn((1, self.latent), generator=g) for g in self._generators(x, 0)]).to(x.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        return {"reconstruction": _categorical_log_lik(self._logits(z), t), "kl": -_kl_standard_normal(mu, logvar)}

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z ~ N(0, I), then each pixel's value drawn from its categorical: (n, C, H, W) integer values as floats."""
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent), generator=generator).to(device)
        probs = torch.softmax(self._logits(z).float(), dim=2).movedim(2, -1)
        flat = probs.reshape(-1, LEVELS).cpu()
        values = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        return values.float().to(device)

    def likelihood_regret(self, x: torch.Tensor, steps: int, lr: float, weight_decay: float = 0.0) -> torch.Tensor:
        """Likelihood regret (Xiao et al. 2020), (B,) nats: the importance-weighted bound (``bound.samples`` draws)
        after fitting a copy of the encoder's weights to each image alone, minus the bound with the trained encoder.
        As the seed's ``compute_LR.py``: Adam (``lr``, betas 0.9 / 0.999, L2 ``weight_decay``) for ``steps`` steps on
        that image's single-sample negative ELBO, a fresh posterior draw each step; batch normalization keeps its
        running statistics (eval mode); the decoder and the model's own weights are not touched. Both bounds use
        the same seeded draws, so the regret measures the encoder change alone."""
        t = self._targets(x)
        gens_iw = self._generators(x, 0)
        samples = int(self.bound_cfg["samples"])
        with torch.no_grad():
            mu, logvar = self._encode(self._canvas(t))
            before = self._iw(t, mu, logvar, gens_iw, samples)
        names = [n for n, _ in self.encoder.named_parameters()]
        buffers = dict(self.encoder.named_buffers())
        after = torch.empty_like(before)
        gens_fit = self._generators(x, 9)
        for j in range(x.shape[0]):
            tj = t[j:j + 1]
            inp = self._canvas(tj)
            weights = [p.detach().clone().requires_grad_(True) for p in self.encoder.parameters()]
            opt = torch.optim.Adam(weights, lr=float(lr), betas=(0.9, 0.999), weight_decay=float(weight_decay))
            gen = gens_fit[j]
            with torch.enable_grad():
                for _ in range(int(steps)):
                    params = {**dict(zip(names, weights)), **buffers}
                    mu_j, lv_j = self._encode(inp, params)
                    eps = torch.randn((1, self.latent), generator=gen).to(x.device)
                    loss = -self._elbo(tj, mu_j, lv_j, eps).sum()
                    opt.zero_grad(set_to_none=True)
                    for w, g in zip(weights, torch.autograd.grad(loss, weights)):
                        w.grad = g
                    opt.step()
            with torch.no_grad():
                mu_j, lv_j = self._encode(inp, {**dict(zip(names, weights)), **buffers})
                after[j] = self._iw(tj, mu_j, lv_j, gens_iw[j:j + 1], samples)[0]
        return after - before


def _sub(params: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def build_vae(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> DCGANVAE:
    return DCGANVAE(shape, model_cfg)
