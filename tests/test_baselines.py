"""Baseline scores, combined detectors and bootstrap intervals against independent computations:
codecs' own byte counts, finite differences, the definition of typicality, closed-form AUROCs."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from genood import runconfig
from genood.data.splits import holdout
from genood.ood import combined as combined_mod
from genood.ood import scores as score_registry
from genood.ood.detectors import evaluate
from genood.ood.metrics import bootstrap_metrics, detection_metrics, percentile_interval
from genood.ood.scores.complexity import compressed_bits, stored_images


class IsoGaussian(torch.nn.Module):
    """log p(x) of N(mu, s^2 I) in data space, in closed form; its gradient in closed form too."""

    def __init__(self, shape, mu=128.0, s=40.0):
        super().__init__()
        self.shape, self.mu, self.s = tuple(shape), mu, s
        self.dim = int(np.prod(shape))
        self.w = torch.nn.Parameter(torch.zeros(1))

    def log_prob(self, x):
        z = (x - self.mu).flatten(1) / self.s
        return -0.5 * (z ** 2).sum(1) - self.dim * (math.log(self.s) + 0.5 * math.log(2 * math.pi))

    def log_prob_grad(self, x):
        return -(x - self.mu) / self.s ** 2


def _score(name, model, x, cfg=None):
    return score_registry.get(name).fn(model, x, {"cfg": cfg or {}}).double().numpy()


# --- scores against independent computations ------------------------------------------------------

def test_complexity_matches_the_codecs_own_byte_counts_and_its_definition():
    import imagecodecs

    gen = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (6, 1, 8, 8), generator=gen).float()
    stored[:3] = (stored[:3] // 64) * 64  # three simple images, three noisy ones
    x = stored + torch.rand(stored.shape, generator=gen)
    imgs = stored_images(x)
    assert imgs.dtype == np.uint8 and np.array_equal(imgs[..., 0], stored[:, 0].numpy().astype(np.uint8))
    direct = np.array([8 * min(len(imagecodecs.png_encode(a[..., 0], level=9)),
                               len(imagecodecs.jpeg2k_encode(a[..., 0], level=0, reversible=True)),
                               len(imagecodecs.jpegxl_encode(a[..., 0], lossless=True, effort=7)),
                               len(imagecodecs.zlib_encode(a.tobytes(), level=9))) for a in imgs])
    assert np.array_equal(compressed_bits(imgs, ["png", "jpeg2000", "jpegxl", "zlib"], {}), direct)
    assert direct[:3].max() < direct[3:].min()  # simple images compress better: the check can fail
    png_only = np.array([8 * len(imagecodecs.png_encode(a[..., 0], level=9)) for a in imgs])
    assert np.array_equal(compressed_bits(imgs, ["png"], {}), png_only)
    model = IsoGaussian((1, 8, 8))
    cfg = {"complexity": {"codecs": ["png", "jpeg2000", "jpegxl", "zlib"], "jpegxl_effort": 7}}
    want = (-model.log_prob(x).double().numpy() / math.log(2) - direct) / 64
    assert np.allclose(_score("complexity", model, x, cfg), want)


def test_derivative_norm_matches_finite_differences_of_a_real_flow():
    cfg = runconfig.resolve({"preset": "flow_tabular", "model": {"steps_per_level": 2, "hidden_channels": 16},
                             "tracking": {"wandb": False}})
    from genood.models.registry import build_model
    torch.manual_seed(0)
    model = build_model((3,), cfg["model"]).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd = torch.stack([(model.log_prob(x + h * e) - model.log_prob(x - h * e)) / (2 * h)
                          for e in torch.eye(3, dtype=torch.float64)], dim=1)
    got = _score("derivative_norm", model, x)
    assert np.allclose(got, fd.norm(dim=1).numpy(), rtol=1e-5)
    # closed form for a Gaussian: ||x - mu|| / s^2
    g = IsoGaussian((1, 4, 4))
    xi = torch.rand(3, 1, 4, 4) * 256
    assert np.allclose(_score("derivative_norm", g, xi), ((xi - 128).flatten(1).norm(dim=1) / 1600).numpy(), rtol=1e-5)


def test_diffusion_log_prob_grad_is_the_score_at_t_eps_in_data_units():
    cfg = runconfig.resolve({"model": {"family": "diffusion", "channels": [8, 8], "norm_groups": 4},
                             "tracking": {"wandb": False}})
    from genood.models.registry import build_model
    model = build_model((1, 6, 6), cfg["model"]).eval()
    x = torch.rand(2, 1, 6, 6) * 256
    y = model.to_model_space(x)
    want = model.score(y, torch.full((2,), model.t_eps)) / 128.0
    assert torch.allclose(model.log_prob_grad(x), want)


def _table(splits: dict) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"split": s, "dataset": "d", "index": np.arange(len(v["log_likelihood"])), **v})
                      for s, v in splits.items()], ignore_index=True)


def test_typicality_follows_its_definition_and_reads_in_val_only():
    rng = np.random.default_rng(0)
    ll = {s: rng.normal(-100, 5, 40) for s in ("in_train", "in_val", "in_test", "ood")}
    ll["ood"] = rng.normal(-60, 2, 40)  # likelier than the data (the paradox), but atypical
    table = _table({s: {"log_likelihood": v} for s, v in ll.items()})
    values, info = score_registry.get("typicality").derived(table, {})
    h = -ll["in_val"].mean()
    assert info["entropy_nats"] == pytest.approx(h) and info["fitted_on"] == "in_val"
    assert np.allclose(values, -np.abs(-table["log_likelihood"].to_numpy() - h))
    moved = table.copy()
    moved.loc[moved["split"].isin(["in_test", "ood", "in_train"]), "log_likelihood"] += 1000.0
    assert score_registry.get("typicality").derived(moved, {})[1]["entropy_nats"] == pytest.approx(h)


def test_typicality_batch_test_separates_batches():
    rng = np.random.default_rng(1)
    ll = {"in_train": rng.normal(-100, 5, 200), "in_val": rng.normal(-100, 5, 200),
          "in_test": rng.normal(-100, 5, 200), "ood": rng.normal(-97, 5, 200)}
    table = _table({s: {"log_likelihood": v} for s, v in ll.items()})
    table["typicality"] = score_registry.get("typicality").derived(table, {})[0]
    cfg = {"typicality": {"batch_sizes": [1, 25]}, "ood": {"bootstrap": 0}, "run": {"seed": 0}}
    m = evaluate(table, ["log_likelihood", "typicality"], {}, cfg)
    assert m["typicality_batch_m25"]["n_in"] == 8 and m["typicality_batch_m25"]["label_free"]
    # a shift of 3 nats is invisible per point but plain in means of 25
    assert m["typicality_batch_m1"]["auroc"] < 0.7 < 0.9 < m["typicality_batch_m25"]["auroc"]


def test_every_score_is_oriented_higher_is_in():
    """On a Gaussian model, in-distribution points sit at the mode and OOD points far out on the same image
    codec length: every score's oriented AUROC is high (a flipped orientation would give ~0)."""
    model = IsoGaussian((1, 8, 8))
    gen = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(40, 1, 8, 8, generator=gen) < 0.5, -1.0, 1.0)
    x_in = 128 + signs * 20 + torch.rand(40, 1, 8, 8, generator=gen)    # typical radius, same texture
    x_ood = 128 + signs * 100 + torch.rand(40, 1, 8, 8, generator=gen)  # far out
    per_batch = ["log_likelihood", "bits_per_dim", "complexity", "derivative_norm"]
    cols = {s: {n: _score(n, model, x) for n in per_batch} for s, x in
            (("in_val", x_in), ("in_test", x_in[torch.randperm(40, generator=gen)]), ("ood", x_ood))}
    table = _table(cols)
    table["typicality"] = score_registry.get("typicality").derived(table, {})[0]
    m = evaluate(table, per_batch + ["typicality"], {}, {"ood": {"bootstrap": 0}, "typicality": {"batch_sizes": []}})
    for name in per_batch + ["typicality"]:
        assert m[name]["auroc"] > 0.95, (name, m[name]["auroc"])
    assert score_registry.get("complexity").higher_is_in is False and score_registry.get("typicality").higher_is_in


# --- combined detectors ---------------------------------------------------------------------------

def _two_score_table(rng, n=300):
    """Scores a, b: in-distribution ~ N(0, I); OOD sits at a = +4 half the time and b = +4 the other half:
    higher than in-distribution on one score or the other (each score alone is on the wrong side)."""
    def ood(n):
        out = rng.normal(0, 1, (n, 2))
        out[np.arange(n) % 2 == 0, 0] += 4
        out[np.arange(n) % 2 == 1, 1] += 4
        return out
    parts = {"in_train": rng.normal(0, 1, (n, 2)), "in_val": rng.normal(0, 1, (n, 2)),
             "in_test": rng.normal(0, 1, (n, 2)), "ood": ood(n)}
    return _table({s: {"log_likelihood": v[:, 0], "bits_per_dim": -v[:, 1]} for s, v in parts.items()})


@pytest.mark.parametrize("density", ["gmm", "kde"])
def test_combined_density_recovers_a_known_separation_and_fits_on_in_val_only(density, monkeypatch):
    table = _two_score_table(np.random.default_rng(0))
    seen = []
    real_fit, real_p = combined_mod.fit_density, combined_mod.fit_pvalues

    def spy_fit(x_val, *a, **k):
        seen.append(np.array(x_val))
        return real_fit(x_val, *a, **k)

    def spy_p(x_val, *a):
        seen.append(np.array(x_val))
        return real_p(x_val, *a)
    real_min = combined_mod.fit_min_p

    def spy_min(x_val, *a):
        seen.append(np.array(x_val))
        return real_min(x_val, *a)
    monkeypatch.setattr(combined_mod, "fit_density", spy_fit)
    monkeypatch.setattr(combined_mod, "fit_pvalues", spy_p)
    monkeypatch.setattr(combined_mod, "fit_min_p", spy_min)
    cfg = {"combined": {"sets": [["log_likelihood", "bits_per_dim"]], "density": density, "max_components": 4,
                        "fisher": True}, "ood": {"bootstrap": 200, "confidence": 0.95}, "run": {"seed": 0}}
    m = evaluate(table, ["log_likelihood", "bits_per_dim"], {}, cfg)
    key = "density:log_likelihood+bits_per_dim"
    assert m["log_likelihood"]["auroc"] < 0.5 and m["bits_per_dim"]["auroc"] < 0.5  # each score alone points the wrong way
    assert m[key]["auroc"] > 0.95 and m[key]["label_free"] and m[key]["fitted_on"] == "in_val"
    assert m[key]["auroc_ci"][0] < m[key]["auroc"] < m[key]["auroc_ci"][1]
    assert m["fisher:log_likelihood+bits_per_dim"]["auroc"] < 0.5  # one-sided p-values cannot see this OOD
    assert m["minp:log_likelihood+bits_per_dim"]["auroc"] < 0.5
    val = table[table["split"] == "in_val"]
    want = np.column_stack([val["log_likelihood"], -val["bits_per_dim"]])  # oriented
    assert len(seen) == 3 and all(np.array_equal(s, want) for s in seen)  # fitted on in_val rows, nothing else


def test_gmm_component_count_is_chosen_by_heldout_likelihood():
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [8, 0], [0, 8]])
    x = np.concatenate([rng.normal(c, 0.5, (200, 2)) for c in centres])
    fitted = combined_mod.fit_density(x, "gmm", 6, seed=0)
    assert fitted["components"] == 3
    single = combined_mod.fit_density(rng.normal(0, 1, (600, 2)), "gmm", 6, seed=0)
    assert single["components"] <= 2


def test_fisher_and_min_p_combinations_match_their_definitions():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(50, 2))
    q = rng.normal(size=(7, 2))
    q[0] = ref.min(axis=0) - [0.5, 2.0]  # past in_val's minimum: the exponential tail
    srt = np.sort(ref, axis=0)
    scale = (srt[8] - srt[:8]).mean(axis=0)  # the mean excess of the ceil(sqrt(50)) lowest over the 9th
    p = (1 + (ref[None, :, :] <= q[:, None, :]).sum(axis=1)) / 51.0 * np.exp(-np.maximum(srt[0] - q, 0) / scale)
    assert np.allclose(combined_mod.fit_pvalues(ref)(q), 2 * np.log(p).sum(axis=1))
    assert np.allclose(combined_mod.fit_min_p(ref)(q), np.log(p.min(axis=1)))


def test_p_values_past_in_vals_extremes_keep_ranking_instead_of_tying_at_the_floor():
    """An in-distribution point just past in_val's minimum and OOD points far past it: the empirical p-value ties
    them all at 1 / (n + 1) (AUROC stuck near 1 - (share of in_test past the minimum) / 2); the tail orders them. A
    column with no spread in its tail keeps the floor (nothing to extrapolate), and -inf stays the lowest."""
    from genood.ood.metrics import auroc
    rng = np.random.default_rng(1)
    val, pos = rng.normal(size=(400, 1)), rng.normal(size=(1000, 1))
    neg = rng.normal(size=(500, 1)) - 12.0  # every OOD point past in_val's minimum
    past = (pos[:, 0] < val.min()).mean()
    assert 0 < past < 0.05
    score = combined_mod.fit_min_p(val)
    assert auroc(score(pos), score(neg)) == 1.0
    inside = (pos[:, 0] >= val.min())
    assert np.allclose(score(pos[inside]), np.log((1 + (val[:, 0][None, :] <= pos[inside]).sum(axis=1)) / 401.0))
    flat = np.r_[np.zeros((30, 1)), rng.normal(size=(370, 1)) + 5.0]  # 30 ties at the bottom: no tail scale
    low = combined_mod.fit_log_pvalues(flat)(np.array([[-1.0], [-9.0], [-np.inf]]))
    assert np.allclose(low[:2, 0], np.log(1 / 401.0)) and low[2, 0] == np.log(1 / 401.0)
    assert np.isneginf(combined_mod.fit_log_pvalues(val)(np.array([[-np.inf]]))[0, 0])


def test_min_p_catches_ood_in_either_tail_of_one_sided_scores():
    """OOD low on score a half the time and low on b the other half: Tippett's min-p sees both."""
    rng = np.random.default_rng(5)
    val, pos = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    neg = rng.normal(size=(500, 2))
    neg[::2, 0] -= 5
    neg[1::2, 1] -= 5
    from genood.ood.metrics import auroc
    score = combined_mod.fit_min_p(val)
    assert auroc(score(pos), score(neg)) > 0.97 and auroc(pos[:, 0], neg[:, 0]) < 0.8


def test_combined_sets_must_name_scores_that_are_computed(tiny_cfg):
    from genood.ood.runner import run_ood
    cfg = dict(tiny_cfg, combined=dict(tiny_cfg["combined"], sets=[["log_likelihood", "complexity"]]))
    with pytest.raises(runconfig.ConfigError, match="complexity is not among ood.scores"):
        run_ood(cfg, echo=False)
    nested = dict(tiny_cfg, combined=dict(tiny_cfg["combined"], sets=[[["log_likelihood", "complexity"], "log_likelihood"]]))
    with pytest.raises(runconfig.ConfigError, match="a member may be a list of them.*complexity is not among"):
        run_ood(nested, echo=False)
    deeper = dict(tiny_cfg, combined=dict(tiny_cfg["combined"], sets=[[[["log_likelihood"]]]]))
    with pytest.raises(runconfig.ConfigError, match=r"\['log_likelihood'\] is not among"):
        run_ood(deeper, echo=False)


# --- bootstrap intervals ----------------------------------------------------------------------------

def test_weighted_bootstrap_equals_metrics_of_explicit_resamples():
    from genood.ood import metrics as M
    rng = np.random.default_rng(0)
    s_in, s_ood = np.round(rng.normal(1, 1, 50), 1), np.round(rng.normal(0, 1, 40), 1)  # with ties
    boot = bootstrap_metrics(s_in, s_ood, 20, seed=3)
    rng2 = np.random.default_rng([3, 0xB007])
    w, v = M._multiplicities(rng2, 50, 20), M._multiplicities(rng2, 40, 20)
    for i in range(20):
        d = detection_metrics(np.repeat(s_in, w[i].astype(int)), np.repeat(s_ood, v[i].astype(int)))
        for key in M.METRIC_KEYS:
            assert boot[key][i] == pytest.approx(d[key], abs=1e-12), key


def test_bootstrap_intervals_cover_the_true_auroc_at_about_the_nominal_rate():
    true = norm.cdf(1.0 / math.sqrt(2.0))  # P(X > Y), X ~ N(1, 1), Y ~ N(0, 1)
    rng = np.random.default_rng(11)
    reps, hits = 200, 0
    for r in range(reps):
        s_in, s_ood = rng.normal(1, 1, 150), rng.normal(0, 1, 150)
        lo, hi = percentile_interval(bootstrap_metrics(s_in, s_ood, 300, seed=r)["auroc"], 0.95)
        hits += lo <= true <= hi
    assert 0.89 <= hits / reps <= 0.99, hits / reps


# --- the validation split ----------------------------------------------------------------------------

def test_holdout_is_seeded_disjoint_and_covering():
    tr, va = holdout(1000, 0.05, 3)
    assert va.size == 50 and tr.size == 950 and not set(tr) & set(va) and set(tr) | set(va) == set(range(1000))
    assert np.array_equal(holdout(1000, 0.05, 3)[1], va) and not np.array_equal(holdout(1000, 0.05, 4)[1], va)
    assert holdout(10, 0.0, 0)[1].size == 0


def test_models_never_train_on_in_val(tiny_cfg, monkeypatch):
    from genood.models import training
    seen = {}
    real = training.train

    def spy(model, images, cfg, *a, **k):
        seen["images"] = images.clone()
        return real(model, images, cfg, *a, **k)
    monkeypatch.setattr(training, "train", spy)
    images = (np.arange(40 * 4 * 4).reshape(40, 4, 4, 1) % 251).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(40)  # pixel (0, 0) names the image
    cfg = dict(tiny_cfg, data=dict(tiny_cfg["data"], val_fraction=0.25))
    training.fit(cfg, tiny_cfg["run"]["runs_root"] and __import__("pathlib").Path(tiny_cfg["run"]["runs_root"]) / "fit",
                 images, log=lambda m: None)
    trained_on = set(seen["images"][:, 0, 0, 0].tolist())
    _, val = holdout(40, 0.25, 0)
    assert len(trained_on) == 30 and not trained_on & set(val.tolist())


# --- likelihood ratios (Ren et al.) -------------------------------------------------------------------

def test_likelihood_ratio_of_two_known_gaussians():
    x = np.linspace(-3, 3, 13)
    s = 2.0
    table = _table({"in_val": {"log_likelihood": norm.logpdf(x), "background_log_likelihood": norm.logpdf(x, scale=s)}})
    info = {"background_log_likelihood": {"selection": "none", "mutation_rate": 0.2}}
    ratio, got_info = score_registry.get("likelihood_ratio").derived(table, {}, info)
    assert np.allclose(ratio, -0.5 * x ** 2 * (1 - 1 / s ** 2) + math.log(s))
    assert got_info["selection"] == "none"


def test_mutation_replaces_the_given_share_of_pixels_with_other_values():
    from genood.data.transforms import mutate
    x = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    y = mutate(x, 0.2, torch.Generator().manual_seed(1))
    changed = (y != x).float().mean().item()
    assert y.dtype == torch.uint8 and abs(changed - 0.2) < 0.01
    assert torch.equal(y, mutate(x, 0.2, torch.Generator().manual_seed(1)))  # seeded
    assert torch.equal(mutate(x, 0.0, torch.Generator()), x)
    # the replacement value is uniform over the 255 others: the mean shift of changed pixels is ~0 mod 256
    d = ((y.long() - x.long()) % 256)[y != x]
    assert d.min() >= 1 and abs(d.float().mean().item() - 128) < 3


def test_l2_penalty_is_rens_weight_penalty_in_bits_per_dim_and_shrinks_the_weights(tiny_cfg, tmp_path):
    from genood.models import training
    from genood.models.registry import build_model
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1)).astype(np.uint8)
    first, norms = {}, {}
    for lam in (0.0, 1000.0):
        cfg = dict(tiny_cfg, training=dict(tiny_cfg["training"], steps=40, l2_penalty=lam, sample_grid=0),
                   data=dict(tiny_cfg["data"], val_fraction=0.0), model=dict(tiny_cfg["model"], actnorm=False))
        model, _ = training.fit(cfg, tmp_path / f"l2_{lam}", images, log=lambda m: None,
                                callbacks=[lambda step, v, lam=lam: first.setdefault(lam, v)])
        norms[lam] = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    torch.manual_seed(0)
    plain = build_model((1, 8, 8), dict(tiny_cfg["model"], actnorm=False))  # no data-dependent initialisation
    theta0 = sum(float(p.detach().pow(2).sum()) for p in plain.parameters())
    # the first step's objective differs by exactly lambda * |theta_0|^2 / 2 / (D ln 2)
    assert first[1000.0] - first[0.0] == pytest.approx(1000.0 * 0.5 * theta0 / (64 * math.log(2)), rel=1e-4)
    assert norms[1000.0] < norms[0.0]


def _ratio_cfg(tmp, **lr):
    from tests.conftest import TINY_MODEL
    return runconfig.resolve({
        "run": {"runs_root": str(tmp / "runs")},
        "data": {"in_distribution": f"npz:{tmp / 'in.npz'}", "ood": f"npz:{tmp / 'ood.npz'}", "val_fraction": 0.2},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 12, "batch_size": 16, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood", "likelihood_ratio"], "n_generated": 0, "png": False, "bootstrap": 50},
        "likelihood_ratio": dict({"steps": 8}, **lr)})


def test_background_model_is_trained_on_demand_then_found(npz_pair):
    import json
    from genood.ood.runner import run_ood
    import pandas as pd
    directory = run_ood(_ratio_cfg(npz_pair), echo=False)
    metrics = json.loads((directory / "metrics.json").read_text())
    entry = metrics["likelihood_ratio"]
    assert entry["selection"] == "none" and entry["mutation_rate"] == 0.2 and entry["label_free"]
    (bg,) = list((npz_pair / "runs" / "background").glob("*/checkpoint.pt"))
    state = torch.load(bg, weights_only=False)
    assert state["finished"] and state["config"]["training"]["mutation_rate"] == 0.2 and state["step"] == 8
    table = pd.read_parquet(directory / "scores.parquet")
    assert np.allclose(table["likelihood_ratio"], table["log_likelihood"] - table["background_log_likelihood"])
    # another OOD run with the same foreground configuration finds the background model instead of training it
    cfg2 = _ratio_cfg(npz_pair)
    cfg2["data"]["ood"] = f"npz:{npz_pair / 'val_ood.npz'}"
    run2 = run_ood(cfg2, echo=False)
    assert "background model" in (run2 / "run.log").read_text() and "found in" in (run2 / "run.log").read_text()
    assert len(list((npz_pair / "runs" / "background").glob("*/checkpoint.pt"))) == 1


def test_selection_on_a_validation_ood_set_is_labelled_and_never_the_test_set(npz_pair):
    import json
    from genood.ood.runner import run_ood
    cfg = _ratio_cfg(npz_pair, selection="validation_ood", grid=[[0.1, 0.0], [0.3, 0.0]],
                     validation_ood=f"npz:{npz_pair / 'val_ood.npz'}")
    directory = run_ood(cfg, echo=False)
    entry = json.loads((directory / "metrics.json").read_text())["likelihood_ratio"]
    assert entry["selection"].startswith("validation_ood:") and entry["label_free"] is False
    assert set(entry["validation_auroc"]) == {"mu=0.1,lambda=0", "mu=0.3,lambda=0"}
    best = max(entry["validation_auroc"], key=entry["validation_auroc"].get)
    assert best == f"mu={entry['mutation_rate']:g},lambda=0"
    bad = _ratio_cfg(npz_pair, selection="validation_ood", validation_ood=f"npz:{npz_pair / 'ood.npz'}")
    with pytest.raises(runconfig.ConfigError, match="a test OOD set itself"):
        run_ood(bad, echo=False)


# --- score norms (MSMA) -----------------------------------------------------------------------------------

def test_score_norms_match_the_closed_form_score_of_a_gaussian():
    from genood.models.diffusion import VPSDE
    from genood.ood.scores.score_norms import levels
    from tests.test_diffusion import GaussianScoreModel, _random_cov

    class Scaled(GaussianScoreModel):
        def to_model_space(self, x):
            return x

    g = Scaled(VPSDE(0.1, 20.0), _random_cov(4, 0))
    cfg = {"score_norms": {"levels": 3, "t_min": 0.01, "t_max": 0.5}}
    y = torch.randn(6, 4, dtype=torch.float64)
    got = score_registry.get("score_norms").fn(g, y, {"cfg": cfg})
    assert got.shape == (6, 3)
    for k, t in enumerate(levels(cfg)):
        cov = g.marginal_cov(float(t))
        want = torch.linalg.solve(cov, y.T).T.norm(dim=1)  # |grad log N(y; 0, cov)| = |cov^-1 y|
        assert torch.allclose(got[:, k], want, rtol=1e-6)
    assert score_registry.get("score_norms").column_names(cfg) == ["score_norms@t=0.01", "score_norms@t=0.0707",
                                                                   "score_norms@t=0.5"]
    assert score_registry.get("score_norms@t=0.5").higher_is_in is False  # components share the orientation


def test_msma_density_over_the_score_norm_vector_is_one_combined_entry():
    rng = np.random.default_rng(6)
    cols = [f"score_norms@t={t}" for t in ("0.01", "0.1", "1")]
    parts = {s: rng.normal(0, 1, (200, 3)) for s in ("in_train", "in_val", "in_test")}
    parts["ood"] = rng.normal(0, 1, (200, 3)) + np.array([3.0, 0.0, -3.0])  # off the in-distribution cloud
    table = pd.concat([pd.DataFrame({"split": s, "dataset": "d", "index": np.arange(200),
                                     "log_likelihood": np.zeros(200), **{c: v[:, i] for i, c in enumerate(cols)}})
                       for s, v in parts.items()], ignore_index=True)
    cfg = {"combined": {"sets": [["score_norms"]], "density": "gmm", "max_components": 3, "fisher": False, "min_p": False},
           "ood": {"bootstrap": 0}, "run": {"seed": 0}}
    m = evaluate(table, cols, {}, cfg)
    assert m["density:score_norms"]["scores"] == cols and m["density:score_norms"]["auroc"] > 0.95


def test_a_diffusion_run_scores_every_baseline_it_provides(tmp_path):
    """End to end through the runner with a tiny diffusion: vector score columns, MSMA, derivative norm, complexity."""
    import json
    from genood.ood.runner import run_ood
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 120, size=(80, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "ood.npz", images=(60 + rng.integers(0, 3, size=(40, 8, 8))).astype(np.uint8))
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs")},
        "data": {"in_distribution": f"npz:{tmp_path / 'in.npz'}", "ood": f"npz:{tmp_path / 'ood.npz'}", "val_fraction": 0.2},
        "model": {"family": "diffusion", "channels": [8, 8], "norm_groups": 4}, "tracking": {"wandb": False},
        "training": {"steps": 10, "batch_size": 16, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood", "score_norms", "derivative_norm", "complexity", "typicality"],
                "n_generated": 0, "png": False, "bootstrap": 20},
        "ode": {"rtol": 1e-3, "atol": 1e-3},
        "score_norms": {"levels": 3},
        "combined": {"sets": [["score_norms"], ["log_likelihood", "complexity"]], "max_components": 2}})
    directory = run_ood(cfg, echo=False)
    metrics = json.loads((directory / "metrics.json").read_text())
    norms = [k for k in metrics if k.startswith("score_norms@")]
    assert len(norms) == 3 and "density:score_norms" in metrics and metrics["density:score_norms"]["label_free"]
    for key in ("derivative_norm", "complexity", "typicality", "minp:log_likelihood+complexity"):
        assert 0.0 <= metrics[key]["auroc"] <= 1.0 and "auroc_ci" in metrics[key], key
    table = pd.read_parquet(directory / "scores.parquet")
    assert set(norms) <= set(table.columns) and table.loc[:, norms].notna().all().all()
