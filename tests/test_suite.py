"""The OOD suite: model-free baselines, one run over several OOD sets (in-distribution work once), the
group summary and the honest selection."""
from __future__ import annotations

import json

import yaml

import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig
from genood.ood import scores as score_registry
from genood.ood.detectors import TaskView
from genood.reports import suite
from tests.conftest import needs_real_data


def test_pixel_statistics_against_numpy():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (6, 1, 5, 5)).astype(np.float64)
    stored[0] = 0.0
    stored[1, 0, :2] = 255.0
    x = torch.from_numpy(stored + rng.random(stored.shape))  # dequantized: floor gives the stored bytes back
    flat = stored.reshape(6, -1)
    cache: dict = {}
    mean = score_registry.get("intensity_mean").fn(None, x, cache).numpy()
    std = score_registry.get("intensity_std").fn(None, x, cache).numpy()
    sat = score_registry.get("saturation").fn(None, x, cache).numpy()
    assert np.allclose(mean, flat.mean(axis=1)) and np.allclose(std, flat.std(axis=1))
    assert np.allclose(sat, ((flat == 0) | (flat == 255)).mean(axis=1))
    assert all(score_registry.model_free(n) for n in ("intensity_mean", "intensity_std", "saturation", "codec_bits_per_dim"))
    assert not score_registry.model_free("log_likelihood") and not score_registry.model_free("complexity")


def _view(val, pos, neg, names):
    frame = lambda a: pd.DataFrame(a, columns=names)
    return TaskView(frame(pos), frame(neg), frame(val[:2]), frame(val), list(names), {},
                    {"ood": {"bootstrap": 0}, "run": {"seed": 0}})


def test_baseline_detectors_are_two_sided_pvalues_against_in_val():
    from genood.ood.baselines import baselines

    rng = np.random.default_rng(1)
    names = ["intensity_mean", "saturation"]
    val, pos = rng.normal(size=(50, 2)), rng.normal(size=(30, 2))
    neg = np.column_stack([rng.normal(4.0, 1.0, 20), rng.normal(-4.0, 1.0, 20)])  # OOD in opposite tails
    out = baselines(_view(val, pos, neg, names))
    assert set(out) == {"baseline:intensity_mean", "baseline:saturation", "baseline:all"}

    def brute(v, ref):  # two-sided p-value by counting, an exponential tail past in_val's extremes
        srt = np.sort(ref)  # scale: the mean excess of the ceil(sqrt(50)) = 8 most extreme values over the 9th
        left = (1 + np.sum(ref <= v)) / (len(ref) + 1) * np.exp(-max(srt[0] - v, 0) / np.mean(srt[8] - srt[:8]))
        right = (1 + np.sum(ref >= v)) / (len(ref) + 1) * np.exp(-max(v - srt[-1], 0) / np.mean(srt[-8:] - srt[-9]))
        return np.log(min(1.0, 2 * min(left, right)))
    for j, n in enumerate(names):
        got_pos, got_neg = out[f"baseline:{n}"]["_values"]
        assert np.allclose(got_pos, [brute(v, val[:, j]) for v in pos[:, j]])
        assert np.allclose(got_neg, [brute(v, val[:, j]) for v in neg[:, j]])
        assert out[f"baseline:{n}"]["auroc"] > 0.95  # both tails are caught
    fisher_neg = out["baseline:all"]["_values"][1]
    assert np.allclose(fisher_neg, [2 * sum(brute(r[j], val[:, j]) for j in range(2)) for r in neg])


def test_ood_sets_config_forms_and_errors():
    assert runconfig.ood_sets("mnist") == [("mnist", "real")]
    assert runconfig.ood_sets(["mnist", "fmnist:hflip", "fmnist:uniform", "fmnist:classes=5-9"]) == [
        ("mnist", "real"), ("fmnist:hflip", "transform"), ("fmnist:uniform", "far"), ("fmnist:classes=5-9", "near")]
    assert runconfig.ood_sets({"far": ["mnist:invert"], "real": "fmnist"}) == [("mnist:invert", "far"), ("fmnist", "real")]
    for bad, phrase in [({"farr": ["x"]}, "unknown group 'farr'"), ([], "non-empty list"), (["a", "a"], "twice"),
                        ({"far": [3]}, "data.ood.far")]:
        with pytest.raises(runconfig.ConfigError, match=phrase) as err:
            runconfig.resolve({"data": {"ood": bad}})
        assert "\n" not in str(err.value)
    cfg = runconfig.resolve({"data": {"ood": ["mnist", "fmnist:hflip"]}})
    assert runconfig.run_name(cfg, "ood").split("-vs-")[1].startswith("suite2-")


def _frame(rows):
    base = {"model": "m", "in_dataset": "a", "label_free": True, "optimistic": False, "per_batch": False, "seed": 0,
            "group": "g", "n_in": 10, "n_ood": 10, "run": "r", "aupr_in": None, "aupr_out": None, "fpr95": None}
    frame = pd.DataFrame([dict(base, **r) for r in rows])
    for m in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        frame[f"{m}_lo"] = frame["auroc"] - 0.01 if m == "auroc" else None
        frame[f"{m}_hi"] = frame["auroc"] + 0.01 if m == "auroc" else None
    return frame


SUITE_ROWS = [
    # selection sets (transform): d1 has the better worst case, d2 the better mean
    *({"ood_dataset": s, "ood_group": "transform", "detector": d, "auroc": v, "model_free": False}
      for s, d, v in [("a:hflip", "d1", 0.80), ("a:blur=1", "d1", 0.82), ("a:hflip", "d2", 0.99), ("a:blur=1", "d2", 0.70),
                      ("a:blur=2", "d1", 0.90), ("a:blur=2", "d2", 0.99)]),
    *({"ood_dataset": s, "ood_group": "transform", "detector": "mf", "auroc": v, "model_free": True}
      for s, v in [("a:hflip", 0.5), ("a:blur=1", 0.6), ("a:blur=2", 0.7)]),
    # held out (far, real): d2 would win here, which must not matter
    *({"ood_dataset": s, "ood_group": g, "detector": d, "auroc": v, "model_free": False}
      for s, g, d, v in [("a:uniform", "far", "d1", 0.95), ("a:uniform", "far", "d2", 1.0),
                         ("b", "real", "d1", 0.60), ("b", "real", "d2", 0.99)]),
    *({"ood_dataset": s, "ood_group": g, "detector": "mf", "auroc": v, "model_free": True}
      for s, g, v in [("a:uniform", "far", 0.99), ("b", "real", 0.70)]),
]


def test_selection_sees_only_the_selection_sets_and_picks_the_best_worst_case():
    sets = suite.per_set(_frame(SUITE_ROWS))
    given = []

    def spy(rows):
        given.append(rows)
        return suite.select(rows)
    picked = suite.selection(sets, ["transform"], chooser=spy)["m"]
    assert len(given) == 1 and set(given[0]["ood_group"]) == {"transform"}
    assert set(given[0]["ood_dataset"]) == {"a:hflip", "a:blur=1", "a:blur=2"}
    assert picked["detector"] == "d1" and picked["worst"] == pytest.approx(0.80)  # best worst case, not best mean
    assert picked["baseline"] == "mf" and picked["baseline_worst"] == pytest.approx(0.5)
    held = picked["held_out"]
    assert set(held["ood_dataset"]) == {"a:uniform", "b"} and set(held["detector"]) == {"d1", "mf"}
    d1 = held[held["detector"] == "d1"].set_index("ood_dataset")
    assert bool(d1.loc["a:uniform", "beats_baselines"]) is False and bool(d1.loc["b", "beats_baselines"]) is False
    # the ceiling: per held-out set the best learned detector (with OOD labels), marked optimistic
    ceil = picked["ceiling"].set_index(["in_dataset", "ood_group"])
    assert set(ceil["optimistic"]) == {True}
    far, real = ceil.xs("far", level="ood_group").iloc[0], ceil.xs("real", level="ood_group").iloc[0]
    assert far["mean"] == pytest.approx(1.0) and real["mean"] == pytest.approx(0.99) and real["worst_set"] == "b"
    assert any(line.startswith("  ceiling (optimistic") and "mean 0.990" in line for line in suite.selection_lines({"m": picked}))
    # and over the selection sets: per set the best of d1/d2 (hflip 0.99, blur=1 0.82, blur=2 0.99), which bounds
    # the chosen detector's mean and worst there
    sel = picked["selection_ceiling"].set_index(["in_dataset", "ood_group"]).xs("transform", level="ood_group").iloc[0]
    assert sel["worst"] == pytest.approx(0.82) and sel["worst_set"] == "a:blur=1" and sel["n_sets"] == 3
    assert sel["mean"] == pytest.approx((0.99 + 0.82 + 0.99) / 3) and bool(sel["optimistic"])
    assert sel["mean"] >= picked["mean"] and sel["worst"] >= picked["worst"]
    assert any(line.startswith("  selection sets' ceiling") for line in suite.selection_lines({"m": picked}))
    # selecting on a named set works too; a token naming nothing is one sentence
    assert suite.selection(sets, ["a:hflip"])["m"]["detector"] == "d2"
    with pytest.raises(suite.SelectionError, match="names no group or OOD set") as err:
        suite.selection(sets, ["nearr"])
    assert "\n" not in str(err.value)


def test_group_summary_against_a_direct_computation():
    sets = suite.per_set(_frame(SUITE_ROWS))
    g = suite.group_summary(sets).set_index(["ood_group", "detector"])
    vals = [0.80, 0.82, 0.90]
    assert g.loc[("transform", "d1"), "mean"] == pytest.approx(np.mean(vals))
    assert g.loc[("transform", "d1"), "worst"] == pytest.approx(0.80) and g.loc[("transform", "d1"), "worst_set"] == "a:hflip"
    assert g.loc[("transform", "d1"), "worst_lo"] == pytest.approx(0.79)
    assert g.loc[("transform", "d1"), "mean_hi"] == pytest.approx(np.mean(vals) + 0.01)
    assert g.loc[("transform", "d1"), "n_sets"] == 3


@needs_real_data
def test_one_run_scores_every_ood_set_against_in_distribution_work_done_once(tiny_cfg, monkeypatch):
    from genood.ood import runner

    calls, fits = [], []
    real_score, real_fit = runner.score_images, runner.fit

    def counting_score(model, x, names, *a, desc="score", **k):
        calls.append(desc)
        return real_score(model, x, names, *a, desc=desc, **k)

    def counting_fit(*a, **k):
        fits.append(1)
        return real_fit(*a, **k)
    monkeypatch.setattr(runner, "score_images", counting_score)
    monkeypatch.setattr(runner, "fit", counting_fit)
    sets = ["mnist", "fmnist:hflip", "fmnist:uniform"]
    cfg = runconfig.resolve(dict(tiny_cfg, data=dict(tiny_cfg["data"], ood=sets),
                                 ood=dict(tiny_cfg["ood"], scores=["log_likelihood", "typicality"], bootstrap=0,
                                          baselines=["intensity_mean"])))
    directory = runner.run_ood(cfg, echo=False)
    assert len(fits) == 1
    assert sorted(calls) == sorted(["in_train", "in_val", "in_test", "generated", "ood@mnist", "ood@fmnist_hflip",
                                    "ood@fmnist_uniform"])
    metrics = json.loads((directory / "metrics.json").read_text())
    measured = json.loads((directory / "semantics.json").read_text())["sets"]  # the transform, measured
    assert [m["ood_dataset"] for m in measured] == ["fmnist:hflip"]
    for name in sets:
        entry = metrics[f"{name}::log_likelihood"]
        declared = runconfig.ood_sets(name)[0][1]
        want = measured[0]["group"] if declared == "transform" else declared
        assert want in ("shift", "corruption", "real", "far")
        assert entry["ood_dataset"] == name and entry["ood_group"] == want
    assert metrics["fmnist:uniform::baseline:intensity_mean"]["model_free"] is True
    table = pd.read_parquet(directory / "scores.parquet")
    assert set(table.loc[table.split == "ood", "dataset"]) == set(sets)

    # the same set scored alone (same model) gives the same numbers
    single = runconfig.resolve(dict(cfg, data=dict(cfg["data"], ood="fmnist:hflip"),
                                    ood=dict(cfg["ood"], checkpoint=str(directory))))
    alone = json.loads((runner.run_ood(single, echo=False) / "metrics.json").read_text())
    for key in ("log_likelihood", "typicality", "baseline:intensity_mean"):
        assert alone[key]["auroc"] == metrics[f"fmnist:hflip::{key}"]["auroc"]


def test_wandb_summaries_carry_the_set_and_its_group():
    from genood.ood.runner import _summaries

    metrics = {"fmnist:hflip::log_likelihood": {"auroc": 0.5, "ood_dataset": "fmnist:hflip", "ood_group": "transform"},
               "mnist::generated_vs_ood/log_likelihood": {"auroc": 0.9, "ood_dataset": "mnist", "ood_group": "real"}}
    got = _summaries(metrics, several=True)
    assert got["ood/transform/fmnist:hflip/log_likelihood/auroc"] == 0.5
    assert got["ood/real/mnist/generated_vs_ood/log_likelihood/auroc"] == 0.9
    single = _summaries({"log_likelihood": {"auroc": 0.4, "ood_dataset": "mnist", "ood_group": "real"}}, several=False)
    assert single["log_likelihood/auroc"] == 0.4 and single["log_likelihood/ood_dataset"] == "mnist"


def test_data_cli_lists_the_derivations(capsys):
    from genood.data.__main__ import main

    assert main(["derived"]) == 0
    text = capsys.readouterr().out
    for name in ("classes=", "hflip", "noise=", "uniform", "blend="):
        assert name in text


def test_suite_report_and_console_views():
    from genood.reports import report
    from genood.reports.aggregate import format_suite

    frame = _frame(SUITE_ROWS)
    text = " ".join(format_suite(frame, ["transform"]).split())  # lines are wrapped for the terminal
    assert "a:transform" in text and "mean/worst" in text and "selected on transform" in text
    assert "d1 (worst 0.800" in text and "model-free baseline chosen the same way: mf" in text
    assert format_suite(frame[frame["ood_group"] == "real"].assign(ood_group="real"), None) == ""  # one pair: no suite
    page = report.build(frame, [], select_on=["transform"])
    assert "OOD suite" in page and "Selected detector" in page and "AUROC against shift strength" in page
    assert "0.600!" in page  # d1 on b: not above the best model-free baseline there (0.70)


@needs_real_data
def test_lid_only_for_the_ood_groups_it_is_asked_for(tiny_cfg):
    from genood.ood import runner

    cfg = runconfig.resolve(dict(tiny_cfg, data=dict(tiny_cfg["data"], ood=["mnist", "fmnist:uniform"]),
                                 ood=dict(tiny_cfg["ood"], scores=["log_likelihood", "lid"], bootstrap=0, baselines=[]),
                                 lid=dict(tiny_cfg["lid"], n_per_split=3, ood_groups=["real"], batch_points=3)))
    directory = runner.run_ood(cfg, echo=False)
    table = pd.read_parquet(directory / "scores.parquet")
    ood = table[table.split == "ood"]
    assert ood.loc[ood.dataset == "mnist", "lid"].notna().sum() == 3
    assert ood.loc[ood.dataset == "fmnist:uniform", "lid"].isna().all()
    assert table.loc[table.split == "in_val", "lid"].notna().sum() == 3
    metrics = json.loads((directory / "metrics.json").read_text())
    assert "mnist::dual_threshold_fixed" in metrics and "fmnist:uniform::dual_threshold_fixed" not in metrics
    with pytest.raises(runconfig.ConfigError, match="lid.ood_groups"):
        runconfig.resolve({"lid": {"ood_groups": ["farr"]}})


def test_variants_of_one_model_stay_separate_rows_and_seeds_do_not(tmp_path):
    """Runs sharing a model label but differing in a configuration key (negative training, a coupling's width)
    are different rows of the aggregate; runs differing in the seed or the OOD sets only are one configuration."""
    from genood.reports.aggregate import collect_runs

    def run(name, seed=0, negative=None, mid=64, ood="mnist", extra=None):
        cfg = runconfig.resolve({"preset": "realnvp_tiny", "run": {"seed": seed},
                                 "model": {"mid_channels": mid}, "training": {"negative_ood": negative},
                                 "data": {"in_distribution": "fmnist", "ood": ood}}, [])
        cfg.update(extra or {})
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(runconfig.dump(cfg))
        (d / "metrics.json").write_text(json.dumps({"log_likelihood": {"auroc": 0.1 + 0.01 * len(name)}}))
        return d

    dirs = [run("a"), run("bb", seed=1), run("ccc", negative="fmnist:noise=32"), run("dddd", mid=8),
            run("eeeee", ood="fmnist:hflip", extra={"added_later": {"x": 1}})]
    frame, unfinished = collect_runs(dirs)
    labels = dict(zip(frame["run"], frame["model"]))
    base = "realnvp/resnet/realnvp_tiny"
    assert unfinished == 0
    assert labels["a"] == labels["bb"] == labels["eeeee"] == f"{base} mid_channels=64,negative_ood=None"
    assert labels["ccc"] == f"{base} mid_channels=64,negative_ood=fmnist:noise=32"
    assert labels["dddd"] == f"{base} mid_channels=8,negative_ood=None"
    alone, _ = collect_runs(dirs[:2])  # one configuration (two seeds): the plain label
    assert set(alone["model"]) == {base}
    # one checkpoint per in-distribution (the zoo's recipe trained on each dataset) is one model; two checkpoints
    # on the same in-distribution are two
    zoo_runs = []
    for name, ind, ckpt in (("z1", "fmnist", "zoo:a_fmnist"), ("z2", "mnist", "zoo:a_mnist"),
                            ("z3", "fmnist", "zoo:a_fmnist")):
        d = run(name)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["data"]["in_distribution"], cfg["ood"]["checkpoint"] = ind, ckpt
        (d / "config.yaml").write_text(runconfig.dump(cfg))
        zoo_runs.append(d)
    pooled, _ = collect_runs(zoo_runs)
    assert set(pooled["model"]) == {base}
    d = run("z4")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["ood"]["checkpoint"] = "zoo:b_fmnist"
    (d / "config.yaml").write_text(runconfig.dump(cfg))
    split, _ = collect_runs(zoo_runs + [d])
    assert len(set(split["model"])) == 3  # then every checkpoint is a row of its own


def test_selection_is_made_again_on_each_training_seed():
    # in-distribution a trained with seeds 0 and 1 (seed 0: SUITE_ROWS, d1 has the best worst case; seed 1: d2 has),
    # in-distribution c with seed 0 only: c's rows join both seeds' selections
    seed1 = {("a:hflip", "d1"): 0.70, ("a:blur=1", "d1"): 0.85, ("a:blur=2", "d1"): 0.90, ("a:hflip", "d2"): 0.95,
             ("a:blur=1", "d2"): 0.90, ("a:blur=2", "d2"): 0.93, ("a:uniform", "d1"): 0.96, ("a:uniform", "d2"): 0.98,
             ("b", "d1"): 0.65, ("b", "d2"): 0.97}
    rows = list(SUITE_ROWS)
    rows += [dict(r, seed=1, auroc=seed1.get((r["ood_dataset"], r["detector"]), r["auroc"])) for r in SUITE_ROWS]
    rows += [{"in_dataset": "c", "ood_dataset": "c:hflip", "ood_group": "transform", "detector": d, "auroc": 0.88,
              "model_free": False} for d in ("d1", "d2")]
    given = []

    def spy(chosen):
        given.append(chosen)
        return suite.select(chosen)
    # a second model run with one seed only: selected in every seed's pass, but not listed as if it had seeds
    table = suite.seed_selections(_frame(rows + [dict(r, model="m2") for r in SUITE_ROWS]), ["transform"], chooser=spy)
    assert set(table["model"]) == {"m"}
    given = [g for g in given if set(g["model"]) == {"m"}]
    assert len(given) == 2 and all("c:hflip" in set(g["ood_dataset"]) for g in given)
    assert set(given[1][(given[1]["ood_dataset"] == "a:hflip") & (given[1]["detector"] == "d1")]["auroc"]) == {0.70}
    picks = table.groupby("seed")["detector"].first().to_dict()
    assert picks == {0: "d1", 1: "d2"}
    one = table[(table["seed"] == 1) & (table["ood_group"] == "real")].iloc[0]
    assert one["mean"] == pytest.approx(0.97) and one["selection_worst"] == pytest.approx(0.88)
    zero = table[(table["seed"] == 0) & (table["ood_group"] == "far")].iloc[0]
    assert zero["worst"] == pytest.approx(0.95) and zero["worst_set"] == "a:uniform"
    # one seed only: nothing to repeat; the console view names the per-seed block only when seeds repeat
    assert suite.seed_selections(_frame(SUITE_ROWS), ["transform"]).empty
    text = " ".join(suite.format_suite(_frame(rows), ["transform"]).split())
    assert "Selection per training seed" in text and "m, seed 1: d2 (selection worst 0.880" in text
    assert "Selection per training seed" not in suite.format_suite(_frame(SUITE_ROWS), ["transform"])
    from genood.reports import report
    assert "Selection per training seed" in report.build(_frame(rows), [], select_on=["transform"])
