"""Real data, real nflows, real W&B (offline): a tiny flow on Fashion-MNIST shows the paradox."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from genood import runconfig
from genood.ood import metrics as M
from genood.ood.runner import run_ood
from genood.reports.aggregate import collect
from tests.conftest import needs_real_data


@needs_real_data
def test_fmnist_flow_scores_mnist_higher(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = runconfig.load(
        "configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml",
        [f"run.runs_root={tmp_path}", "training.steps=80", "training.batch_size=32", "training.progress=false",
         "training.checkpoint_every=40", "ood.n_in_train=200", "ood.n_in_val=200", "ood.n_in_test=400", "ood.n_ood=400",
         "ood.n_generated=100", "ood.png=false", "tracking.wandb=true", "tracking.mode=offline"])
    directory = run_ood(cfg, echo=False)

    for name in ("config.yaml", "checkpoint.pt", "scores.parquet", "metrics.json", "run.log",
                 "figures/likelihood_histogram.html", "figures/roc.html", "figures/samples.png"):
        assert (directory / name).exists(), name
    assert yaml.safe_load((directory / "config.yaml").read_text()) == cfg
    prov = json.loads((directory / "provenance.json").read_text())
    assert prov["packages"]["nflows"] == "0.14" and "git_dirty" in prov and "git_commit" in prov
    assert any(path.endswith("t10k-images-idx3-ubyte") and len(digest) == 64 for path, digest in prov["data_files"].items())
    assert list((directory / "wandb").glob("offline-run-*")), "W&B should have logged an offline run"

    table = pd.read_parquet(directory / "scores.parquet")
    assert list(table.columns[:3]) == ["split", "dataset", "index"]
    counts = table["split"].value_counts().to_dict()
    assert counts == {"in_train": 200, "in_val": 200, "in_test": 400, "ood": 400, "generated": 100}
    assert set(table.loc[table.split == "ood", "dataset"]) == {"mnist"}
    assert set(table.loc[table.split == "in_test", "dataset"]) == {"fmnist"}
    ll = table["log_likelihood"].to_numpy()
    assert np.allclose(table["bits_per_dim"], -ll / (784 * np.log(2)))

    metrics = json.loads((directory / "metrics.json").read_text())
    s_in = table.loc[table.split == "in_test", "log_likelihood"]
    s_ood = table.loc[table.split == "ood", "log_likelihood"]
    entry = metrics["log_likelihood"]
    assert {k: entry[k] for k in M.detection_metrics(s_in, s_ood)} == M.detection_metrics(s_in, s_ood)
    assert entry["label_free"] and entry["bootstrap"] == 1000 and entry["confidence"] == 0.95
    for key in M.METRIC_KEYS:  # intervals from the same points, seeded: they bracket the point estimate
        assert entry[f"{key}_ci"][0] <= entry[key] <= entry[f"{key}_ci"][1], key
    assert entry["auroc_ci"] == M.percentile_interval(M.bootstrap_metrics(s_in, s_ood, 1000, seed=cfg["run"]["seed"])["auroc"], 0.95)
    assert metrics["bits_per_dim"]["auroc"] == pytest.approx(metrics["log_likelihood"]["auroc"])
    assert metrics["log_likelihood"]["auroc"] < 0.5, "the likelihood paradox: MNIST should score higher"
    assert "generated_vs_ood/log_likelihood" in metrics

    # rerunning reuses the finished checkpoint and reproduces the scores exactly
    again = run_ood(dict(cfg, tracking=dict(cfg["tracking"], wandb=False)), echo=False)
    assert again == directory
    pd.testing.assert_frame_equal(pd.read_parquet(again / "scores.parquet"), table)

    frame, unfinished = collect([tmp_path])
    row = frame[frame.detector == "log_likelihood"].iloc[0]
    assert (row.in_dataset, row.ood_dataset, unfinished) == ("fmnist", "mnist", 0)
    assert row.auroc == metrics["log_likelihood"]["auroc"]


def test_resolution_change_scores_an_rgb_set_with_a_greyscale_model(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "grey.npz", images=rng.integers(0, 60, size=(60, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, size=(30, 16, 16, 3), dtype=np.uint8))
    from tests.conftest import TINY_MODEL
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs")},
        "data": {"in_distribution": f"npz:{tmp_path / 'grey.npz'}", "ood": f"npz:{tmp_path / 'rgb.npz'}"},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 4, "batch_size": 8, "progress": False, "sample_grid": 0},
        "ood": {"n_generated": 0, "figures": False}})
    directory = run_ood(cfg, echo=False)
    table = pd.read_parquet(directory / "scores.parquet")
    assert (table.split == "ood").sum() == 6 and (table.split == "in_test").sum() == 12
    assert np.isfinite(table.log_likelihood).all()


def test_lid_stage_writes_curves_dual_metrics_and_figures(tmp_path):
    """The LID path end to end on small generated images (D = 64): columns, curves, metrics, figures."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 120, size=(80, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "ood.npz", images=np.full((40, 8, 8), 60, dtype=np.uint8) + rng.integers(0, 3, size=(40, 8, 8), dtype=np.uint8))
    from tests.conftest import TINY_MODEL
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs")},
        "data": {"in_distribution": f"npz:{tmp_path / 'in.npz'}", "ood": f"npz:{tmp_path / 'ood.npz'}", "val_fraction": 0.1},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 30, "batch_size": 16, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood", "lid"], "n_generated": 6, "png": False},
        "lid": {"n_per_split": 5, "log_tau_grid": [-8.0, 2.0, 11], "calibration": "lpca", "lpca_k": 5}})
    directory = run_ood(cfg, echo=False)
    table = pd.read_parquet(directory / "scores.parquet")
    has = table.dropna(subset=["lid"])
    assert has.groupby("split").size().to_dict() == {"in_train": 5, "in_val": 5, "in_test": 5, "ood": 5, "generated": 5}
    assert has["lid"].between(0, 64).all() and (has["lid"] == has["lid"].round()).all()
    curves = pd.read_parquet(directory / "lid_curves.parquet")
    assert len(curves) == 25 * 11 and set(curves.columns) == {"split", "dataset", "index", "log_tau", "lid"}
    # LID is non-increasing in tau for every point
    for _, c in curves.groupby(["split", "index"]):
        assert (np.diff(c.sort_values("log_tau")["lid"].to_numpy()) <= 0).all()
    metrics = json.loads((directory / "metrics.json").read_text())
    grid = np.linspace(-8, 2, 11)
    assert metrics["lid"]["log_tau"] in grid and metrics["dual_threshold"]["optimistic"] is True
    for key in ("lid", "dual_threshold", "dual_threshold_fixed", "generated_vs_ood/dual_threshold"):
        assert 0.0 <= metrics[key]["auroc"] <= 1.0 and metrics[key]["n_in"] == 5, key
    # the envelope over both thresholds is never worse than likelihood alone on the same points
    same = table.dropna(subset=["lid"])
    ll_only = M.auroc(same.loc[same.split == "in_test", "log_likelihood"], same.loc[same.split == "ood", "log_likelihood"])
    assert metrics["dual_threshold"]["auroc"] >= ll_only - 1e-12
    for fig in ("lid_curves.html", "lid_vs_likelihood.html"):
        assert (directory / "figures" / fig).exists()
    # the aggregate table carries the dual-threshold rows next to the likelihood
    frame, _ = collect([tmp_path / "runs"])
    assert {"log_likelihood", "lid", "dual_threshold", "dual_threshold_fixed"} <= set(frame.detector)
    # the spectra stay as an artifact, and the same run again reuses them instead of new Jacobians
    assert sorted(p.name for p in (directory / "lid_spectra").iterdir()) == [
        "generated.npz", "in_test.npz", "in_train.npz", "in_val.npz", "ood.npz"]
    assert run_ood(cfg, echo=False) == directory
    log = (directory / "run.log").read_text()
    assert all(f"resuming {s} from 5/5 points" in log for s in ("in_train", "in_val", "in_test", "ood", "generated"))
    # the model's samples are drawn once (a PixelCNN++ spends minutes on them) and the rerun reads them back
    assert log.count("generated: sampling 6 images from the model") == 1
    assert "generated: reusing 6 samples saved in" in log
    assert json.loads((directory / "metrics.json").read_text()) == metrics


def test_a_split_smaller_than_asked_is_scored_whole_and_the_log_says_so(tiny_cfg):
    """ood.n_in_val above what data.val_fraction leaves: every in_val point is scored, and run.log names the
    numbers (a user asking for 1,000 LID points a split must see that MNIST's in_val holds 400)."""
    import re

    cfg = dict(tiny_cfg, ood=dict(tiny_cfg["ood"], n_in_val=10**6, n_generated=0, scores=["log_likelihood"]))
    directory = run_ood(cfg, echo=False)
    log = (directory / "run.log").read_text()
    said = re.search(r"in_val: ood\.n_in_val asks for 1,000,000 points; (\S+) holds ([\d,]+) in data\.val_fraction", log)
    assert said, log
    table = pd.read_parquet(directory / "scores.parquet")
    assert (table.split == "in_val").sum() == int(said.group(2).replace(",", ""))
    assert "in_test: ood.n_in_test" not in log  # 16 asked, fewer than the split holds: nothing to say
    # null (documented as "all of it") asks for every in_val point: the same rows, and nothing to say
    cfg = runconfig.resolve(dict(cfg, ood=dict(cfg["ood"], n_in_val=None)))
    directory = run_ood(cfg, echo=False)
    table_all = pd.read_parquet(directory / "scores.parquet")
    assert sorted(table_all[table_all.split == "in_val"]["index"]) == sorted(table[table.split == "in_val"]["index"])
    assert "ood.n_in_val asks for" not in (directory / "run.log").read_text()
