"""Hierarchical VAEs and PixelCNN++: each against an independent computation (closed forms, brute force, a
direct evaluation of the formula), plus causality, LLR>k and resume."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genood import runconfig
from tests.conftest import assert_training_resumes_to_the_same_weights
from genood.models import dlml
from genood.models.registry import build_model


def _cfg(family: str, **model):
    return runconfig.resolve({"model": {"family": family, **model}, "tracking": {"wandb": False},
                              "training": {"progress": False, "sample_grid": 0}})


# --- the discretized logistic mixture ------------------------------------------------------------------
def _direct_dlml(params: np.ndarray, k: np.ndarray, mixtures: int, levels: int) -> np.ndarray:
    """log P(k) per image straight from the definition, float64, one pixel at a time."""
    b, c, h, w = k.shape
    m = mixtures
    ncoef = c * (c - 1) // 2
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    out = np.zeros(b)
    for n, i, j in itertools.product(range(b), range(h), range(w)):
        p = params[n, :, i, j]
        logits = p[:m]
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        means = p[m:m + c * m].reshape(m, c)
        log_s = np.maximum(p[m + c * m:m + 2 * c * m].reshape(m, c), dlml.MIN_LOG_SCALE)
        coef = np.tanh(p[m + 2 * c * m:m + (2 * c + ncoef) * m].reshape(m, ncoef)) if ncoef else np.zeros((m, 0))
        centre = 2.0 * k[n, :, i, j] / (levels - 1) - 1.0
        prob = 0.0
        for comp in range(m):
            pc, idx = 1.0, 0
            for ch in range(c):
                mu = means[comp, ch]
                for prev in range(ch):
                    mu += coef[comp, idx] * centre[prev]
                    idx += 1
                s = math.exp(log_s[comp, ch])
                hi = 1.0 if k[n, ch, i, j] == levels - 1 else sig((centre[ch] + 1.0 / (levels - 1) - mu) / s)
                lo = 0.0 if k[n, ch, i, j] == 0 else sig((centre[ch] - 1.0 / (levels - 1) - mu) / s)
                pc *= hi - lo
            prob += weights[comp] * pc
        out[n] += math.log(prob)
    return out


@pytest.mark.parametrize("channels,mixtures", [(1, 1), (1, 3), (3, 2)])
def test_dlml_matches_a_direct_computation(channels, mixtures):
    g = torch.Generator().manual_seed(channels * 10 + mixtures)
    params = torch.randn((3, dlml.n_params(channels, mixtures), 4, 5), generator=g, dtype=torch.float64)
    k = torch.randint(0, 256, (3, channels, 4, 5), generator=g).to(torch.float64)
    k[0, :, 0, 0], k[0, :, 0, 1] = 0, 255  # both edge bins
    got = dlml.log_prob(params, k, mixtures, 256).numpy()
    want = _direct_dlml(params.numpy(), k.numpy(), mixtures, 256)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_dlml_probabilities_sum_to_one_over_every_value_of_a_pixel():
    levels, c, m = 5, 2, 3
    params = torch.randn((1, dlml.n_params(c, m), 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = torch.tensor(list(itertools.product(range(levels), repeat=c)), dtype=torch.float64)
    lp = torch.stack([dlml.log_prob(params, v.reshape(1, c, 1, 1), m, levels)[0] for v in values])
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-10)


# --- PixelCNN++ --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,scales", [((1, 8, 8), 2), ((3, 6, 7), 3), ((1, 5, 5), 1)])
def test_pixelcnn_is_causal_in_raster_order(shape, scales):
    """The parameters at pixel p depend on pixels strictly before p (rows above, then left) and on nothing else."""
    torch.manual_seed(0)
    cfg = _cfg("pixelcnn", filters=8, resnets=1, scales=scales, mixtures=2)
    model = build_model(shape, cfg["model"]).double()
    c, h, w = shape
    k = torch.randint(0, 256, (1, *shape)).double().requires_grad_(True)
    params = model.params(k)
    for i, j in itertools.product(range(h), range(w)):
        (g,) = torch.autograd.grad(params[0, :, i, j].sum(), k, retain_graph=True)
        dep = g[0].abs().sum(0) > 0                       # (H, W): which pixels the output at (i, j) depends on
        order = torch.arange(h * w).reshape(h, w)
        assert not dep[order >= i * w + j].any(), f"pixel ({i},{j}) sees itself or a later pixel"
        if j > 0:
            assert dep[i, j - 1], f"pixel ({i},{j}) does not see its left neighbour"
        if i > 0:
            assert dep[i - 1, j], f"pixel ({i},{j}) does not see the pixel above"


@pytest.mark.parametrize("scales", [1, 2])
def test_pixelcnn_likelihood_sums_to_one_over_all_binary_2x2_images(scales):
    torch.manual_seed(1)
    cfg = _cfg("pixelcnn", filters=8, resnets=2, scales=scales, mixtures=2, levels=2)
    model = build_model((1, 2, 2), cfg["model"]).double().eval()
    images = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64).reshape(16, 1, 2, 2)
    with torch.no_grad():
        lp = model.log_prob(images + 0.5)  # any point of a bin scores the bin
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shape,scales", [((1, 8, 8), 2), ((3, 7, 6), 3), ((1, 28, 28), 3), ((1, 5, 5), 1)])
def test_pixelcnn_parameters_of_the_top_rows_need_only_those_rows(shape, scales):
    """What the faster sampler relies on: the network run on the top rows_needed(i) rows gives exactly the
    parameters of rows <= i that it gives on the whole image (whatever the rows below hold)."""
    torch.manual_seed(0)
    model = build_model(shape, _cfg("pixelcnn", filters=8, resnets=1, scales=scales, mixtures=2)["model"]).double().eval()
    k = torch.randint(0, 256, (2, *shape)).double()
    with torch.no_grad():
        full = model.params(k)
        for i in range(shape[1]):
            top = model.rows_needed(i)
            assert i < top <= shape[1] and (top == shape[1] or top % 2 ** (scales - 1) == 0)
            torch.testing.assert_close(model.params(k[:, :, :top])[:, :, :i + 1], full[:, :, :i + 1], rtol=0, atol=1e-12)


def test_pixelcnn_samples_are_valid_images():
    torch.manual_seed(2)
    model = build_model((1, 4, 4), _cfg("pixelcnn", filters=8, resnets=1, scales=2)["model"]).eval()
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4) and x.min() >= 0 and x.max() <= 255 and torch.equal(x, x.round())


# --- hierarchical VAE ----------------------------------------------------------------------------------
def _linear_gaussian(d=4, latent=2, seed=0, perturb=0.0):
    """A one-layer linear-Gaussian HVAE: p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), and its encoder set to the
    exact posterior (plus ``perturb`` times noise on its mean map). Returns (model, exact log p(x) function)."""
    cfg = _cfg("hvae", network="mlp", likelihood="gaussian", latents=[latent], latent_kinds=["dense"], kernels=[1],
               strides=[1], blocks=0, free_bits=0.0)
    torch.manual_seed(seed)
    model = build_model((d,), cfg["model"]).double().eval()
    layer = model.layers[0]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, latent)))
    w = q * np.array([2.0, 0.7])[:latent]            # orthogonal columns: the posterior covariance is diagonal
    b, s = rng.normal(size=d), 0.5
    post_cov = np.linalg.inv(np.eye(latent) + w.T @ w / s ** 2)      # diagonal
    post_map = post_cov @ w.T / s ** 2                              # mean = post_map (x - b)
    post_map = post_map + perturb * rng.normal(size=post_map.shape)
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    with torch.no_grad():
        layer.q_head.weight.zero_(), layer.q_head.bias.zero_()
        layer.q_head.weight[:latent] = t(post_map)
        layer.q_head.bias[:latent] = t(-post_map @ b)
        layer.q_head.bias[latent:] = t(0.5 * np.log(np.diag(post_cov)))
        layer.z_proj.weight.copy_(t(w)), layer.z_proj.bias.copy_(t(b))
        model.out.weight.zero_(), model.out.bias.zero_()
        model.out.weight[:d] = torch.eye(d, dtype=torch.float64)
        model.out.bias[d:] = math.log(s)
    cov = w @ w.T + s ** 2 * np.eye(d)

    def exact(x: np.ndarray) -> np.ndarray:
        from scipy.stats import multivariate_normal
        return multivariate_normal(mean=b, cov=cov).logpdf(x)
    return model, exact, (w, b, s)


def test_hvae_bound_equals_the_exact_likelihood_of_a_linear_gaussian_model_with_the_exact_posterior():
    model, exact, (w, b, s) = _linear_gaussian()
    x = torch.tensor(np.random.default_rng(3).normal(size=(50, 4)) * 1.5)
    for samples in (1, 7):
        model.configure({"bound": {"samples": samples, "seed": 0, "chunk": 256}})
        with torch.no_grad():
            got = model.log_prob(x).numpy()
        # with the exact posterior every importance weight equals p(x): the bound is exact for any S and noise
        np.testing.assert_allclose(got, exact(x.numpy()), atol=1e-8)


def test_hvae_bound_is_below_the_likelihood_and_tightens_with_more_samples():
    model, exact, _ = _linear_gaussian(perturb=0.4)
    x = torch.tensor(np.random.default_rng(4).normal(size=(400, 4)) * 1.5)
    truth = exact(x.numpy()).mean()
    means = []
    for samples in (1, 10, 100):
        model.configure({"bound": {"samples": samples, "seed": 0, "chunk": 4096}})
        with torch.no_grad():
            means.append(model.log_prob(x).mean().item())
    gaps = [truth - m for m in means]
    assert gaps[0] > 0.05, gaps                     # a wrong posterior makes the ELBO strictly loose
    assert gaps[0] > gaps[1] > gaps[2] > -0.01, gaps  # IWAE tightens with S and stays a lower bound (MC noise aside)


def _conv_hvae(likelihood="dlml"):
    cfg = _cfg("hvae", likelihood=likelihood, latents=[4, 6, 3], latent_kinds=["conv", "dense", "dense"],
               kernels=[3, 3, 3], strides=[2, 2, 1], channels=8, blocks=1, mixtures=2)
    torch.manual_seed(0)
    return build_model((1, 12, 12), cfg["model"]).eval(), cfg


def test_llr_at_k0_is_zero_and_bounds_share_the_posterior_noise():
    model, cfg = _conv_hvae()
    x = torch.rand(5, 1, 12, 12) * 256
    model.configure({"bound": {"samples": 3, "seed": 0, "chunk": 256}, "llr": {"prior": "mode"}})
    with torch.no_grad():
        both = model.bounds(x, [0, 1, 2, 3])
        lp = model.log_prob(x)
        again = model.bounds(x[2:4], [0, 2])      # per-image seeding: another batch gives the same numbers
    assert torch.equal(both[:, 0], lp)
    assert torch.equal(both[:, 0] - both[:, 0], torch.zeros(5))
    assert torch.allclose(again, both[2:4, [0, 2]], atol=1e-5)
    assert not torch.allclose(both[:, 1], both[:, 0])
    from genood.ood.scores import get
    cache = {"cfg": runconfig.deep_merge(cfg, {"llr": {"ks": [0, 1, 2]}})}
    with torch.no_grad():
        cols = get("llr").fn(model, x, cache)
    assert cols.shape == (5, 3) and torch.equal(cols[:, 0], torch.zeros(5))


def test_hvae_units_and_samples():
    model, _ = _conv_hvae("dlml")
    assert "[0,256)^D" in model.log_prob_unit
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 12, 12) and x.min() >= 0 and x.max() <= 255
    bern, _ = _conv_hvae("bernoulli")
    assert "binarized" in bern.log_prob_unit and "not a density" in bern.log_prob_unit
    with torch.no_grad():  # a fixed binarization per image: the same image scores the same
        x = torch.rand(3, 1, 12, 12) * 256
        assert torch.equal(bern.log_prob(x), bern.log_prob(x))


def test_hvae_rejects_mismatched_layer_lists():
    # refused when the configuration is resolved (genood.models.config_checks), before any model is built
    with pytest.raises(ValueError, match="latent_kinds' has 1 entries but model.latents has 2"):
        _cfg("hvae", latents=[4, 4], latent_kinds=["conv"], kernels=[3, 3], strides=[2, 1])


# --- one training loop for both ----------------------------------------------------------------------
@pytest.mark.parametrize("family,model", [
    ("hvae", dict(latents=[2, 3], latent_kinds=["conv", "dense"], kernels=[3, 3], strides=[2, 1], channels=4, blocks=1,
                  mixtures=1, kl_warmup_steps=3, free_bits=1.0, free_bits_steps=4)),
    ("pixelcnn", dict(filters=4, resnets=1, scales=2))])
def test_killed_training_resumes_to_the_same_weights(tmp_path, family, model):
    cfg = runconfig.resolve({"model": {"family": family, **model},
                             "training": {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1,
                                          "progress": False, "sample_grid": 0}, "tracking": {"wandb": False}})
    images = np.random.default_rng(0).integers(0, 256, size=(16, 6, 6, 1), dtype=np.uint8)
    assert_training_resumes_to_the_same_weights(cfg, images, tmp_path)
