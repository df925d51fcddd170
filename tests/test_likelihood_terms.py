"""The log-likelihood's terms (DoSE statistics) against independent computations, and two-sided p-values.

Flow terms: the preprocessing term against the logit map's closed-form Jacobian, each level's log-Jacobian
against the brute-force determinant of that level's Jacobian, the latent terms against scipy's normal
density of the encoded point; all of them sum to log p(x). HVAE terms: with the exact posterior of a
linear-Gaussian model, the KL term is the closed-form KL and reconstruction - KL averages to the exact
log-likelihood over posterior samples.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from genood import runconfig
from genood.models.registry import build_model
from genood.ood import combined as combined_mod
from genood.ood import scores as score_registry
from genood.ood.metrics import auroc
from genood.ood.scores import ScoreUnavailable


def _flow(levels=2, seed=0):
    cfg = runconfig.resolve({"model": {"family": "flow", "coupling": "rq_nsf", "levels": levels, "steps_per_level": 2,
                                       "hidden_channels": 8, "num_blocks": 1, "num_bins": 4, "tail_bound": 3.0,
                                       "logit_alpha": 0.05},
                             "tracking": {"wandb": False}})
    torch.manual_seed(seed)
    model = build_model((1, 4, 4), cfg["model"]).double().eval()
    with torch.no_grad():  # a freshly built flow is near the identity: move every parameter so each term is nontrivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, cfg


def test_flow_terms_sum_to_log_prob_and_match_brute_force_jacobians():
    model, cfg = _flow()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 256
    with torch.no_grad():
        terms = model.log_prob_terms(x)
        total = model.log_prob(x)
    assert list(terms) == type(model).likelihood_term_labels(cfg["model"])
    assert list(terms) == ["preprocess", "level0_logdet", "level0_latent", "level1_logdet", "level1_latent"]
    np.testing.assert_allclose(sum(terms.values()).numpy(), total.numpy(), atol=1e-8)

    # preprocessing: y = a + (1 - 2a) x / 256, z = logit(y), dz/dx = (1 - 2a) / (256 y (1 - y)) per pixel
    a = 0.05
    y = a + (1 - 2 * a) * x.numpy() / 256
    closed = np.log((1 - 2 * a) / (256 * y * (1 - y))).reshape(3, -1).sum(1)
    np.testing.assert_allclose(terms["preprocess"].numpy(), closed, rtol=1e-10)

    pre, multiscale = model.transform._transforms
    level0, level1 = multiscale._transforms
    for i in range(3):
        xi = x[i:i + 1]
        h0 = pre(xi)[0]
        # level 0 maps (4, 4) logit pixels -> (4, 2, 2): the brute-force log|det| of its 16 x 16 Jacobian
        j0 = torch.autograd.functional.jacobian(lambda v: level0(v.reshape(1, 1, 4, 4))[0].reshape(-1), h0.reshape(-1))
        assert torch.linalg.slogdet(j0)[1].item() == pytest.approx(terms["level0_logdet"][i].item(), abs=1e-7)
        out0 = level0(h0)[0]
        left, right = torch.chunk(out0, 2, dim=1)  # the first half of the channels leaves at level 0
        j1 = torch.autograd.functional.jacobian(lambda v: level1(v.reshape(right.shape))[0].reshape(-1), right.reshape(-1))
        assert torch.linalg.slogdet(j1)[1].item() == pytest.approx(terms["level1_logdet"][i].item(), abs=1e-7)
        # the latent terms: scipy's standard normal density of what each level factors out, in encode()'s order
        z = model.encode(xi).detach().numpy()[0]
        assert norm.logpdf(z[:8]).sum() == pytest.approx(terms["level0_latent"][i].item(), abs=1e-8)
        assert norm.logpdf(z[8:]).sum() == pytest.approx(terms["level1_latent"][i].item(), abs=1e-8)


def test_hvae_terms_are_the_closed_form_kl_and_average_to_the_exact_likelihood():
    from tests.test_families import _linear_gaussian

    model, exact, (w, b, s) = _linear_gaussian()
    x = torch.tensor(np.random.default_rng(3).normal(size=(20, 4)) * 1.5)
    labels = type(model).likelihood_term_labels({"latents": [2]})
    assert labels == ["reconstruction", "kl1"]
    post_cov = np.linalg.inv(np.eye(2) + w.T @ w / s ** 2)
    post_mean = (post_cov @ w.T / s ** 2 @ (x.numpy() - b).T).T
    kl = 0.5 * (np.trace(post_cov) + (post_mean ** 2).sum(1) - 2 - np.log(np.linalg.det(post_cov)))
    rec, negkl = [], None
    for seed in range(400):  # posterior noise is seeded per image by bound.seed: average over 400 draws
        model.configure({"bound": {"samples": 1, "seed": seed, "chunk": 256}})
        with torch.no_grad():
            t = model.log_prob_terms(x)
        assert list(t) == labels
        negkl = t["kl1"].numpy()
        rec.append(t["reconstruction"].numpy())
    np.testing.assert_allclose(-negkl, kl, rtol=1e-8)
    rec = np.array(rec)
    elbo = rec.mean(0) + negkl
    stderr = rec.std(0) / math.sqrt(len(rec))
    # exact posterior: E_q[log p(x|z)] - KL = log p(x) exactly; the Monte Carlo mean is within 4 standard errors
    assert np.all(np.abs(elbo - exact(x.numpy())) < 4 * stderr + 1e-9)


def test_the_score_is_a_vector_of_terms_and_refuses_families_without_them():
    model, cfg = _flow()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64) * 256
    score = score_registry.get("likelihood_terms")
    with torch.no_grad():
        got = score.fn(model, x, {"cfg": cfg}).numpy()
        want = np.column_stack([v.numpy() for v in model.log_prob_terms(x).values()])
    np.testing.assert_allclose(got, want)
    assert score.column_names(cfg) == [f"likelihood_terms@{k}" for k in
                                      ("preprocess", "level0_logdet", "level0_latent", "level1_logdet", "level1_latent")]
    assert score_registry.two_sided("likelihood_terms@preprocess") and not score_registry.two_sided("log_likelihood")
    pixelcnn = runconfig.resolve({"model": {"family": "pixelcnn"}, "tracking": {"wandb": False}})
    with pytest.raises(ScoreUnavailable, match="splits its log-likelihood into terms"):
        score.column_names(pixelcnn)


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_diffusion_terms_match_the_closed_form_ode_map_of_a_gaussian(sde):
    """Data N(0, C) with the exact score: the probability-flow ODE maps y to y_1 = (S_1 S_eps^-1)^(1/2) y, S_t the
    marginal covariance, so the prior term is the prior's density at that y_1 and the divergence integral is
    (1/2) log det(S_1 S_eps^-1)."""
    from genood.models.diffusion import VESDE, VPSDE, ode_log_likelihood_terms
    from tests.test_diffusion import GaussianScoreModel, _random_cov

    model = GaussianScoreModel(VPSDE(0.1, 20.0) if sde == "vp" else VESDE(0.01, 50.0), _random_cov(4, 0))
    y = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), model.cov).sample((16,))
    prior, flow, nfe = ode_log_likelihood_terms(model, y, rtol=1e-7, atol=1e-7, divergence="exact")
    lam, vec = torch.linalg.eigh(model.cov)
    var = lambda t: model.sde.marginal(torch.tensor(t, dtype=torch.float64))
    (p1, s1), (pe, se) = var(1.0), var(model.t_eps)
    ratio = (p1 ** 2 * lam + s1 ** 2) / (pe ** 2 * lam + se ** 2)
    y1 = (y @ vec) * ratio.sqrt() @ vec.T
    np.testing.assert_allclose(prior.numpy(), model.prior_log_prob(y1).numpy(), atol=1e-4)
    np.testing.assert_allclose(flow.numpy(), np.full(16, 0.5 * float(torch.log(ratio).sum())), atol=1e-4)


def test_diffusion_log_prob_and_its_terms_share_one_ode_solve(monkeypatch):
    from genood.models import diffusion as diffusion_mod

    cfg = runconfig.resolve({"model": {"family": "diffusion", "channels": [8, 8, 8], "norm_groups": 4},
                             "tracking": {"wandb": False}})
    model = build_model((1, 6, 6), cfg["model"]).eval()
    model.configure(dict(cfg, ode=dict(cfg["ode"], rtol=1e-3, atol=1e-3)))
    calls = []
    real = diffusion_mod.ode_log_likelihood_terms
    monkeypatch.setattr(diffusion_mod, "ode_log_likelihood_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(3, 1, 6, 6) * 256
    with torch.no_grad():
        lp = model.log_prob(x)
        terms = model.log_prob_terms(x)
        assert len(calls) == 1 and list(terms) == ["prior", "flow"]
        np.testing.assert_allclose((terms["prior"] + terms["flow"] - 36 * math.log(128.0)).numpy(), lp.numpy(), rtol=1e-6)
        model.log_prob_terms(x.clone())  # another tensor: solved again
        assert len(calls) == 2
        x.add_(1.0)  # changed in place: solved again
        model.log_prob(x)
        assert len(calls) == 3


def test_two_sided_p_values_match_their_definition():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(50, 2))
    q = np.r_[rng.normal(size=(7, 2)), [[5.0, -5.0], [-5.0, 5.0]]]
    left = (1 + (ref[None, :, :] <= q[:, None, :]).sum(axis=1)) / 51.0
    right = (1 + (ref[None, :, :] >= q[:, None, :]).sum(axis=1)) / 51.0
    # past in_val's extremes the tails go on exponentially, with the mean excess of the 8 most extreme values
    # (8 = ceil(sqrt(50))) over the 9th as the scale
    srt = np.sort(ref, axis=0)
    b_low, b_high = (srt[8] - srt[:8]).mean(axis=0), (srt[::-1][:8] - srt[-9]).mean(axis=0)
    left *= np.exp(-np.maximum(srt[0] - q, 0) / b_low)
    right *= np.exp(-np.maximum(q - srt[-1], 0) / b_high)
    p = left.copy()
    p[:, 1] = np.minimum(1.0, 2 * np.minimum(left[:, 1], right[:, 1]))  # score 1 is two-sided, score 0 is not
    got = combined_mod.fit_log_pvalues(ref, [False, True])(q)
    np.testing.assert_allclose(got, np.log(p))
    np.testing.assert_allclose(combined_mod.fit_pvalues(ref, [False, True])(q), 2 * np.log(p).sum(axis=1))
    np.testing.assert_allclose(combined_mod.fit_min_p(ref, [False, True])(q), np.log(p.min(axis=1)))


def test_a_two_sided_score_catches_ood_in_its_upper_tail_where_a_one_sided_test_cannot():
    rng = np.random.default_rng(5)
    val, pos, neg = rng.normal(size=(500, 1)), rng.normal(size=(500, 1)), rng.normal(size=(500, 1)) + 4
    one = combined_mod.fit_min_p(val)
    two = combined_mod.fit_min_p(val, [True])
    assert auroc(one(pos), one(neg)) < 0.1
    assert auroc(two(pos), two(neg)) > 0.97


def test_a_run_combines_terms_by_name_and_by_component(tiny_cfg):
    """End to end on a tiny flow: the vector's columns land in the table; a combined set may name the whole
    vector or one component; p-value entries list which members were tested in both tails."""
    import json

    import pandas as pd

    from genood.ood.runner import run_ood
    cfg = dict(tiny_cfg, ood=dict(tiny_cfg["ood"], scores=["log_likelihood", "likelihood_terms"]),
               combined=dict(tiny_cfg["combined"], sets=[["likelihood_terms"],
                                                         ["log_likelihood", "likelihood_terms@preprocess"]]))
    directory = run_ood(cfg, echo=False)
    table = pd.read_parquet(directory / "scores.parquet")
    terms = [c for c in table.columns if c.startswith("likelihood_terms@")]
    assert terms == ["likelihood_terms@preprocess", "likelihood_terms@level0_logdet", "likelihood_terms@level0_latent"]
    np.testing.assert_allclose(table[terms].sum(axis=1), table["log_likelihood"], rtol=1e-4)
    metrics = json.loads((directory / "metrics.json").read_text())
    entry = metrics["fisher:log_likelihood+likelihood_terms@preprocess"]
    assert entry["two_sided"] == ["likelihood_terms@preprocess"] and entry["fitted_on"] == "in_val"
    assert entry["scores"] == ["log_likelihood", "likelihood_terms@preprocess"]
    assert metrics["minp:likelihood_terms"]["two_sided"] == terms and "density:likelihood_terms" in metrics
    for wrong in ("complexity@x", "likelihood_terms@level7_latent"):  # not computed; not a component of this flow
        bad = dict(cfg, combined=dict(cfg["combined"], sets=[["log_likelihood", wrong]]))
        with pytest.raises(runconfig.ConfigError, match=f"{wrong} is not among ood.scores"):
            run_ood(bad, echo=False)
