"""Local intrinsic dimension (LID) of a normalizing flow, from the Jacobian of its generator.

Convention (the seeds' Jacobian-threshold LID): for a point x with latent z = f(x), let J be the
D x D Jacobian of the generator g = f^{-1} at z, taken in data scaled to [0, 1] (stored data /
256), so that log tau means what it means in the seed code. Then

    LID(x; tau) = #{ singular values sigma_i(J) > tau },   with log tau (natural log) the user knob.

One decomposition per point gives LID for a whole grid of tau: we keep the spectrum
sigma_i^2 = eigenvalues of J^T J.

Exact mode. J is built row by row with reverse-mode AD: the D basis cotangents of each point are
pulled back through one ``torch.autograd.grad`` call over the model's own batch dimension (each
(point, direction) row is a batch row; nflows' spline uses boolean-mask indexing, which
``torch.func.vmap`` rejects, and vmapping only the backward (``is_grads_batched``) loops over rows
inside conv backward: 37 s per paper-size point against 16 s here), in chunks of ``chunk_size`` rows to bound
memory. All rows of a point share the primal, so the conditioner networks' convolutions and dense
layers run their forward once per point (``shared_primal_layers``; their backward needs no stored
input). (Forward mode, D tangents through ``torch.func.jvp``, gives the same J and is kept as an
option; on this CPU it was 2.4x slower for the 784-dim tiny RQ-NSF, 4.4 vs 1.8 s per point.) J is
float32 (the model's precision); J^T J and its eigenvalues are computed in float64, because squaring
in float32 loses the small singular values that decide LID at small tau.

Fast mode (matrix-free). Stochastic Lanczos quadrature on A = J^T J: ``probes`` Rademacher
vectors, ``lanczos_steps`` steps each, every step one Jacobian-vector product (jvp) and one
vector-Jacobian product (vjp); the Ritz values/weights of each probe's tridiagonal matrix
estimate the spectral density, so #{lambda > tau^2} = tr 1[A > tau^2] ~ D * mean_probe
sum_j w_j 1[theta_j > tau^2] for every tau at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

def _scaled_generator(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generator in [0, 1] data units: image flows divide by 256 (``model.data_scale``)."""
    scale = float(getattr(model, "data_scale", 256.0))

    def g(z: torch.Tensor) -> torch.Tensor:
        return model.generator(z).reshape(z.shape[0], -1) / scale
    return g


@torch.no_grad()
def latents(model, x: torch.Tensor) -> torch.Tensor:
    """Latents z = f(x) (B, D) of data x (B, C, H, W) in [0, 256)."""
    return model.encode(x)


class _SharedPrimalConv2d(torch.autograd.Function):
    """conv2d over a batch whose rows repeat a few distinct inputs: the forward convolves one representative
    per group and copies the result out; the backward is the exact input-gradient of the convolution for
    every row (a convolution is linear in its input, so no stored activations are needed)."""

    @staticmethod
    def forward(x, weight, bias, rep, inverse, stride, padding, dilation, groups):
        y = torch.nn.functional.conv2d(x.index_select(0, rep), weight, bias, stride, padding, dilation, groups)
        return y.index_select(0, inverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, _, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        if all(s_ == 1 for s_ in stride):
            gx = torch.nn.functional.conv_transpose2d(grad, weight, None, 1, padding, 0, groups, dilation)
        else:
            gx = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
        return gx, None, None, None, None, None, None, None, None


class _SharedPrimalLinear(torch.autograd.Function):
    """The same for a dense layer (tabular flows' residual nets)."""

    @staticmethod
    def forward(x, weight, bias, rep, inverse):
        return torch.nn.functional.linear(x.index_select(0, rep), weight, bias).index_select(0, inverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None, None, None


class shared_primal_layers:
    """Context manager: while active, the Conv2d / Linear layers of ``model`` treat the batch as groups of
    identical rows (``inverse[i]`` = group of row i, ``rep[g]`` = a row of group g) and compute each forward once
    per group. Reverse-mode Jacobian rows of one point all share the primal, so this removes the forward
    cost of the conditioner networks from the Jacobian (the backward is unchanged and exact). Only valid
    for gradients with respect to the inputs; parameters get no gradient inside."""

    def __init__(self, model: Optional[torch.nn.Module]):
        self.layers = []
        if model is not None:
            for m in model.modules():
                if type(m) is torch.nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
                    self.layers.append(m)
                elif type(m) is torch.nn.Linear:
                    self.layers.append(m)
        self.groups = None

    def set_groups(self, inverse: torch.Tensor) -> None:
        """Rows with equal ``inverse`` share their input; ``inverse`` must be sorted (rows grouped)."""
        _, counts = torch.unique_consecutive(inverse, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        self.groups = (starts, torch.repeat_interleave(torch.arange(len(counts), device=inverse.device), counts))

    def __enter__(self):
        for m in self.layers:
            m.forward = self._forward_for(m)
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            del m.forward
        return False

    def _forward_for(self, m):
        conv = isinstance(m, torch.nn.Conv2d)

        def forward(x):
            if self.groups is None or x.shape[0] != self.groups[1].shape[0]:
                return type(m).forward(m, x)
            rep, inverse = self.groups
            if conv:
                return _SharedPrimalConv2d.apply(x, m.weight, m.bias, rep, inverse, m.stride, m.padding,
                                                 m.dilation, m.groups)
            return _SharedPrimalLinear.apply(x, m.weight, m.bias, rep, inverse)
        return forward


def jacobians(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, chunk_size: int = 128,
              mode: str = "reverse", model: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """Jacobians (B, D_out, D_in) of ``fn`` at each row of z (B, D_in), batched over (point, direction) rows.

    ``reverse`` (default): each row is a vector-Jacobian product with a basis cotangent, giving one row
    of J; ``forward``: a Jacobian-vector product with a basis tangent, giving one column. Both push
    ``chunk_size`` rows through ``fn`` at once, which bounds memory (reverse mode keeps the chunk's
    activations for the backward pass). In reverse mode, when ``model`` (the module ``fn`` runs) is
    given, its convolutions and dense layers run their forward once per point instead of once per row
    (``shared_primal_layers``): on this CPU that took the 784-dim paper RQ-NSF from 53 to 34 s per point at
    chunk_size 512, and smaller chunks stay in cache: 16 s at 128, 15.5 s at 64. Forward mode was 2.4x slower than reverse on the tiny RQ-NSF (4.4 vs 1.8 s per point).
    """
    b, d_in = z.shape
    d_out = fn(z[:1]).shape[1]
    d = d_out if mode == "reverse" else d_in
    out = torch.empty((b, d_out, d_in), dtype=z.dtype, device=z.device)
    rows_point = torch.arange(b, device=z.device).repeat_interleave(d)
    rows_dir = torch.arange(d, device=z.device).repeat(b)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    shared = shared_primal_layers(model if mode == "reverse" else None)
    with torch.enable_grad(), shared:
        for s in range(0, b * d, chunk_size):
            p, k = rows_point[s:s + chunk_size], rows_dir[s:s + chunk_size]
            if mode == "reverse":
                shared.set_groups(p)
                zp = z[p].detach().requires_grad_(True)
                (rows,) = torch.autograd.grad(fn(zp), zp, eye[k])
                out[p, k, :] = rows.detach()
            else:
                _, cols = torch.func.jvp(fn, (z[p],), (eye[k],))
                out[p, :, k] = cols.detach()
    return out


def spectrum_from_jacobians(jac: torch.Tensor) -> torch.Tensor:
    """Squared singular values (B, D), descending, from Jacobians (B, D, D), via float64 eigvalsh(J^T J)."""
    j64 = jac.double()
    evals = torch.linalg.eigvalsh(j64.transpose(1, 2) @ j64)
    return evals.clamp_min(0.0).flip(-1)


def decomposition_from_jacobians(jac: torch.Tensor, z: torch.Tensor):
    """(sigma^2 (B, D) descending, (V^T z)^2 (B, D) in the same order): the spectrum of J^T J = V S^2 V^T and
    the squared coordinates of the latent in its eigenbasis, which the linearised Gaussian-convolved density
    (:func:`log_rho_r`) needs besides the spectrum."""
    j64 = jac.double()
    evals, vecs = torch.linalg.eigh(j64.transpose(1, 2) @ j64)
    proj = torch.einsum("bdk,bd->bk", vecs, z.double().reshape(z.shape[0], -1))
    return evals.clamp_min(0.0).flip(-1), proj.pow(2).flip(-1)


def exact_spectra(model, x: torch.Tensor, chunk_size: int = 128, batch_points: int = 8, projections: bool = False):
    """sigma_i(J)^2 for every point of x (N, C, H, W): float64 array (N, D), descending. With ``projections``
    a pair (spectra, (V^T z)^2) (see :func:`decomposition_from_jacobians`)."""
    g = _scaled_generator(model)
    out, proj = [], []
    for s in range(0, x.shape[0], batch_points):
        z = latents(model, x[s:s + batch_points])
        with torch.no_grad():
            jac = jacobians(g, z, chunk_size, model=model)
            if projections:
                ev, pz = decomposition_from_jacobians(jac, z)
                out.append(ev.cpu().numpy())
                proj.append(pz.cpu().numpy())
            else:
                out.append(spectrum_from_jacobians(jac).cpu().numpy())
    spectra = np.concatenate(out) if out else np.zeros((0, 0))
    if projections:
        return spectra, (np.concatenate(proj) if proj else np.zeros((0, 0)))
    return spectra


def log_rho_r(spectra: np.ndarray, proj_sq: np.ndarray, rs: Sequence[float]):
    """The flow's density convolved with N(0, e^{2r} I) at each point, under the local linearisation of its
    generator (Fast-LIDL, seed 000), and its derivative in r; data in [0, 1] units.

    With z = f(x) and J = dg/dz = U S V^T, the linearised flow near x is N(x - J z, J J^T), so
    rho_r(x) = N(J z; 0, J J^T + e^{2r} I) and, with lambda_i = s_i^2 and w = V^T z,

        log rho_r = -D/2 log 2 pi - 1/2 sum log(lambda_i + e^{2r}) - 1/2 sum lambda_i w_i^2 / (lambda_i + e^{2r}),
        d log rho_r / dr = -sum e^{2r} / (lambda_i + e^{2r}) + sum lambda_i w_i^2 e^{2r} / (lambda_i + e^{2r})^2,

    so that D + d log rho_r / dr (the LIDL estimate of LID) counts the singular values above e^r softly, plus
    the latent's term. As r -> -inf, log rho_r -> the flow's log-density in [0, 1] units.
    Returns (log_rho (N, R), dlog_rho_dr (N, R)) in float64."""
    lam = np.asarray(spectra, np.float64)[:, :, None]
    w2 = np.asarray(proj_sq, np.float64)[:, :, None]
    e2r = np.exp(2.0 * np.asarray(rs, np.float64))[None, None, :]
    denom = lam + e2r
    dim = lam.shape[1]
    log_rho = -0.5 * dim * math.log(2 * math.pi) - 0.5 * np.log(denom).sum(1) - 0.5 * (lam * w2 / denom).sum(1)
    slope = -(e2r / denom).sum(1) + (lam * w2 * e2r / denom ** 2).sum(1)
    return log_rho, slope


def lid_from_spectra(spectra: np.ndarray, log_taus: Sequence[float]) -> np.ndarray:
    """LID (N, T) = #{sigma_i > tau} for each log tau; spectra hold sigma^2."""
    thresholds = np.exp(2.0 * np.asarray(log_taus, dtype=np.float64))
    return (spectra[:, :, None] > thresholds[None, None, :]).sum(axis=1)


@dataclass
class SpectralDensity:
    """Lanczos quadrature of each point's spectrum: nodes (N, P, K) and weights (N, P, K); dimension D."""
    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    def lid(self, log_taus: Sequence[float]) -> np.ndarray:
        """Estimated LID (N, T) for each log tau."""
        thresholds = np.exp(2.0 * np.asarray(log_taus, dtype=np.float64))
        above = self.nodes[..., None] > thresholds  # (N, P, K, T)
        return self.dim * (self.weights[..., None] * above).sum(axis=2).mean(axis=1)


def lanczos_density(model, x: torch.Tensor, probes: int = 4, steps: int = 20, seed: int = 0,
                    batch_points: int = 8) -> SpectralDensity:
    """Stochastic Lanczos quadrature of J^T J for every point of x (matrix-free: jvp + vjp only)."""
    g = _scaled_generator(model)
    gen = torch.Generator().manual_seed(seed)
    all_nodes, all_weights = [], []
    d = None
    for s in range(0, x.shape[0], batch_points):
        z0 = latents(model, x[s:s + batch_points])
        b, d = z0.shape
        z = z0.repeat_interleave(probes, 0)  # (B*P, D): every probe of every point in one batch
        v = (torch.randint(0, 2, z.shape, generator=gen).to(z) * 2 - 1) / math.sqrt(d)
        k = min(steps, d)
        basis = torch.zeros((k, *z.shape), dtype=torch.float64, device=z.device)
        alpha = torch.zeros((z.shape[0], k), dtype=torch.float64)
        beta = torch.zeros((z.shape[0], k), dtype=torch.float64)
        q = v.double()
        q_prev = torch.zeros_like(q)
        b_prev = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        used = k
        for i in range(k):
            basis[i] = q
            _, jq = torch.func.jvp(g, (z,), (q.to(z.dtype),))
            _, vjp_fn = torch.func.vjp(g, z)
            (aq,) = vjp_fn(jq.detach())
            aq = aq.detach()
            w = aq.double() - b_prev[:, None] * q_prev
            a = (w * q).sum(1)
            w = w - a[:, None] * q
            # full reorthogonalisation against the basis so far (k is small)
            coeff = torch.einsum("krd,rd->kr", basis[: i + 1], w)
            w = w - torch.einsum("kr,krd->rd", coeff, basis[: i + 1])
            alpha[:, i] = a.cpu()
            bn = w.norm(dim=1)
            if i + 1 < k:
                beta[:, i] = bn.cpu()
            q_prev, q, b_prev = q, w / bn.clamp_min(1e-300)[:, None], bn
            if bool((bn < 1e-12).all()):
                used = i + 1
                break
        tri = torch.diag_embed(alpha[:, :used]) + torch.diag_embed(beta[:, : used - 1], 1) + torch.diag_embed(beta[:, : used - 1], -1)
        theta, vecs = torch.linalg.eigh(tri.detach())
        weights = vecs[:, 0, :] ** 2
        all_nodes.append(theta.reshape(b, probes, used).numpy())
        all_weights.append(weights.reshape(b, probes, used).numpy())
    k_max = max(n.shape[2] for n in all_nodes)
    pad = lambda a, fill: np.concatenate([a, np.full((*a.shape[:2], k_max - a.shape[2]), fill)], axis=2)
    return SpectralDensity(np.concatenate([pad(n, -np.inf) for n in all_nodes]),
                           np.concatenate([pad(w, 0.0) for w in all_weights]), int(d or 0))
