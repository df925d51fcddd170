"""Ensembles (WAIC, Choi et al. 2018) and likelihood regret (Xiao et al. 2020) against brute force."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig


def _cfg(tmp, scores, **extra):
    from tests.conftest import TINY_MODEL
    return runconfig.resolve(dict({
        "run": {"runs_root": str(tmp / "runs")},
        "data": {"in_distribution": f"npz:{tmp / 'in.npz'}", "ood": f"npz:{tmp / 'ood.npz'}", "val_fraction": 0.2},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 12, "batch_size": 16, "progress": False, "sample_grid": 0},
        "ood": {"scores": scores, "n_generated": 0, "png": False, "bootstrap": 50}}, **extra))


def test_waic_members_are_distinct_trainings_that_hold_out_this_runs_in_val(npz_pair):
    import yaml

    from genood.models.training import load_trained
    from genood.ood.runner import run_ood

    cfg = _cfg(npz_pair, ["log_likelihood", "waic", "ensemble_variance"], ensemble={"members": 3, "steps": 10})
    directory = run_ood(cfg, echo=False)
    members = sorted((npz_pair / "runs" / "ensemble").glob("*/checkpoint.pt"))
    assert len(members) == 2  # trained once, shared by both scores
    configs = [yaml.safe_load((p.parent / "config.yaml").read_text()) for p in members]
    assert sorted(c["run"]["seed"] for c in configs) == [1, 2] and all(c["run"]["holdout_seed"] == 0 for c in configs)
    assert all(c["training"]["steps"] == 10 for c in configs)
    weights = [torch.cat([p.detach().flatten() for p in load_trained(m)[0].parameters()]) for m in members]
    assert not torch.equal(weights[0], weights[1])  # distinct trainings

    table = pd.read_parquet(directory / "scores.parquet")
    member_dirs = sorted((directory / "ensemble_blocks").iterdir())
    assert len(member_dirs) == 3 and member_dirs[0].name.startswith("member0_")
    for split in table["split"].unique():
        v = np.stack([np.load(d / f"{split}.npz")["ll"] for d in member_dirs])
        col = table.loc[table.split == split]
        assert np.allclose(v[0], col["log_likelihood"], atol=1e-4)  # member 0 is this run's own model
        # and the others are the trained members, evaluated afresh
        assert {d.name.split("_", 1)[1] for d in member_dirs[1:]} == {m.parent.name for m in members}
        assert np.allclose(col["waic"], v.mean(0) - v.var(0, ddof=1))
        assert np.allclose(col["ensemble_variance"], v.var(0, ddof=1))
        assert not np.allclose(v[1], v[2])
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["waic"]["seeds"] == [0, 1, 2] and len(metrics["waic"]["members"]) == 3
    # a second run of the same configuration finds the members instead of training them
    cfg2 = _cfg(npz_pair, ["log_likelihood", "waic"], ensemble={"members": 3, "steps": 10}, ood={"scores": ["waic"], "n_generated": 0,
                                                                                                 "png": False, "bootstrap": 20})
    run2 = run_ood(cfg2, echo=False)
    assert (run2 / "run.log").read_text().count("found in") == 2
    assert len(list((npz_pair / "runs" / "ensemble").glob("*/checkpoint.pt"))) == 2


def test_waic_refuses_a_member_seed_equal_to_its_own(npz_pair):
    from genood.ood.scores.ensemble import member_seeds

    assert member_seeds(_cfg(npz_pair, ["waic"], ensemble={"members": 4})) == [0, 1, 2, 3]
    assert member_seeds(_cfg(npz_pair, ["waic"], ensemble={"seeds": [7, 9]})) == [0, 7, 9]
    with pytest.raises(runconfig.ConfigError, match="ensemble.seeds"):
        member_seeds(_cfg(npz_pair, ["waic"], ensemble={"seeds": [0, 1]}))


def test_likelihood_regret_reaches_the_best_elbo_an_independent_optimiser_finds_and_leaves_the_model_alone():
    """One-layer linear-Gaussian HVAE with a perturbed encoder: with the posterior noise eps fixed, the single-sample
    ELBO of (mu, log sd) is log N(x; W (mu + sd eps) + b, s^2 I) - KL(N(mu, sd^2) || N(0, I)); its maximum by
    scipy's L-BFGS minus the encoder's ELBO is the regret the model's Adam loop must reach."""
    from scipy.optimize import minimize

    from tests.test_families import _linear_gaussian

    model, _, (w, b, s) = _linear_gaussian(perturb=0.4)
    x = torch.tensor(np.random.default_rng(5).normal(size=(4, 4)) * 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    regret = model.likelihood_regret(x, steps=2500, lr=0.02)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert (regret >= 0).all() and (regret > 1e-3).all()

    gens = model._generators(x, 5)  # the fixed noise the model uses for each image
    with torch.no_grad():
        posts = model._posteriors(model._encoder_input(model._seeded_targets(x, gens)))
    eps = model._seeded_noise(posts, gens, 1)[0].numpy()
    mu0, lsd0 = (v.numpy() for v in posts[0])
    latent = w.shape[1]

    def neg_elbo(theta, xi, e):
        mu, lsd = theta[:latent], theta[latent:]
        z = mu + np.exp(lsd) * e
        r = xi - (w @ z + b)
        rec = -0.5 * (r @ r) / s ** 2 - len(xi) * (np.log(s) + 0.5 * np.log(2 * np.pi))
        kl = 0.5 * np.sum(np.exp(2 * lsd) + mu ** 2 - 1 - 2 * lsd)
        return -(rec - kl)
    for j in range(len(x)):
        start = -neg_elbo(np.r_[mu0[j], lsd0[j]], x[j].numpy(), eps[j])
        best = minimize(neg_elbo, np.r_[mu0[j], lsd0[j]], args=(x[j].numpy(), eps[j]), method="L-BFGS-B")
        assert abs(regret[j].item() - (-best.fun - start)) < 2e-3, (j, regret[j].item(), -best.fun - start)


def test_likelihood_regret_is_per_point_and_grows_with_steps():
    from tests.test_families import _conv_hvae

    model, cfg = _conv_hvae()
    x = torch.rand(4, 1, 12, 12) * 256
    batch = model.likelihood_regret(x, steps=5, lr=0.05)
    alone = torch.cat([model.likelihood_regret(x[j:j + 1], steps=5, lr=0.05) for j in range(4)])
    assert torch.allclose(batch, alone, atol=1e-4)  # Adam is elementwise: a batch is every point on its own
    assert torch.equal(model.likelihood_regret(x, steps=0, lr=0.05), torch.zeros(4))
    more = model.likelihood_regret(x, steps=15, lr=0.05)
    assert (more >= batch - 1e-5).all() and (more > 0).all()
    from genood.ood.scores import get
    cols = get("likelihood_regret").fn(model, x, {"cfg": runconfig.deep_merge(cfg, {"likelihood_regret": {"steps": 5, "lr": 0.05}})})
    assert torch.allclose(cols, batch)


def test_seed_detectors_run_end_to_end_with_their_tables_figures_and_report(npz_pair):
    """Through main_ood's runner on small images: the flow's fast_lidl and sampled_rho_r (with their trend tables,
    figures and report sections), the diffusion's path_statistics with its density detector and LIDL as the LID."""
    from genood.ood.runner import run_ood
    from genood.reports.report import build

    flow = _cfg(npz_pair, ["log_likelihood", "lid", "fast_lidl", "sampled_rho_r"],
                lid={"n_per_split": 4, "in_splits": ["in_val", "in_test"]}, rho_r={"r_grid": [-12.0, 2.0, 15]},
                sampling={"n_samples": 300, "batch_size": 100, "r_grid": [-5.0, 1.0, 7]})
    flow["ood"].update(figures=True, n_in_test=24)
    directory = run_ood(flow, echo=False)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["fast_lidl"]["r"] == -3.0 and 0.0 <= metrics["fast_lidl"]["auroc"] <= 1.0
    assert metrics["sampled_rho_r"]["n_samples"] == 300
    trend = pd.read_parquet(directory / "rho_r_trend.parquet")
    assert set(trend.split) == {"in_val", "in_test", "ood"} and trend.r.nunique() == 15
    assert len(pd.read_parquet(directory / "sampling_trend.parquet")) == 7 * 12
    figures = {p.stem for p in (directory / "figures").glob("*.html")}
    assert {"rho_r_trend", "sampling_rho_r", "sampling_ball_mass"} <= figures
    html = build(pd.DataFrame(), [directory])  # the run's section: the figures the scores' registrations bring
    assert "rho_r trend" in html and "by sampling" in html

    diffusion = _cfg(npz_pair, ["complexity", "path_statistics", "lid"],
                     model={"family": "diffusion", "network": "unet", "channels": [8, 8], "norm_groups": 4},
                     lid={"method": "lidl", "n_per_split": 3, "in_splits": ["in_val", "in_test"],
                          "lidl_log_t_grid": [-6.0, 0.0, 7], "lidl_log_t": -3.0},
                     path_statistics={"steps": 4}, combined={"sets": [["path_statistics"]], "density": "gmm"})
    directory = run_ood(diffusion, echo=False)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["lid"]["lid_method"] == "lidl" and metrics["lid"]["log_t"] == -3.0
    assert "density:path_statistics" in metrics
    table = pd.read_parquet(directory / "scores.parquet")
    assert len([c for c in table.columns if c.startswith("path_statistics@")]) == 7
