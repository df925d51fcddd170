"""Score-based diffusion models (VP-SDE and VE-SDE) behind the density-model protocol.

Spaces and units. Stored images x in [0,256)^D (dequantized) are scaled to y = x / 128 - 1 in
[-1, 1)^D; the diffusion lives on y. ``log_prob`` returns nats of x: log p_x(x) = log p_y(y) - D log 128
(the scaling Jacobian). Vector data (``shape`` of length 1, e.g. synthetic manifolds) is used as is.

SDEs on t in [0, 1], marginal y_t = psi(t) y_0 + sigma(t) eps:

* VP (Song et al. 2021): beta(t) = beta_min + t (beta_max - beta_min), psi(t) = exp(-t^2 (beta_max -
  beta_min) / 4 - t beta_min / 2), sigma(t)^2 = 1 - psi(t)^2; drift -beta(t) y / 2, g(t)^2 = beta(t).
* VE: s(t) = sigma_min (sigma_max / sigma_min)^t, psi = 1, sigma(t)^2 = s(t)^2 - sigma_min^2 (exact);
  drift 0, g(t)^2 = d s(t)^2 / dt = 2 s(t)^2 log(sigma_max / sigma_min).

The network predicts the noise eps; the score is s(y, t) = -eps_hat(y, t) / sigma(t). Training is
denoising score matching with the noise-prediction weighting, t ~ U(t_eps, 1).

Likelihood: the probability-flow ODE dy/dt = f(y,t) - g(t)^2 s(y,t) / 2 from t_eps to 1 with
torchdiffeq's adaptive solver, log p(y) = log N(y_1; prior) + int div(f - g^2 s / 2) dt, the divergence
exact (D backward passes) or by Hutchinson with probes drawn once per batch from a generator seeded
by the batch's content and ``ode.seed`` (a rerun gives identical numbers). Knobs are in the ``ode``
section (``models/diffusion.yaml``), which does not change the trained model.

Networks: ``unet`` is diffusers' ``UNet2DModel``; images whose sides do not halve evenly through its
levels (28x28 with three levels) are padded with zeros (the scaled data's mid-grey) inside the network
and the output cropped back, so the model, its density and its LID stay on the data's own D = 784
dimensions. ``mlp`` is a residual MLP with a sinusoidal time embedding, for vectors.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from genood.models.base import nats_to_bits_per_dim
from genood.precision import network


class VPSDE:
    """Variance-preserving SDE with a linear beta schedule."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def marginal(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(psi(t), sigma(t)): y_t | y_0 ~ N(psi y_0, sigma^2 I)."""
        log_psi = -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        psi = torch.exp(log_psi)
        return psi, torch.sqrt(-torch.expm1(2.0 * log_psi))

    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * _bcast(self.beta(t), y) * y

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t)

    def drift_divergence(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return -0.5 * self.beta(t) * dim

    def prior_std(self) -> float:
        return 1.0


class VESDE:
    """Variance-exploding SDE with a geometric noise schedule."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _s(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def marginal(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), torch.sqrt((self._s(t) ** 2 - self.sigma_min ** 2).clamp_min(0.0))

    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(y)

    def diffusion_sq(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._s(t) ** 2 * self.log_ratio

    def drift_divergence(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.zeros_like(t)

    def prior_std(self) -> float:
        return math.sqrt(self.sigma_max ** 2 - self.sigma_min ** 2)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or scalar tensor shaped to broadcast against ``like`` (B, ...)."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        return v
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def build_sde(cfg: Dict[str, Any]):
    if cfg["sde"] == "vp":
        return VPSDE(cfg["beta_min"], cfg["beta_max"])
    return VESDE(cfg["sigma_min"], cfg["sigma_max"])


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times in [0,1] -> (B, dim) sinusoidal features (frequencies 1 .. 1000)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=t.dtype))
    angles = 2 * math.pi * t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class MLPNoiseNet(nn.Module):
    """eps_hat(y, t) for vectors: a residual MLP with a sinusoidal time embedding added in every block."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.temb = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                     for _ in range(layers)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(y)
        e = self.temb(sinusoidal_embedding(t, 64))
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)


class UNetNoiseNet(nn.Module):
    """eps_hat(y, t) for images: diffusers' UNet2DModel, padding the input to a size its levels halve evenly."""

    def __init__(self, shape: Tuple[int, int, int], cfg: Dict[str, Any]):
        super().__init__()
        from diffusers import UNet2DModel

        c, h, w = shape
        channels = [int(v) for v in cfg["channels"]]
        attention = list(cfg["attention"]) or [False] * len(channels)
        if len(attention) != len(channels):
            raise ValueError(f"model.attention needs one entry per level of model.channels ({len(channels)}), "
                             f"got {len(attention)}.")
        multiple = 2 ** (len(channels) - 1)
        self.pad_h, self.pad_w = (-h) % multiple, (-w) % multiple
        self.h, self.w = h, w
        self.net = UNet2DModel(
            sample_size=(h + self.pad_h, w + self.pad_w), in_channels=c, out_channels=c,
            block_out_channels=tuple(channels), layers_per_block=int(cfg["layers_per_block"]),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            norm_num_groups=int(cfg["norm_groups"]), add_attention=bool(cfg["mid_attention"]),
            dropout=float(cfg["dropout"]))
        # the plain (math) attention processor: differentiable in forward and reverse mode on every device,
        # unlike the fused scaled-dot-product kernels
        from diffusers.models.attention_processor import AttnProcessor
        for module in self.net.modules():
            if hasattr(module, "set_processor") and hasattr(module, "processor"):
                module.set_processor(AttnProcessor())

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.pad_h or self.pad_w:
            top, left = self.pad_h // 2, self.pad_w // 2
            y = nn.functional.pad(y, (left, self.pad_w - left, top, self.pad_h - top))
        out = self.net(y, t * 999.0).sample
        if self.pad_h or self.pad_w:
            top, left = self.pad_h // 2, self.pad_w // 2
            out = out[:, :, top:top + self.h, left:left + self.w]
        return out


class ScoreDiffusion(nn.Module):
    """A diffusion model implementing :class:`models.base.DensityModel` plus ``score``/``sde`` for FLIPD.

    ``log_prob(x)``: x (B,C,H,W) in [0,256) (or (B,D) vectors) -> (B,) nats, via the probability-flow ODE.
    ``score(y, t)``: the score of the noised marginal at scaled data y (B, ...) and times t (B,).
    """

    # capabilities scores ask for (declared on the class so they can be checked before a model is built)
    sde: Any = None
    likelihood_nfe: Optional[torch.Tensor] = None  # solver evaluations of the last log_prob batch

    def __init__(self, shape: Tuple[int, ...], cfg: Dict[str, Any]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(math.prod(self.shape))
        self.images = len(self.shape) == 3
        self.sde = build_sde(cfg)
        self.t_eps = float(cfg["t_eps"])
        self.sampler, self.sample_steps = cfg["sampler"], int(cfg["sample_steps"])
        # stored 8-bit images -> [-1, 1); LID (FLIPD, normal bundle) is measured in the scaled space
        self.data_scale = 128.0 if self.images else 1.0
        self.data_offset = 1.0 if self.images else 0.0
        self.loss_name = "dsm"
        if cfg["network"] == "unet":
            if not self.images:
                raise ValueError("model.network 'unet' needs image data (C,H,W); use 'mlp' for vectors.")
            self.net = UNetNoiseNet(self.shape, cfg)
        else:
            self.net = MLPNoiseNet(self.dim, int(cfg["hidden"]), int(cfg["mlp_layers"]))
        network(self.net)  # the noise prediction reaches the loss (and the ODE) in float32
        self.ode: Dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5, "method": "dopri5", "divergence": "hutchinson",
                                    "probes": 1, "probe": "rademacher", "seed": 0}
        self.likelihood_nfe = None
        self._last_ode = None  # (x, x's version, terms) of the last likelihood batch

    # --- spaces -------------------------------------------------------------------------------
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.data_scale - self.data_offset if self.images else x.reshape(x.shape[0], *self.shape)

    def to_data_space(self, y: torch.Tensor) -> torch.Tensor:
        return ((y + self.data_offset) * self.data_scale).clamp(0.0, 256.0 - 1e-3) if self.images else y

    def log_det_to_model_space(self) -> float:
        """log |dy/dx| summed over dimensions (the scaling's Jacobian)."""
        return -self.dim * math.log(self.data_scale)

    def configure(self, cfg: Dict[str, Any]) -> None:
        """Take the evaluation settings (``ode.*``) of a run configuration."""
        self.ode = dict(cfg["ode"])
        self._last_ode = None

    # --- the network as a score ---------------------------------------------------------------
    def noise_prediction(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(y, t)

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s(y, t) = grad_y log p_t(y) = -eps_hat(y, t) / sigma(t); y in model space (B, ...), t (B,)."""
        _, sigma = self.sde.marginal(t)
        return -self.net(y, t) / _bcast(sigma, y)

    # --- protocol -------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Denoising score matching (noise prediction): mean over dimensions of ||eps_hat - eps||^2, per sample."""
        y0 = self.to_model_space(x)
        t = self.t_eps + (1.0 - self.t_eps) * torch.rand(y0.shape[0], device=y0.device)
        eps = torch.randn_like(y0)
        psi, sigma = self.sde.marginal(t)
        yt = _bcast(psi, y0) * y0 + _bcast(sigma, y0) * eps
        return (self.net(yt, t) - eps).pow(2).flatten(1).mean(1)

    def prior_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        std = self.sde.prior_std()
        return (-0.5 * (y / std).pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    def _ode_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The ODE likelihood's terms of batch ``x``; the last batch's are kept, so ``log_prob`` and
        ``log_prob_terms`` of the same tensor (the scores of one batch) share one solve. The solver's NFE goes to
        ``likelihood_nfe``."""
        last = self._last_ode
        if last is not None and last[0] is x and last[1] == x._version:
            return last[2]
        y = self.to_model_space(x)
        prior, flow, nfe = ode_log_likelihood_terms(self, y, **self.ode)
        self.likelihood_nfe = torch.full((y.shape[0],), float(nfe))
        terms = {"prior": prior, "flow": flow}
        self._last_ode = (x, x._version, terms)
        return terms

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats of the data (see the module docstring); the solver's NFE goes to ``likelihood_nfe``."""
        terms = self._ode_terms(x)
        return terms["prior"] + terms["flow"] + self.log_det_to_model_space()

    @staticmethod
    def likelihood_term_labels(model_cfg: Dict[str, Any]) -> List[str]:
        """Names of the terms of ``log_prob_terms`` (the same for every diffusion)."""
        return ["prior", "flow"]

    def log_prob_terms(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """log p(x) split into ``prior`` (the prior's log-density of where the probability-flow ODE carries the
        point at t = 1) and ``flow`` (the integral of the field's divergence); they sum to log p(x) minus the
        constant scaling Jacobian D log(1/128) of images, which is left out (it is the same for every point)."""
        return dict(self._ode_terms(x))

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        return nats_to_bits_per_dim(self.log_prob(x), self.dim)

    def log_prob_grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) in data space as the model estimates it: the score at t_eps (the time whose marginal
        the ODE likelihood is the density of) times dy/dx = 1/data_scale. Not the gradient of the solver's
        output (that would need the adjoint ODE), but what a well-trained score converges to."""
        y = self.to_model_space(x)
        with torch.no_grad():
            s = self.score(y, torch.full((y.shape[0],), self.t_eps, device=y.device, dtype=y.dtype))
        return (s / self.data_scale if self.images else s).reshape(x.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples in data space: Euler-Maruyama on the reverse SDE (``sampler: euler_maruyama``) or the
        probability-flow ODE (``sampler: ode``, adaptive solver), from t = 1 to t_eps."""
        device = next(self.parameters()).device
        y = torch.randn((n, *self.shape), generator=generator).to(device) * self.sde.prior_std()
        if self.sampler == "ode":
            from torchdiffeq import odeint

            def f(t, y_):
                tt = torch.full((n,), float(t), device=device)
                return self.sde.drift(y_, tt) - 0.5 * _bcast(self.sde.diffusion_sq(tt), y_) * self.score(y_, tt)
            y = odeint(f, y, torch.tensor([1.0, self.t_eps], device=device), rtol=1e-4, atol=1e-4)[-1]
            return self.to_data_space(y)
        ts = torch.linspace(1.0, self.t_eps, self.sample_steps + 1, device=device)
        for i in range(self.sample_steps):
            t, dt = ts[i], ts[i + 1] - ts[i]  # dt < 0
            tt = torch.full((n,), float(t), device=device)
            g2 = _bcast(self.sde.diffusion_sq(tt), y)
            y = y + (self.sde.drift(y, tt) - g2 * self.score(y, tt)) * dt
            if i + 1 < self.sample_steps:  # the last step is noise-free (denoised output)
                y = y + torch.sqrt(g2 * -dt) * torch.randn(y.shape, generator=generator).to(device)
        return self.to_data_space(y)


def _probe_generator(y: torch.Tensor, seed: int) -> torch.Generator:
    """A generator seeded by the batch's content and ``seed``: the same points get the same probes."""
    key = zlib.crc32(y.detach().float().cpu().contiguous().numpy().tobytes())
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + key)


def value_and_divergence(fn, y: torch.Tensor, kind: str = "hutchinson", probes: Optional[torch.Tensor] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fn(y), div fn(y)) per sample. ``exact``: D backward passes; ``hutchinson``: mean over the given
    probes v (P, B, ...) of v . d(fn . v)/dy (unbiased for E[v v^T] = I)."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        out = fn(y)
        flat_out = out.flatten(1)
        if kind == "exact":
            div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
            for i in range(flat_out.shape[1]):
                (g,) = torch.autograd.grad(flat_out[:, i].sum(), y, retain_graph=True)
                div = div + g.flatten(1)[:, i]
        else:
            div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
            for k in range(probes.shape[0]):
                v = probes[k]
                (g,) = torch.autograd.grad((out * v).sum(), y, retain_graph=k + 1 < probes.shape[0])
                div = div + (g * v).flatten(1).sum(1)
            div = div / probes.shape[0]
    return out.detach(), div.detach()


def draw_probes(y: torch.Tensor, n: int, kind: str, seed: int) -> torch.Tensor:
    """n probe vectors per point (n, B, ...): Rademacher (+-1) or standard Gaussian, seeded by the batch."""
    gen = _probe_generator(y, seed)
    if kind == "gaussian":
        return torch.randn((n, *y.shape), generator=gen).to(y)
    return (torch.randint(0, 2, (n, *y.shape), generator=gen) * 2 - 1).to(y)


def ode_log_likelihood(model, y: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                       divergence: str = "hutchinson", probes: int = 1, probe: str = "rademacher", seed: int = 0
                       ) -> Tuple[torch.Tensor, int]:
    """log p_{t_eps}(y) (B,) in nats of model space, by the probability-flow ODE, and the number of
    function evaluations. ``model`` needs ``sde``, ``score(y, t)``, ``t_eps`` and ``prior_log_prob``."""
    prior, flow, nfe = ode_log_likelihood_terms(model, y, rtol, atol, method, divergence, probes, probe, seed)
    return prior + flow, nfe


def ode_log_likelihood_terms(model, y: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                             divergence: str = "hutchinson", probes: int = 1, probe: str = "rademacher", seed: int = 0
                             ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The ODE likelihood's two terms (B,) each, in nats of model space: the prior's log-density of the
    point y_1 the ODE carries y to, and the integral of the field's divergence from t_eps to 1 (their sum is
    log p_{t_eps}(y)); and the number of function evaluations."""
    from torchdiffeq import odeint

    sde = model.sde
    b = y.shape[0]
    v = draw_probes(y, int(probes), probe, seed) if divergence == "hutchinson" else None
    nfe = [0]

    def field(t, state):
        y_t = state[0]
        tt = torch.full((b,), float(t), device=y.device, dtype=y.dtype)
        g2 = sde.diffusion_sq(tt)

        def score_part(yy):
            return -0.5 * _bcast(g2, yy) * model.score(yy, tt)
        out, div = value_and_divergence(score_part, y_t, divergence, v)
        nfe[0] += 1
        return out + sde.drift(y_t, tt), div + sde.drift_divergence(tt, y_t[0].numel())

    ts = torch.tensor([model.t_eps, 1.0], dtype=y.dtype, device=y.device)
    y1, delta = odeint(field, (y.detach(), torch.zeros(b, dtype=y.dtype, device=y.device)), ts,
                       rtol=float(rtol), atol=float(atol), method=method)
    y1, delta = y1[-1], delta[-1]
    return model.prior_log_prob(y1), delta, nfe[0]


def build_diffusion(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> ScoreDiffusion:
    """The ``diffusion`` family: a score model on images (UNet) or vectors (MLP)."""
    return ScoreDiffusion(shape, model_cfg)
