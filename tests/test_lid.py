import math

import numpy as np
import pytest
import torch

from genood import rundir
from genood.data import manifolds
from genood.ood import lid, lpca


class LinearGenerator(torch.nn.Module):
    """A known affine generator x = A z + b (in [0,1] units), with the flow interface LID uses."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a
        self.data_scale = 1.0

    def generator(self, z):
        return z @ self.a.T + 0.25

    def encode(self, x):
        return torch.linalg.solve(self.a, (x.reshape(x.shape[0], -1) - 0.25).T).T


def test_jacobian_of_an_affine_map_gives_exactly_its_singular_values():
    torch.manual_seed(0)
    d = 12
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    sigma = torch.logspace(-4, 1, d, dtype=torch.float64)
    a = u @ torch.diag(sigma) @ v.T
    model = LinearGenerator(a)
    z = torch.randn(3, d, dtype=torch.float64)
    for mode in ("reverse", "forward"):
        jac = lid.jacobians(model.generator, z, chunk_size=7, mode=mode)
        assert torch.allclose(jac, a.expand(3, d, d), atol=1e-12), mode
    spectra = lid.exact_spectra(model, model.generator(z), chunk_size=5, batch_points=2)
    assert np.allclose(np.sqrt(spectra), np.sort(sigma.numpy())[::-1], rtol=1e-8)
    counts = lid.lid_from_spectra(spectra, [math.log(1e-3), math.log(0.5)])
    assert counts.tolist() == [[(sigma > 1e-3).sum().item(), (sigma > 0.5).sum().item()]] * 3


@pytest.mark.parametrize("preset, shape", [("flow_rq_nsf_tiny", (1, 8, 8)), ("flow_affine_tiny", (1, 8, 8)),
                                           ("flow_tabular", (6,))])
def test_shared_primal_layers_give_the_same_jacobian(preset, shape):
    """Computing each conv/linear forward once per point must not change any Jacobian row."""
    from genood import runconfig
    from genood.models.flows import build_model

    cfg = runconfig.resolve({"preset": preset}, [])
    torch.manual_seed(0)
    model = build_model(shape, cfg["model"])
    with torch.no_grad():  # data-dependent initialisation (actnorm), then perturb so nothing is trivially zero
        model.log_prob(torch.rand(32, *shape) * (256 if len(shape) == 3 else 1))
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    x = torch.rand(3, *shape) * (256 if len(shape) == 3 else 1)
    g = lid._scaled_generator(model)
    z = lid.latents(model, x)
    plain = lid.jacobians(g, z, chunk_size=17)
    shared = lid.jacobians(g, z, chunk_size=17, model=model)
    assert torch.allclose(shared, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
    # patched forwards are removed again (a precision.exact_module keeps its own float32 forward wrapper)
    assert not any("forward" in vars(m) for m in model.modules() if getattr(m, "_genood_exact_inner", None) is None)


def test_lanczos_density_counts_a_well_separated_spectrum():
    torch.manual_seed(1)
    d = 40
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    sigma = torch.cat([torch.full((15,), 2.0), torch.full((25,), 1e-3)]).double()
    model = LinearGenerator(u @ torch.diag(sigma) @ u.T)
    x = model.generator(torch.randn(2, d, dtype=torch.float64))
    dens = lid.lanczos_density(model, x, probes=64, steps=10, seed=0)
    est = dens.lid([math.log(0.1)])
    assert np.all(np.abs(est - 15) < 3)


@pytest.mark.parametrize("d, dim", [(2, 10), (5, 30)])
def test_lpca_recovers_dimension_on_noiseless_subspaces(d, dim):
    points, true = manifolds.affine_subspace(600, d, dim, seed=d)
    est = lpca.lpca(points, k=25, variance=0.95)
    assert np.mean(est == d) > 0.9 and np.all(est <= d)


def test_manifolds_report_their_true_lid():
    x, t = manifolds.sphere(200, 3, 8, seed=0)
    assert x.shape == (200, 8) and set(t) == {3}
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)  # the embedding is an isometry
    x, t = manifolds.lollipop(300, 6, seed=0)
    assert set(t) == {1, 2} and (t == 1).sum() == 90
    est = lpca.lpca(x, k=15, variance=0.99)
    assert np.mean(est[t == 1] == 1) > 0.7 and np.mean(est[t == 2] == 2) > 0.7


def test_flow_trained_on_a_subspace_has_lid_near_its_dimension(tmp_path):
    """A tabular RQ-NSF on a 3-d subspace of R^12 (tiny ambient noise): LID within 1 of 3 at a calibrated tau."""
    from genood import runconfig
    from genood.models.training import fit

    d, dim = 3, 12
    points, _ = manifolds.affine_subspace(3000, d, dim, noise=1e-3, seed=0)
    points = (points - points.mean(0)) / points.std()
    cfg = runconfig.resolve({"preset": "flow_tabular", "tracking": {"wandb": False},
                             "training": {"steps": 1500, "progress": False, "sample_grid": 0, "checkpoint_every": 1500}})
    torch.set_num_threads(2)
    model, _ = fit(cfg, tmp_path, torch.from_numpy(points).float(), log=lambda m: None)
    x = torch.from_numpy(points[:200]).float()
    spectra = lid.exact_spectra(model, x)
    grid = np.linspace(-8, 2, 41)
    curves = lid.lid_from_spectra(spectra, grid)
    # calibrate tau as the seeds do: the grid value whose mean training LID matches a model-free estimate
    target = lpca.lpca(points[:1500], k=30, variance=0.95, query=points[:200]).mean()
    best = int(np.argmin(np.abs(curves.mean(0) - target)))
    assert abs(target - d) < 0.5
    assert np.mean(np.abs(curves[:, best] - d) <= 1) > 0.9, (grid[best], curves[:, best])


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_lid_stage_resumes_a_killed_run_with_the_same_numbers(tmp_path, mode, monkeypatch):
    rundir.allow_writes(tmp_path)  # this test's folders stand for a run directory the runner chose
    from genood import runconfig
    from genood.models.flows import build_model
    from genood.ood import lid_stage

    cfg = runconfig.resolve({"preset": "flow_tabular", "training": {"progress": False},
                             "lid": {"mode": mode, "n_per_split": 10, "batch_points": 3, "probes": 2,
                                     "lanczos_steps": 2, "log_tau": -1.0}})
    torch.manual_seed(0)
    model = build_model((6,), cfg["model"]).eval()
    gen = torch.Generator().manual_seed(1)
    splits = [("in_train", "a", torch.randn(20, 6, generator=gen), np.arange(20)),
              ("ood", "b", 2 * torch.randn(15, 6, generator=gen), np.arange(15))]
    uninterrupted = lid_stage.run_lid_stage(model, splits, cfg, 0, log=lambda m: None)

    name = "exact_spectra" if mode == "exact" else "lanczos_density"
    real, calls = getattr(lid, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and kill:
            raise KeyboardInterrupt  # the run is killed inside the third block
        return real(*args, **kwargs)
    monkeypatch.setattr(lid, name, counted)
    cache, logs = tmp_path / "lid_spectra", []
    kill = True
    with pytest.raises(KeyboardInterrupt):
        lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=cache)
    kill, calls[:] = False, []
    resumed = lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=cache)
    assert len(calls) == 8 - 2  # 4 blocks of 3 points per split, 2 were saved before the kill
    assert any("resuming in_train from 6/10" in m for m in logs)
    for split in ("in_train", "ood"):
        assert np.array_equal(resumed.values[split], uninterrupted.values[split])
    assert resumed.curves.equals(uninterrupted.curves)
    assert sorted(p.name for p in cache.iterdir()) == ["in_train.npz", "ood.npz"]

    with torch.no_grad():  # another model: the cache must not be used
        next(model.parameters()).add_(0.1)
    calls[:] = []
    lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=cache)
    assert len(calls) == 8

    (cache / "in_train.npz").write_bytes(b"half a file")  # a damaged cache is recomputed, not trusted
    calls[:] = []
    lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=cache)
    assert len(calls) == 4 and any("in_train.npz is unreadable" in m for m in logs)


def test_runs_share_complete_spectra_through_the_shared_store(tmp_path, monkeypatch):
    """A second run on the same model and points (say, another log tau) reuses the first run's spectra."""
    rundir.allow_writes(tmp_path)  # this test's folders stand for a run directory the runner chose
    from genood import runconfig
    from genood.models.flows import build_model
    from genood.ood import lid_stage

    cfg = runconfig.resolve({"preset": "flow_tabular", "training": {"progress": False},
                             "lid": {"n_per_split": 6, "batch_points": 3, "log_tau": -1.0}})
    torch.manual_seed(0)
    model = build_model((6,), cfg["model"]).eval()
    gen = torch.Generator().manual_seed(1)
    splits = [("in_train", "a", torch.randn(20, 6, generator=gen), np.arange(20)),
              ("ood", "b", 2 * torch.randn(15, 6, generator=gen), np.arange(15))]
    real, calls = lid.exact_spectra, []
    monkeypatch.setattr(lid, "exact_spectra", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared, logs = tmp_path / "lid_cache", []
    first = lid_stage.run_lid_stage(model, splits, cfg, 0, log=logs.append, cache_dir=tmp_path / "run1", shared_dir=shared)
    assert len(calls) == 4 and len(list(shared.glob("*.npz"))) == 2
    calls[:] = []
    cfg2 = runconfig.resolve({"preset": "flow_tabular", "training": {"progress": False},
                              "lid": {"n_per_split": 6, "batch_points": 3, "log_tau": 0.5}})
    second = lid_stage.run_lid_stage(model, splits, cfg2, 0, log=logs.append, cache_dir=tmp_path / "run2", shared_dir=shared)
    assert calls == [] and sorted(p.name for p in (tmp_path / "run2").iterdir()) == ["in_train.npz", "ood.npz"]
    assert second.curves.equals(first.curves) and second.log_tau == 0.5
    for split in ("in_train", "ood"):
        spectra = np.load(tmp_path / "run2" / f"{split}.npz")["spectra"]
        assert np.array_equal(second.values[split], lid.lid_from_spectra(spectra, [0.5])[:, 0])


def test_rho_r_of_a_linear_flow_matches_the_gaussian_convolution_in_closed_form():
    """A linear flow x = A z + b, z ~ N(0, I) is exactly N(b, A A^T); convolved with N(0, e^{2r} I) it is
    N(b, A A^T + e^{2r} I): log rho_r and its r-derivative from the cached decomposition must match."""
    from scipy.stats import multivariate_normal

    torch.manual_seed(3)
    d = 9
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = u @ torch.diag(torch.logspace(-3, 0.5, d, dtype=torch.float64)) @ v.T
    model = LinearGenerator(a)
    x = model.generator(torch.randn(4, d, dtype=torch.float64) * 1.5)
    spectra, proj = lid.exact_spectra(model, x, chunk_size=4, batch_points=3, projections=True)
    assert np.allclose(spectra, lid.exact_spectra(model, x, chunk_size=4, batch_points=3))
    rs = np.linspace(-9.0, 2.0, 23)
    log_rho, slope = lid.log_rho_r(spectra, proj, rs)
    cov = (a @ a.T).numpy()
    closed = lambda r: np.array([multivariate_normal(mean=np.full(d, 0.25), cov=cov + np.exp(2 * r) * np.eye(d)).logpdf(p)
                                 for p in x.numpy()])
    # d/dr log N(x; b, C + s I) with s = e^{2r} is -s (tr M^-1 - y^T M^-2 y), M = C + s I, y = x - b: in closed form
    # from C's eigendecomposition (a finite difference of scipy's logpdf is too noisy where C is ill-conditioned)
    evals, evecs = np.linalg.eigh(cov)
    ys = (x.numpy() - 0.25) @ evecs
    closed_slope = lambda r: -np.exp(2 * r) * (np.sum(1.0 / (evals + np.exp(2 * r)))
                                               - np.sum(ys ** 2 / (evals + np.exp(2 * r)) ** 2, axis=1))
    for k, r in enumerate(rs):
        assert np.allclose(log_rho[:, k], closed(r), rtol=1e-9, atol=1e-8)
        assert np.allclose(slope[:, k], closed_slope(r), rtol=1e-5, atol=1e-5)
    # as r -> -inf the convolved density is the flow's own; LIDL -> D (full rank) and -> 0 for a huge radius
    flow = multivariate_normal(mean=np.full(d, 0.25), cov=cov).logpdf(x.numpy())
    assert np.allclose(lid.log_rho_r(spectra, proj, [-30.0])[0][:, 0], flow, atol=1e-6)
    assert np.allclose(d + lid.log_rho_r(spectra, proj, [-30.0])[1][:, 0], d, atol=1e-6)
    assert np.all(d + lid.log_rho_r(spectra, proj, [12.0])[1][:, 0] < 1e-6)


def test_fast_lidl_stage_reuses_the_lid_stage_decomposition(tmp_path, monkeypatch):
    from genood import runconfig
    from genood.models.flows import build_model
    from genood.ood.scores import StageContext, get

    cfg = runconfig.resolve({"preset": "flow_tabular", "training": {"progress": False},
                             "lid": {"n_per_split": 5, "batch_points": 2, "log_tau": -1.0, "in_splits": ["in_test"]},
                             "rho_r": {"r_grid": [-12.0, 3.0, 31], "r": -1.0}})
    torch.manual_seed(0)
    model = build_model((6,), cfg["model"]).eval()
    gen = torch.Generator().manual_seed(1)
    splits = [("in_test", "a", torch.randn(12, 6, generator=gen), np.arange(12)),
              ("ood:b", "b", 2 * torch.randn(9, 6, generator=gen), np.arange(9))]
    ctx = StageContext(model, splits, cfg, 0, lambda m: None, tmp_path / "run", tmp_path, groups={"ood:b": "far"})
    lid_out = get("lid").stage(ctx)
    real, calls = lid.exact_spectra, []
    monkeypatch.setattr(lid, "exact_spectra", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = get("fast_lidl").stage(ctx)
    assert calls == []  # every point's decomposition came from the LID stage's cache
    for split in ("in_test", "ood:b"):
        assert np.array_equal(out.positions[split], lid_out.positions[split])
        raw = np.load(tmp_path / "run" / "lid_spectra" / f"{split}.npz")
        expect = 6 + lid.log_rho_r(raw["spectra"], raw["latent_proj_sq"], [-1.0])[1][:, 0]
        assert np.allclose(out.values[split], expect)
    trend = out.artifacts["rho_r_trend"]
    assert len(trend) == 31 * 10 and set(trend.columns) == {"split", "dataset", "index", "r", "log_rho", "lid"}
    assert "rho_r_trend" in out.figures(None, {}, dict(cfg, data={"in_distribution": "a", "ood": "b"}))
    fast = runconfig.resolve({"preset": "flow_tabular", "lid": {"mode": "fast"}})
    with pytest.raises(Exception, match="lid.mode: exact"):
        get("fast_lidl").stage(StageContext(model, splits, fast, 0, print, None, None))
