"""Seed 000's sampling experiments: Monte Carlo ball masses and Gaussian-convolved likelihoods from model samples."""
import math

import numpy as np
import pytest
import torch

from genood.ood.scores import sampling


def test_ball_mass_and_convolution_match_a_gaussian_in_closed_form():
    from scipy.stats import multivariate_normal, ncx2

    dim, s, n = 3, 0.05, 200_000
    gen = torch.Generator().manual_seed(0)
    mean = torch.full((dim,), 0.5, dtype=torch.float64)
    samples = mean + s * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    points = torch.stack([mean, mean + 0.03, mean + torch.tensor([0.1, -0.05, 0.0], dtype=torch.float64)])
    rs = np.log(np.array([0.01, 0.03, 0.06]))
    sq = sampling.squared_distances(points, samples)
    mass = np.exp(sampling.ball_log_mass(sq, rs, dim))
    log_rho = sampling.kde_log_rho(sq, rs, dim)
    for j, p in enumerate(points.numpy()):
        nc = float(((p - 0.5) ** 2).sum()) / s ** 2
        for k, r in enumerate(rs):
            truth = ncx2.cdf(np.exp(2 * r) * dim / s ** 2, df=dim, nc=nc)
            assert abs(mass[j, k] - truth) < 4 * math.sqrt(truth * (1 - truth) / n) + 1e-4, (j, k, mass[j, k], truth)
            exact = multivariate_normal(mean=np.full(dim, 0.5), cov=(s ** 2 + np.exp(2 * r)) * np.eye(dim)).logpdf(p)
            kern = np.exp(-0.5 * sq[j].numpy() / np.exp(2 * r))  # the estimate's relative Monte Carlo error
            rel_se = kern.std() / (kern.mean() * math.sqrt(n))
            assert abs(log_rho[j, k] - exact) < 4 * rel_se + 1e-3, (j, k, log_rho[j, k], exact, rel_se)


class GaussianSampler(torch.nn.Module):
    """A model whose samples are N(128, 20^2 I) in stored-data units; counts its sample calls."""

    def __init__(self, dim):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.full((dim,), 128.0))
        self.calls = 0

    def sample(self, n, generator=None):
        self.calls += 1
        return self.loc.detach() + 20.0 * torch.randn(n, self.loc.numel(), generator=generator)


def test_sampling_stage_scores_the_lid_points_and_resumes_from_its_sample_cache(tmp_path):
    from genood import runconfig
    from genood.ood.lid_stage import point_positions
    from genood.ood.scores import StageContext, get

    cfg = runconfig.resolve({"preset": "flow_tabular", "training": {"progress": False},
                             "lid": {"n_per_split": 4, "in_splits": ["in_test"]},
                             "sampling": {"n_samples": 3000, "batch_size": 1000, "r_grid": [-4.0, 0.0, 9], "r": -2.0}})
    model = GaussianSampler(4)
    gen = torch.Generator().manual_seed(1)
    splits = [("in_test", "a", 128 + 20 * torch.randn(10, 4, generator=gen), np.arange(10)),
              ("ood:far", "b", 200 + 5 * torch.randn(8, 4, generator=gen), np.arange(8))]
    ctx = StageContext(model, splits, cfg, 0, lambda m: None, tmp_path / "run", tmp_path, groups={"ood:far": "far"})
    out = get("sampled_rho_r").stage(ctx)
    assert model.calls == 3
    assert np.array_equal(out.positions["in_test"], point_positions("in_test", 10, 4, 0))
    # the in-distribution points sit in the bulk of the samples, the far ones in its tail
    assert out.values["in_test"].mean() > out.values["ood:far"].mean() + 2
    exact = [np.sum([-0.5 * ((p / 256 - 0.5) ** 2) / (math.exp(-4) + (20 / 256) ** 2) - 0.5 * math.log(
        2 * math.pi * (math.exp(-4) + (20 / 256) ** 2)) for p in row]) for row in splits[0][2][out.positions["in_test"]].numpy()]
    assert np.allclose(out.values["in_test"], exact, atol=0.1)
    trend = out.artifacts["sampling_trend"]
    assert len(trend) == 9 * 8 and trend.groupby(["split", "index"])["log_mass"].apply(lambda v: v.is_monotonic_increasing).all()
    again = get("sampled_rho_r").stage(ctx)  # the samples come from the run's cache
    assert model.calls == 3 and np.array_equal(again.values["in_test"], out.values["in_test"])
    figs = out.figures(None, {}, dict(cfg, data={"in_distribution": "a", "ood": "b"}))
    assert set(figs) == {"sampling_rho_r", "sampling_ball_mass"}


@pytest.mark.parametrize("bad", [{"n_samples": 0}, {"r_grid": [1.0, 0.0, 3]}])
def test_bad_sampling_settings_are_one_sentence(bad):
    from genood import runconfig

    with pytest.raises(runconfig.ConfigError, match="sampling"):
        runconfig.resolve({"preset": "flow_tabular", "sampling": bad})


def _suite_trend(n_sets=3, points=4, rs=None):
    """A per-point trend table as a multi-set run writes it: in_val, in_test and one ``ood@<set>`` split each."""
    import pandas as pd

    rs = np.linspace(-6.0, 2.0, 9) if rs is None else rs
    rows = []
    splits = [("in_val", "fmnist"), ("in_test", "fmnist")] + [(f"ood@set{k}", f"fmnist:set{k}") for k in range(n_sets)]
    for j, (split, dataset) in enumerate(splits):
        for i in range(points):
            rows.append(pd.DataFrame({"split": split, "dataset": dataset, "index": i, "r": rs,
                                      "log_rho": -100.0 * j - np.exp(-4.0 * rs), "log_mass": np.minimum(rs, 0.0)}))
    return pd.concat(rows, ignore_index=True)


def test_per_split_figures_draw_every_ood_set_of_a_multi_set_run():
    """The suite's per-point stages name OOD splits ``ood@<set>``: each set is a trace of its own (they were all
    dropped before), in-distribution first; sets past the cap are counted in the legend, not drawn."""
    from genood.ood.figures import split_groups
    from genood.ood.scores.rho_r import trend_figure

    trend = _suite_trend(n_sets=3)
    groups = split_groups(trend)
    assert [g[0] for g in groups] == ["In-distribution val", "In-distribution test", "OOD fmnist:set0",
                                      "OOD fmnist:set1", "OOD fmnist:set2"]
    assert len({g[1] for g in groups}) == 5 and sum(len(g[2]) for g in groups) == len(trend)
    fig = trend_figure(trend.assign(lid=1.0), r=-3.0)
    assert sum(1 for t in fig.data if t.showlegend is not False and t.name) == 5
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    assert names[0] == "In-distribution val (fmnist, 4 points)" and names[2] == "OOD fmnist:set0 (4 points)"
    capped = split_groups(_suite_trend(n_sets=5), max_ood=2)
    assert [g[0] for g in capped][-1] == "(+3 more OOD sets in the tables)" and capped[-1][2] is None
    assert sum(1 for g in capped if g[0].startswith("OOD")) == 2
    # a single-set run keeps the plain ``ood`` split and label
    single = trend[trend.split.isin(["in_test", "ood@set0"])].assign(split=lambda f: f.split.str.replace("ood@set0", "ood"))
    assert [g[0] for g in split_groups(single)] == ["In-distribution test", "OOD"]


def test_sampling_comparison_frames_the_linearised_curves_not_the_collapsed_estimate():
    trend = _suite_trend(n_sets=1)
    linear = _suite_trend(n_sets=1, rs=np.linspace(-20.0, 5.0, 26)).assign(log_rho=lambda f: -10.0 * f["r"])
    fig = sampling._comparison_figure(trend, linear, "t")
    lo, hi = fig.layout.yaxis.range
    assert trend["log_rho"].min() < lo  # the collapsed sampled values (-e^24) are outside the frame
    assert lo <= -10.0 * 2.0 and hi >= 60.0  # the linearised curves on the sampling radii [-6, 2] are inside
    xs = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data if t.name and "linearised" in t.name])
    assert xs.min() >= -6.0 and xs.max() <= 2.0


def test_stage_figures_in_the_report_are_titled_by_the_sets_they_draw(tmp_path):
    """A multi-set run's report section is named after its first pair, but the per-point stages' figures draw
    every set they scored: their titles say so (from the run's config.yaml)."""
    import yaml

    from genood.ood.figures import run_title

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"in_distribution": "fmnist", "ood": {
        "transform": ["fmnist:hflip", "fmnist:vflip"], "far": ["fmnist:uniform"], "real": ["mnist"]}}}))
    assert run_title(tmp_path, "fallback") == "fmnist vs 4 sets (transform, far, real)"
    assert run_title(tmp_path / "missing", "fmnist -> mnist") == "fmnist -> mnist"
    trend = _suite_trend(n_sets=2)
    trend.to_parquet(tmp_path / "sampling_trend.parquet")
    figs = sampling._figures_for(tmp_path, run_title(tmp_path, "fmnist -> fmnist:hflip (first of 4 OOD sets)"))
    assert all("fmnist vs 4 sets (transform, far, real)" in f.layout.title.text for f in figs)
