"""Diffusion models against independent computations: closed-form Gaussian densities and scores,
the SDEs' closed-form marginals, brute-force traces, a manifold of known dimension."""
import math

import numpy as np
import pytest
import torch

from genood import runconfig
from tests.conftest import assert_training_resumes_to_the_same_weights
from genood.models import training
from genood.models.diffusion import VESDE, VPSDE, ScoreDiffusion, ode_log_likelihood, value_and_divergence
from genood.models.registry import build_model
from genood.ood import lid_stage
from genood.ood.lid_diffusion import flipd


class GaussianScoreModel:
    """Data y0 ~ N(0, C) in R^D with the exact score of every noised marginal N(0, psi^2 C + sigma^2 I)."""

    def __init__(self, sde, cov: torch.Tensor, t_eps: float = 1e-3):
        self.sde, self.cov, self.t_eps = sde, cov.double(), t_eps
        self.dim = cov.shape[0]

    def marginal_cov(self, t: float) -> torch.Tensor:
        psi, sigma = self.sde.marginal(torch.tensor(float(t), dtype=torch.float64))
        return psi ** 2 * self.cov + sigma ** 2 * torch.eye(self.dim, dtype=torch.float64)

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        prec = torch.linalg.inv(self.marginal_cov(float(t.reshape(-1)[0])))
        return -(y.double() @ prec).to(y.dtype)

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the data already live in the model's space

    def prior_log_prob(self, y):
        std = self.sde.prior_std()
        return (-0.5 * (y / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)

    def log_density(self, y: torch.Tensor, t: float) -> torch.Tensor:
        return torch.distributions.MultivariateNormal(torch.zeros(self.dim, dtype=torch.float64),
                                                      self.marginal_cov(t)).log_prob(y.double())


def _random_cov(dim: int, seed: int, scale: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * scale / math.sqrt(dim)
    return a @ a.T + 0.05 * torch.eye(dim, dtype=torch.float64)


@pytest.mark.parametrize("sde", [VPSDE(0.1, 20.0), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_ode_likelihood_matches_closed_form_gaussian(sde):
    """Tolerance: 5e-3 nats per point (D = 4, rtol = atol = 1e-6); the remaining error is the prior mismatch at t = 1."""
    model = GaussianScoreModel(sde, _random_cov(4, 0))
    y = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), model.cov).sample((32,))
    truth = model.log_density(y, model.t_eps)
    got, nfe = ode_log_likelihood(model, y, rtol=1e-6, atol=1e-6, divergence="exact")
    assert nfe > 10
    assert torch.allclose(got, truth, atol=5e-3), (got - truth).abs().max()
    # a wrong density (another covariance) is far off: the check can fail
    assert (GaussianScoreModel(sde, _random_cov(4, 1)).log_density(y, model.t_eps) - got).abs().max() > 0.1


def test_hutchinson_divergence_is_unbiased_against_exact():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    fn = lambda y: torch.tanh(y @ a)  # a non-linear field with a non-diagonal Jacobian
    y = torch.randn(3, 6, dtype=torch.float64)
    _, exact = value_and_divergence(fn, y, "exact")
    brute = torch.stack([torch.autograd.functional.jacobian(fn, y[i:i + 1]).reshape(6, 6).trace() for i in range(3)])
    assert torch.allclose(exact, brute)
    for kind in ("rademacher", "gaussian"):
        n = 20000
        v = torch.randint(0, 2, (n, 3, 6), dtype=torch.float64) * 2 - 1 if kind == "rademacher" else torch.randn(n, 3, 6, dtype=torch.float64)
        single = torch.stack([value_and_divergence(fn, y, "hutchinson", v[k:k + 1])[1] for k in range(0, 400)])
        assert single.std(0).min() > 1e-3  # one probe is noisy, so agreement below is not by construction
        _, est = value_and_divergence(fn, y, "hutchinson", v)
        se = single.std(0) / math.sqrt(n)
        assert ((est - exact).abs() < 4 * se + 1e-9).all(), (est, exact, se)


@pytest.mark.parametrize("sde", [VPSDE(0.1, 20.0), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_forward_marginals_match_closed_form(sde):
    """Euler-Maruyama simulation of the forward SDE from a fixed y0 against (psi(t) y0, sigma(t))."""
    g = torch.Generator().manual_seed(0)
    y0 = torch.tensor([0.8, -0.5], dtype=torch.float64)
    n, steps, t_end = 20000, 400, 0.3
    y = y0.repeat(n, 1)
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        y = y + sde.drift(y, t) * dt + torch.sqrt(sde.diffusion_sq(t) * dt)[:, None] * torch.randn(y.shape, generator=g, dtype=torch.float64)
    psi, sigma = sde.marginal(torch.tensor(t_end, dtype=torch.float64))
    assert torch.allclose(y.mean(0), psi * y0, atol=4 * float(sigma) / math.sqrt(n) + 0.01)
    assert torch.allclose(y.std(0), sigma.expand(2), rtol=0.03)


def _degenerate(dim: int, d: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, d, generator=g, dtype=torch.float64))
    return basis @ torch.diag(torch.tensor([1.0, 0.7, 0.5, 0.4, 0.3][:d], dtype=torch.float64) ** 2) @ basis.T \
        + noise ** 2 * torch.eye(dim, dtype=torch.float64), basis


@pytest.mark.parametrize("sde", [VPSDE(0.1, 20.0), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_flipd_of_degenerate_gaussian_returns_its_dimension(sde):
    dim, d = 12, 3
    cov, basis = _degenerate(dim, d, noise=1e-4)
    model = GaussianScoreModel(sde, cov)
    y = (torch.randn(16, d, dtype=torch.float64) * 0.5) @ basis.T
    t0 = 1e-3 if isinstance(sde, VPSDE) else 1e-2
    exact = flipd(model, y, t0, exact=True)
    assert (exact - d).abs().max() < 0.5, exact
    hutch = flipd(model, y, t0, probes=64, seed=1)  # probe noise: unbiased on average, within 1 per point
    assert (hutch - d).mean().abs() < 0.25 and (hutch - d).abs().max() < 1.0, hutch
    # at a large t0 the estimate moves away from d (the knob matters, the check can fail)
    assert (flipd(model, y, 0.9, exact=True) - d).abs().min() > 0.5


def _subspace_points(n=2000, dim=5, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, d, generator=g))
    return (torch.randn(n, d, generator=g) * 0.8) @ basis.T


@pytest.fixture(scope="module")
def trained_subspace_diffusion(tmp_path_factory):
    torch.set_num_threads(2)
    cfg = runconfig.resolve({"model": {"family": "diffusion", "network": "mlp", "hidden": 128, "mlp_layers": 2},
                             "training": {"steps": 1500, "batch_size": 128, "lr": 2e-3, "warmup_steps": 50,
                                          "checkpoint_every": 500, "progress": False, "sample_grid": 0},
                             "tracking": {"wandb": False}})
    data = _subspace_points()
    model, _ = training.fit(cfg, tmp_path_factory.mktemp("subspace"), data.numpy(), log=lambda m: None)
    return model, cfg


def test_tiny_diffusion_on_a_subspace_has_flipd_near_its_dimension(trained_subspace_diffusion):
    model, _ = trained_subspace_diffusion
    y = _subspace_points(n=64, seed=0)[:64]
    est = flipd(model, y, math.exp(-3.0), exact=True).detach()
    within = ((est - 2).abs() <= 1).float().mean()
    assert within >= 0.8, est
    # and the normal bundle agrees at its default threshold
    from genood.ood.lid_diffusion import normal_bundle_singular_values
    sv = normal_bundle_singular_values(model, y[:16], 0.01, 40)
    nb = 5 - (sv > math.exp(-1.0)).sum(1)
    assert ((nb - 2).abs() <= 1).float().mean() >= 0.8, nb


def test_killed_diffusion_training_resumes_to_the_same_weights(tmp_path):
    cfg = runconfig.resolve({"model": {"family": "diffusion", "network": "unet", "channels": [8, 8], "norm_groups": 4},
                             "training": {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1,
                                          "progress": False, "sample_grid": 0}, "tracking": {"wandb": False}})
    images = np.random.default_rng(0).integers(0, 256, size=(16, 6, 6, 1), dtype=np.uint8)
    assert_training_resumes_to_the_same_weights(cfg, images, tmp_path)


def test_unet_pads_odd_sizes_and_log_prob_is_in_nats_of_the_stored_data():
    cfg = runconfig.resolve({"model": {"family": "diffusion", "channels": [8, 8, 8], "norm_groups": 4},
                             "tracking": {"wandb": False}})
    model = build_model((1, 6, 6), cfg["model"]).eval()
    assert isinstance(model, ScoreDiffusion) and model.net.pad_h == 2
    x = torch.rand(3, 1, 6, 6) * 256
    model.configure(dict(cfg, ode=dict(cfg["ode"], rtol=1e-4, atol=1e-4)))
    with torch.no_grad():
        lp = model.log_prob(x)
        y_lp, _ = ode_log_likelihood(model, model.to_model_space(x), rtol=1e-4, atol=1e-4)
    assert torch.allclose(lp, y_lp - 36 * math.log(128.0))
    assert torch.allclose(model.bits_per_dim(x), -lp / (36 * math.log(2)), rtol=1e-3)
    assert model.likelihood_nfe.shape == (3,)
    s = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 1, 6, 6) and float(s.min()) >= 0 and float(s.max()) < 256


def test_killed_flipd_stage_resumes_without_recomputing_finished_blocks(trained_subspace_diffusion, tmp_path, monkeypatch):
    from genood import rundir
    rundir.allow_writes(tmp_path)  # this test's folder stands for a run directory the runner chose
    model, cfg = trained_subspace_diffusion
    cfg = runconfig.deep_merge(cfg, {"lid": {"method": "flipd", "n_per_split": 12, "batch_points": 4,
                                             "log_t0_grid": [-5.0, -1.0, 5], "log_t0": -3.0}})
    x = _subspace_points(n=12, seed=3)
    splits = [("in_train", "sub", x, np.arange(12))]
    est = lid_stage.ESTIMATORS["flipd"]
    calls = []
    original = est.compute

    class Killed(Exception):
        pass

    def counting(model_, xb, start, *rest):
        calls.append(start)
        if len(calls) == 3 and kill[0]:
            raise Killed()
        return original(model_, xb, start, *rest)
    kill = [False]
    monkeypatch.setitem(lid_stage.ESTIMATORS, "flipd", lid_stage.LidEstimator(**{**est.__dict__, "compute": counting}))
    uninterrupted = lid_stage.run_lid_stage(model, splits, cfg, 0, log=lambda m: None)
    calls.clear()
    kill[0] = True
    with pytest.raises(Killed):
        lid_stage.run_lid_stage(model, splits, cfg, 0, log=lambda m: None, cache_dir=tmp_path)
    assert calls == [0, 4, 8]
    calls.clear()
    kill[0] = False
    logs = []
    resumed = lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=tmp_path)
    assert calls == [8] and any("resuming" in m for m in logs)
    assert np.array_equal(resumed.values["in_train"], uninterrupted.values["in_train"])
    assert resumed.knob == "log_t0" and resumed.method == "flipd"


@pytest.mark.parametrize("sde", [VPSDE(0.1, 20.0), VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_lidl_integrates_the_fokker_planck_rate_to_the_closed_form_convolved_density(sde):
    """log rho_delta(t)(y) = log p_t(psi y) + D log psi, integrated from the score alone, against the exact
    Gaussian marginals; then LIDL's slope on a degenerate Gaussian gives its dimension."""
    from genood.ood import lid_diffusion

    model = GaussianScoreModel(sde, _random_cov(5, 2))
    y = torch.randn(6, 5, dtype=torch.float64) * 0.4
    knobs = np.linspace(-7.0, -1.0, 121)
    lcfg = {"flipd_probes": 1, "flipd_trace": "exact", "lidl_window": 2}
    raw = lid_diffusion._lidl_compute(model, y, 0, lcfg, 0, knobs)
    got = lid_diffusion.lidl_log_rho(raw)
    truth = []
    for k in knobs:
        psi, _ = sde.marginal(torch.tensor(math.exp(k), dtype=torch.float64))
        truth.append((model.log_density(psi * y, math.exp(k)) + 5 * torch.log(psi)).numpy())
    truth = np.stack(truth, axis=1)
    assert np.allclose(got, truth - truth[:, :1], atol=1e-2), np.abs(got - truth + truth[:, :1]).max()  # trapezoid error
    assert np.allclose(raw["log_delta"][0], [math.log(float(sde.marginal(torch.tensor(math.exp(k)))[1] /
                                                          sde.marginal(torch.tensor(math.exp(k)))[0])) for k in knobs], atol=1e-5)

    dim, d = 12, 3
    cov, basis = _degenerate(dim, d, noise=1e-4)
    flat = GaussianScoreModel(sde, cov)
    pts = (torch.randn(8, d, dtype=torch.float64) * 0.5) @ basis.T
    lo = -7.0 if isinstance(sde, VPSDE) else -5.0
    raw = lid_diffusion._lidl_compute(flat, pts, 0, lcfg, 0, np.linspace(lo, 0.0, 29))
    lidl = lid_diffusion._lidl_curve(raw, [lo + 1.0, -0.25], lcfg)
    assert np.abs(lidl[:, 0] - d).max() < 0.5, lidl
    assert np.abs(lidl[:, 1] - d).min() > 0.5  # at large noise the slope no longer sees the subspace: the check can fail


def test_lidl_on_the_trained_subspace_diffusion_is_near_its_dimension(trained_subspace_diffusion):
    from genood.ood import lid_diffusion

    model, cfg = trained_subspace_diffusion
    y = _subspace_points(n=32, seed=0)
    lcfg = dict(cfg["lid"], flipd_trace="exact")
    raw = lid_diffusion._lidl_compute(model, y, 0, lcfg, 0, np.linspace(-9.0, 0.0, 37))
    est = lid_diffusion._lidl_curve(raw, [-3.0], lcfg)[:, 0]
    assert np.mean(np.abs(est - 2) <= 1) >= 0.8, est
    assert lid_stage.ESTIMATORS["lidl"].needs == ("score", "sde")


def test_path_statistics_follow_the_closed_form_probability_flow_path_of_a_gaussian():
    """For data N(0, C) the probability-flow path is known: in C's eigenbasis u(t) = u(0) sqrt(m(t) / m(0)) with
    m(t) = psi^2 c + sigma^2, and eps(t) = sigma u(t) / m(t). The features (log size of eps at each step, log size
    of its finite-difference rate) from the Euler path must approach those of the exact path."""
    from genood.ood.scores import path_statistics as ps

    sde = VPSDE(0.1, 20.0)
    cov = _random_cov(6, 4)
    model = GaussianScoreModel(sde, cov, t_eps=1e-3)
    c, q = torch.linalg.eigh(cov)
    y0 = torch.randn(5, 6, dtype=torch.float64) @ torch.diag(c.sqrt()) @ q.T
    steps = 10
    coarse = ps.path_times(model.t_eps, 1.0, steps)

    def exact_eps(t):
        psi, sigma = sde.marginal(torch.tensor(float(t), dtype=torch.float64))
        m0 = sde.marginal(torch.tensor(model.t_eps, dtype=torch.float64))
        m0 = m0[0] ** 2 * c + m0[1] ** 2
        m = psi ** 2 * c + sigma ** 2
        u = (y0 @ q) * torch.sqrt(m / m0)
        return (sigma * u / m) @ q.T
    truth = ps.path_features([exact_eps(t) for t in coarse[:-1]], coarse)
    # the same statistics read off a fine Euler path at the coarse times
    fine = ps.path_times(model.t_eps, 1.0, steps * 200)
    eps_fine = ps.noise_predictions_along_path(model, y0, fine)
    got = ps.path_features([eps_fine[200 * k] for k in range(steps)], coarse)
    assert torch.allclose(got, truth, atol=0.03), (got - truth).abs().max()
    # the score's own 10-step path: close to the truth in its size terms, and the features are 2K - 1 columns
    ten = ps.path_features(ps.noise_predictions_along_path(model, y0, coarse), coarse)
    assert ten.shape == (5, 2 * steps - 1) and torch.allclose(ten[:, :steps], truth[:, :steps], atol=0.5)
    assert ps._labels({"path_statistics": {"steps": 3}}) == ["eps0", "eps1", "eps2", "rate0", "rate1"]
