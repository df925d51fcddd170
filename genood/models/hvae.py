"""Hierarchical VAEs (seed 004, Havtorn et al. 2021): L stochastic layers, bottom-up inference, top-down generation.

Layers are numbered 1 (lowest, nearest the data) to L (top). Bottom-up, a deterministic stage i maps
d_{i-1} to d_i (d_0 the input; residual blocks of ``channels`` channels with kernel ``kernels[i]``, then a
``strides[i]`` downsampling) and the posterior q(z_i | x) = N(mu, sigma) is a head on d_i: convolutional
(``latent_kinds[i] = conv``: ``latents[i]`` channels at d_i's resolution) or dense (a vector). Top-down,
z_L ~ N(0, I); each z_i is projected to d_i's shape, added to the top-down state from above (``skip``),
run through residual blocks and upsampled to d_{i-1}'s shape: h_i, from which the conditional prior
p(z_{i-1} | h_i) and finally the likelihood p(x | h_1) are read.

Likelihoods (``model.likelihood``):
* ``dlml``: the discretized logistic mixture over the 256 levels of 8-bit data (:mod:`models.dlml`); with
  uniform dequantization it is a density on [0,256)^D, so ``log_prob`` is in the nats every family reports;
* ``bernoulli``: dynamically binarized pixels (b ~ Bernoulli(x/256), as seed 004 trains); at evaluation each
  image is binarized once with noise seeded by its content. NOT a density on [0,256)^D: its unit is nats of
  the binarized image (``log_prob_unit`` says so and every metrics entry carries it);
* ``gaussian``: vectors (synthetic manifolds, tabular data), a diagonal Gaussian in nats of the vector.

``log_prob`` is the importance-weighted bound (Burda et al.) with S = ``bound.samples`` posterior samples,
a lower bound on log p(x) that tightens with S. ``bounds(x, ks)`` gives L>k for every k (Havtorn et al.):
the k lowest latents are taken from their conditional prior (its mode or a sample, ``llr.prior``) and
only layers above k from the posterior, with the same posterior noise for every k so L>0 == L exactly.
Training minimises the negative ELBO in bits/dim with KL warm-up (beta 0 -> 1 over ``kl_warmup_steps``)
and free bits (each layer's KL floored at ``free_bits`` nats, or with ``free_bits_per: element`` each latent
dimension at its share of them as seed 004 does; the floor held for ``free_bits_constant_steps`` and then
decaying to 0 over ``free_bits_steps``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from genood.models import dlml
from genood.models.base import content_generators, nats_to_bits_per_dim
from genood.precision import exact

LOG_2PI = math.log(2 * math.pi)


@exact
def _gauss_logp(z: torch.Tensor, mu: torch.Tensor, log_sd: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - mu) * torch.exp(-log_sd)).pow(2) - log_sd - 0.5 * LOG_2PI).flatten(1).sum(1)


@exact
def _gauss_kl_elements(mu_q, log_sd_q, mu_p, log_sd_p) -> torch.Tensor:
    """KL(N(mu_q, sd_q) || N(mu_p, sd_p)) of every latent dimension, (B, d)."""
    var_ratio = torch.exp(2 * (log_sd_q - log_sd_p))
    t = ((mu_q - mu_p) * torch.exp(-log_sd_p)).pow(2)
    return (0.5 * (var_ratio + t - 1.0) - (log_sd_q - log_sd_p)).flatten(1)


def _gauss_kl(mu_q, log_sd_q, mu_p, log_sd_p) -> torch.Tensor:
    """KL(N(mu_q, sd_q) || N(mu_p, sd_p)) summed over all but the batch dimension."""
    return _gauss_kl_elements(mu_q, log_sd_q, mu_p, log_sd_p).sum(1)


def _weight_norm(module: nn.Module) -> None:
    """w = g * v / |v| on ``module``. A map initialised to zero (a residual branch that starts as the identity)
    keeps starting at zero: its direction v takes the default initialisation and its gain g is 0."""
    zero = not bool(module.weight.detach().abs().sum())
    if zero:
        module.reset_parameters()
        nn.init.zeros_(module.bias)
    nn.utils.parametrizations.weight_norm(module)
    if zero:
        with torch.no_grad():
            module.parametrizations.weight.original0.zero_()


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))) (conv nets) or the dense equivalent (vectors)."""

    def __init__(self, width: int, kernel: int, conv: bool):
        super().__init__()
        if conv:
            self.a = nn.Conv2d(width, width, kernel, padding=kernel // 2)
            self.b = nn.Conv2d(width, width, kernel, padding=kernel // 2)
        else:
            self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x):
        return x + self.b(F.silu(self.a(F.silu(x))))


class _Layer(nn.Module):
    """Everything of stochastic layer i: its bottom-up stage, posterior head, top-down stage and prior head."""

    def __init__(self, conv: bool, in_shape: Tuple[int, ...], width: int, kernel: int, stride: int, blocks: int,
                 latent: int, kind: str):
        super().__init__()
        self.conv, self.kind, self.latent = conv, kind, latent
        if conv:
            c, h, w = in_shape
            self.up_in = nn.Conv2d(c, width, kernel, padding=kernel // 2)
            self.up_blocks = nn.Sequential(*[ResBlock(width, kernel, True) for _ in range(blocks)])
            self.down_sample = nn.Conv2d(width, width, 3, stride=stride, padding=1) if stride > 1 else nn.Identity()
            # the output size of a 3x3 / stride / pad 1 convolution (28 -> 14 -> 7 -> 4 at stride 2)
            oh, ow = ((h - 1) // stride + 1, (w - 1) // stride + 1) if stride > 1 else (h, w)
            self.out_shape = (width, oh, ow)
            feat = width * oh * ow
            if kind == "conv":
                self.q_head = nn.Conv2d(width, 2 * latent, 3, padding=1)
                self.z_shape = (latent, oh, ow)
                self.z_proj = nn.Conv2d(latent, width, 1)
            else:
                self.q_head = nn.Linear(feat, 2 * latent)
                self.z_shape = (latent,)
                self.z_proj = nn.Linear(latent, feat)
            self.down_blocks = nn.Sequential(*[ResBlock(width, kernel, True) for _ in range(blocks)])
            # back to the input's shape: upsample (if the stage downsampled) and map to the input's channel count
            self.up_sample = (nn.Upsample(size=(h, w), mode="nearest") if stride > 1 else nn.Identity())
            self.down_out = nn.Conv2d(width, width, kernel, padding=kernel // 2)
            self.h_shape = (width, h, w)
        else:
            (d,) = in_shape
            self.up_in = nn.Linear(d, width) if blocks else nn.Identity()
            self.up_blocks = nn.Sequential(*[ResBlock(width, 0, False) for _ in range(blocks)])
            self.down_sample = nn.Identity()
            out = width if blocks else d
            self.out_shape = (out,)
            self.q_head = nn.Linear(out, 2 * latent)
            self.z_shape = (latent,)
            self.z_proj = nn.Linear(latent, out)
            self.down_blocks = nn.Sequential(*[ResBlock(out, 0, False) for _ in range(blocks)])
            self.up_sample = nn.Identity()
            self.down_out = nn.Linear(out, width) if blocks else nn.Identity()
            self.h_shape = (width if blocks else d,)
        self.p_head = None  # the conditional prior p(z_i | h_{i+1}); set by the model (the top layer has none)

    def up(self, d):
        return self.down_sample(self.up_blocks(self.up_in(d)))

    def posterior(self, d):
        p = self.q_head(d if (self.conv and self.kind == "conv") or not self.conv else d.flatten(1))
        mu, log_sd = p.chunk(2, dim=1)
        return mu, log_sd

    def prior(self, h_above: Optional[torch.Tensor], batch: int, like: torch.Tensor):
        if self.p_head is None:
            z = torch.zeros((batch, *self.z_shape), device=like.device, dtype=like.dtype)
            return z, z
        src = h_above if isinstance(self.p_head, nn.Conv2d) else h_above.flatten(1)
        mu, log_sd = self.p_head(src).chunk(2, dim=1)
        return mu, log_sd

    def down(self, z, h_above: Optional[torch.Tensor]):
        u = self.z_proj(z)
        if self.conv:
            u = u.reshape(u.shape[0], *self.out_shape)
        if h_above is not None:
            u = u + h_above.reshape(u.shape)
        return self.down_out(self.up_sample(self.down_blocks(u)))


class HierarchicalVAE(nn.Module):
    """The ``hvae`` family (see the module docstring)."""

    loss_name = "nelbo_bpd"

    def __init__(self, shape: Tuple[int, ...], cfg: Dict[str, Any]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        self.images = len(self.shape) == 3
        self.lik = cfg["likelihood"]
        if self.images == (self.lik == "gaussian"):
            raise ValueError(f"model.likelihood {self.lik!r} does not fit data of shape {self.shape}: images take "
                             "'dlml' or 'bernoulli', vectors take 'gaussian'.")
        conv = self.images and cfg["network"] == "conv"
        if self.images and not conv:
            raise ValueError("model.network 'mlp' needs vector data; use 'conv' for images.")
        if not self.images and cfg["network"] != "mlp":
            raise ValueError("model.network 'conv' needs image data (C,H,W); use 'mlp' for vectors.")
        latents, kinds = list(cfg["latents"]), list(cfg["latent_kinds"])
        kernels, strides = list(cfg["kernels"]), list(cfg["strides"])
        n = len(latents)
        for key, val in (("latent_kinds", kinds), ("kernels", kernels), ("strides", strides)):
            if len(val) != n:
                raise ValueError(f"model.{key} has {len(val)} entries but model.latents has {n}: give one per stochastic layer.")
        if not conv and any(k != "dense" for k in kinds):
            raise ValueError("model.latent_kinds must all be 'dense' for vector data.")
        self.mixtures, self.levels = int(cfg["mixtures"]), int(cfg["levels"])
        width = int(cfg["channels"] if conv else cfg["hidden"])
        self.skip = bool(cfg["skip"])
        layers: List[_Layer] = []
        in_shape: Tuple[int, ...] = self.shape
        for i in range(n):
            layer = _Layer(conv, in_shape, width, int(kernels[i]), int(strides[i]), int(cfg["blocks"]),
                           int(latents[i]), kinds[i])
            layers.append(layer)
            in_shape = layer.out_shape
        # conditional priors: p(z_i | h_{i+1}), h_{i+1} has layer i+1's input shape = layer i's output shape
        for i in range(n - 1):
            lay = layers[i]
            src = layers[i + 1].h_shape
            if conv and lay.kind == "conv":
                lay.p_head = nn.Conv2d(src[0], 2 * lay.latent, 3, padding=1)
            else:
                lay.p_head = nn.Linear(int(math.prod(src)), 2 * lay.latent)
        self.layers = nn.ModuleList(layers)
        h0 = layers[0].h_shape
        c = self.shape[0] if self.images else self.dim
        out_ch = {"dlml": dlml.n_params(c, self.mixtures), "bernoulli": c, "gaussian": 2 * c}[self.lik]
        self.out = nn.Conv2d(h0[0], out_ch, 1) if conv else nn.Linear(h0[0], out_ch)
        self.free_bits, self.free_bits_steps = float(cfg["free_bits"]), int(cfg["free_bits_steps"])
        self.free_bits_constant_steps = int(cfg.get("free_bits_constant_steps", 0))
        self.free_bits_per = cfg.get("free_bits_per", "layer")
        if cfg.get("weight_norm", False):  # seed 004: weight normalization on every convolution and dense map
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    _weight_norm(module)
        self.kl_warmup_steps = int(cfg["kl_warmup_steps"])
        self._step = None  # set by the training loop (KL warm-up, free bits)
        self.bound_cfg: Dict[str, Any] = {"samples": 1, "seed": 0, "chunk": 256}
        self.llr_prior = "mode"
        self.llr_samples = 1
        self.log_prob_unit = ("nats of the dynamically binarized image {0,1}^D (not a density on [0,256)^D)"
                              if self.lik == "bernoulli" else
                              "nats of the data in [0,256)^D" if self.images else "nats of the vector data")

    # --- settings ------------------------------------------------------------------------------
    def configure(self, cfg: Dict[str, Any]) -> None:
        """Evaluation settings of a run: ``bound.*`` (importance samples S, seed) and ``llr.prior``."""
        self.bound_cfg = dict(cfg.get("bound") or self.bound_cfg)
        self.llr_prior = (cfg.get("llr") or {}).get("prior", "mode")
        self.llr_samples = (cfg.get("llr") or {}).get("samples") or self.bound_cfg["samples"]

    def set_training_step(self, step: int, total: int) -> None:
        self._step = int(step)

    def metric_info(self) -> Dict[str, Dict[str, Any]]:
        """What metrics entries of the likelihood scores should say about how they were computed."""
        info = {"likelihood": self.lik, "unit": self.log_prob_unit, "iw_samples": int(self.bound_cfg["samples"])}
        llr = dict(info, iw_samples=int(self.llr_samples), llr_prior=self.llr_prior)
        return {"log_likelihood": dict(info), "bits_per_dim": dict(info), "llr": llr}

    # --- data ---------------------------------------------------------------------------------
    def _targets(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """What the likelihood scores: integer bins (dlml), binary pixels (bernoulli) or the vector (gaussian)."""
        if self.lik == "dlml":
            return torch.floor(x).clamp(0, self.levels - 1)
        if self.lik == "bernoulli":
            p = (x / 256.0).clamp(0.0, 1.0)
            u = torch.rand(p.shape, generator=generator).to(p.device) if generator is not None else torch.rand_like(p)
            return (u < p).to(x.dtype)
        return x.reshape(x.shape[0], -1)

    def _encoder_input(self, t: torch.Tensor) -> torch.Tensor:
        if self.lik == "dlml":
            return 2.0 * t / (self.levels - 1) - 1.0
        if self.lik == "bernoulli":
            return 2.0 * t - 1.0
        return t

    @exact
    def _log_lik(self, params: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.lik == "dlml":
            return dlml.log_prob(params, t, self.mixtures, self.levels)
        if self.lik == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params, t, reduction="none").flatten(1).sum(1)
        mu, log_sd = params.chunk(2, dim=1)
        return _gauss_logp(t, mu, log_sd)

    # --- passes -------------------------------------------------------------------------------
    def _posteriors(self, inp: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        out, d = [], inp
        for layer in self.layers:
            d = layer.up(d)
            out.append(layer.posterior(d))
        return out

    def _top_down(self, posts, noise, skip_k: int = 0, prior: str = "mode", prior_noise=None, elementwise: bool = False):
        """Top-down pass. Layers i > skip_k take z = mu_q + sd_q * noise; layers i <= skip_k take their conditional
        prior's mode (or a sample with ``prior_noise``). Returns (likelihood params, per-layer log q, log p, kl);
        ``elementwise``: each layer's KL per latent dimension (B, d) instead of its sum."""
        h = None
        b = posts[0][0].shape[0]
        logq, logp, kls = [], [], []
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            mu_p, lsd_p = layer.prior(h, b, posts[0][0])
            mu_q, lsd_q = posts[i]
            if i < skip_k:
                z = mu_p if prior == "mode" else mu_p + torch.exp(lsd_p) * prior_noise[i]
                logq.append(None), logp.append(None), kls.append(None)
            else:
                z = mu_q + torch.exp(lsd_q) * noise[i]
                logq.append(_gauss_logp(z, mu_q, lsd_q))
                logp.append(_gauss_logp(z, mu_p, lsd_p))
                kls.append((_gauss_kl_elements if elementwise else _gauss_kl)(mu_q, lsd_q, mu_p, lsd_p))
            h = layer.down(z, h if self.skip else None)
        return self.out(h), logq[::-1], logp[::-1], kls[::-1]

    def _noise(self, posts, generator=None):
        return [torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None else torch.randn_like(mu)
                for mu, _ in posts]

    # --- protocol -------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO (one posterior sample, analytic KLs) in bits/dim, with KL warm-up and free bits."""
        t = self._targets(x)
        posts = self._posteriors(self._encoder_input(t))
        elementwise = self.free_bits_per == "element"
        params, _, _, kls = self._top_down(posts, self._noise(posts), elementwise=elementwise)
        rec = self._log_lik(params, t)
        step = self._step if self._step is not None else 10 ** 12
        beta = min(1.0, step / self.kl_warmup_steps) if self.kl_warmup_steps > 0 else 1.0
        floor = self.free_bits_floor(step)
        if elementwise:  # seed 004's FreeNats: each latent dimension floored at free_bits / (its layer's dimensions)
            kl = sum((torch.clamp(k, min=floor / k.shape[1]) if floor > 0 else k).sum(1) for k in kls)
        else:
            kl = sum(torch.clamp(k, min=floor) if floor > 0 else k for k in kls)
        return nats_to_bits_per_dim(rec - beta * kl, self.dim)

    def free_bits_floor(self, step: int) -> float:
        """Free bits at ``step``: ``free_bits`` for ``free_bits_constant_steps``, then falling linearly to 0 over
        ``free_bits_steps`` (0: constant for ever)."""
        if self.free_bits_steps <= 0:
            return self.free_bits
        return self.free_bits * min(1.0, max(0.0, 1.0 - (step - self.free_bits_constant_steps) / self.free_bits_steps))

    def _generators(self, x: torch.Tensor, salt: int) -> List[torch.Generator]:
        return content_generators(x, int(self.bound_cfg.get("seed", 0)), salt)

    def _seeded_targets(self, x: torch.Tensor, gens: List[torch.Generator]) -> torch.Tensor:
        """What the likelihood scores, binarized (bernoulli) with each image's own generator."""
        if self.lik != "bernoulli":
            return self._targets(x)
        return torch.stack([self._targets(x[j:j + 1], g)[0] for j, g in enumerate(gens)])

    @staticmethod
    def _seeded_noise(posts, gens: List[torch.Generator], r: int) -> List[torch.Tensor]:
        """Per layer, ``r`` standard normal draws per image from that image's generator (batch-independent)."""
        return [torch.cat([torch.randn((r, *mu.shape[1:]), generator=g) for g in gens]).to(mu.device) for mu, _ in posts]

    def _iw(self, x: torch.Tensor, ks: Sequence[int], samples: int, prior: str) -> torch.Tensor:
        """(B, len(ks)) importance-weighted L>k with ``samples`` posterior samples, noise seeded per image."""
        b = x.shape[0]
        gens = self._generators(x, 0)
        t = self._seeded_targets(x, gens)
        posts = self._posteriors(self._encoder_input(t))
        out = torch.empty(b, len(ks), samples, device=x.device)
        chunk = max(1, int(self.bound_cfg.get("chunk", 256)) // max(b, 1))
        for s0 in range(0, samples, chunk):
            s1 = min(samples, s0 + chunk)
            r = s1 - s0
            rep = lambda v: v.repeat_interleave(r, 0)
            posts_r = [(rep(mu), rep(lsd)) for mu, lsd in posts]
            # per image, per sample: posterior and prior noise from the image's own generator (batch-independent)
            noise = self._seeded_noise(posts, gens, r)
            pnoise = self._seeded_noise(posts, gens, r) if prior == "sample" else None
            tr = rep(t)
            for col, k in enumerate(ks):
                params, logq, logp, _ = self._top_down(posts_r, noise, int(k), prior, pnoise)
                lw = self._log_lik(params, tr)
                for i in range(int(k), len(self.layers)):
                    lw = lw + logp[i] - logq[i]
                out[:, col, s0:s1] = lw.reshape(b, r)
        return torch.logsumexp(out, dim=2) - math.log(samples)

    def bounds(self, x: torch.Tensor, ks: Sequence[int], samples: Optional[int] = None) -> torch.Tensor:
        """(B, len(ks)): the bound L>k (nats, see ``log_prob``) for each k; k = 0 is the full bound."""
        for k in ks:
            if not 0 <= int(k) <= len(self.layers):
                raise ValueError(f"llr.ks: k = {k} is outside 0..{len(self.layers)} (this model has {len(self.layers)} "
                                 "stochastic layers).")
        return self._iw(x, list(ks), int(samples or self.bound_cfg["samples"]), self.llr_prior)

    def likelihood_regret(self, x: torch.Tensor, steps: int, lr: float, weight_decay: float = 0.0) -> torch.Tensor:
        """Likelihood regret (Xiao et al. 2020), (B,) nats >= 0: the single-sample ELBO gained by optimising each
        point's posterior parameters (every layer's mean and log-sd, started at the encoder's output) for that
        point alone with Adam (``steps``, ``lr``, L2 ``weight_decay``), the best ELBO reached minus the encoder's. Adam's update is
        elementwise, so optimising a batch is optimising every point on its own. The posterior noise (and the
        binarization) is fixed per image, so the ELBOs compared differ only in the posterior; the model's weights
        are not touched (gradients are taken with respect to the posterior parameters only)."""
        gens = self._generators(x, 5)
        t = self._seeded_targets(x, gens)
        with torch.no_grad():
            posts0 = self._posteriors(self._encoder_input(t))
        noise = self._seeded_noise(posts0, gens, 1)

        def elbo(posts):
            params, _, _, kls = self._top_down(posts, noise)
            return self._log_lik(params, t) - sum(kls)
        leaves = [v.detach().clone().requires_grad_(True) for pair in posts0 for v in pair]
        pairs = lambda: [(leaves[2 * i], leaves[2 * i + 1]) for i in range(len(posts0))]
        opt = torch.optim.Adam(leaves, lr=float(lr), weight_decay=float(weight_decay))
        with torch.no_grad():
            start = elbo(posts0)
        best = start.clone()
        with torch.enable_grad():
            for _ in range(int(steps)):
                value = elbo(pairs())
                best = torch.maximum(best, value.detach())
                for leaf, g in zip(leaves, torch.autograd.grad(-value.sum(), leaves)):
                    leaf.grad = g
                opt.step()
        with torch.no_grad():
            best = torch.maximum(best, elbo(pairs()))
        return best - start

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The importance-weighted bound with ``bound.samples`` samples (a lower bound on log p(x)), in nats."""
        return self._iw(x, [0], int(self.bound_cfg["samples"]), "mode")[:, 0]

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        return nats_to_bits_per_dim(self.log_prob(x), self.dim)

    @staticmethod
    def likelihood_term_labels(model_cfg: Dict[str, Any]) -> List[str]:
        """Names of the additive terms of ``log_prob_terms`` for an HVAE built from ``model_cfg``."""
        return ["reconstruction"] + [f"kl{i + 1}" for i in range(len(model_cfg["latents"]))]

    def log_prob_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The single-sample ELBO split into its terms (B,) each, in nats: ``reconstruction`` log p(x | z_1..z_L)
        at one posterior sample (noise seeded per image, as the bound's first sample) and ``kl<i>`` = -KL(q(z_i|.) ||
        p(z_i|z_>i)) per stochastic layer, lowest first (analytic). They sum to the S = 1 bound (DoSE's VAE statistics);
        with ``bound.samples`` > 1 the log-likelihood column is the tighter importance-weighted bound."""
        gens = self._generators(x, 0)
        t = self._seeded_targets(x, gens)
        posts = self._posteriors(self._encoder_input(t))
        params, _, _, kls = self._top_down(posts, self._seeded_noise(posts, gens, 1))
        terms = {"reconstruction": self._log_lik(params, t)}
        for i, kl in enumerate(kls):
            terms[f"kl{i + 1}"] = -kl
        return terms

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ancestral samples in data space: z_L ~ N(0, I), each z_i from its conditional prior, then x."""
        return self._decode(n, {}, generator)

    def _decode(self, n: int, fixed: Dict[int, torch.Tensor], generator: Optional[torch.Generator]) -> torch.Tensor:
        """Top-down: layers in ``fixed`` take the given z, the others a draw from their conditional prior; then x."""
        device = next(self.parameters()).device
        h = None
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            mu, lsd = layer.prior(h, n, torch.zeros(1, device=device))
            z = fixed[i].reshape(mu.shape) if i in fixed else mu + torch.exp(lsd) * torch.randn(mu.shape, generator=generator).to(device)
            h = layer.down(z, h if self.skip else None)
        params = self.out(h)
        if self.lik == "dlml":
            return dlml.sample(params, self.shape[0], self.mixtures, self.levels, generator).float()
        if self.lik == "bernoulli":
            u = torch.rand(params.shape, generator=generator).to(device)
            return (u < torch.sigmoid(params)).float() * 255.0
        mu, lsd = params.chunk(2, dim=1)
        return mu + torch.exp(lsd) * torch.randn(mu.shape, generator=generator).to(device)

    # --- features (flows on features, seed 003) ------------------------------------------------------------------
    def _feature_layers(self) -> List[int]:
        return [i for i, layer in enumerate(self.layers) if layer.kind == "dense"] or [len(self.layers) - 1]

    def feature_dim(self) -> int:
        """K, the size of :meth:`features`."""
        return sum(int(math.prod(self.layers[i].z_shape)) for i in self._feature_layers())

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) embedding of stored images: the encoder's posterior means of the dense (top) stochastic layers,
        concatenated lowest first; deterministic (binarization, if any, seeded by each image)."""
        t = self._seeded_targets(x, self._generators(x, 3))
        posts = self._posteriors(self._encoder_input(t))
        return torch.cat([posts[i][0].flatten(1) for i in self._feature_layers()], dim=1)

    @torch.no_grad()
    def decode_features(self, f: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images (B, C, H, W) whose top latents are the features ``f`` (B, K), lower layers from their priors."""
        sizes = [int(math.prod(self.layers[i].z_shape)) for i in self._feature_layers()]
        parts = torch.split(f, sizes, dim=1)
        return self._decode(f.shape[0], dict(zip(self._feature_layers(), parts)), generator)


def build_hvae(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> HierarchicalVAE:
    return HierarchicalVAE(shape, model_cfg)
