"""Synthetic manifolds as datasets through the command line, LID-error metrics against the truth,
and the runner's resumable per-batch scoring (diffusion ODE likelihoods)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig
from genood.data.registry import UnknownDatasetError, load_split
from genood.models.registry import build_model
from genood.ood.metrics import lid_error_metrics
from genood.ood.runner import score_images
from genood.ood.stages import model_digest
from tests.conftest import ROOT


def test_manifold_datasets_share_the_embedding_and_carry_their_lid():
    train = load_split("manifold:sphere:d=2,dim=7,n=300,n_test=50", "train")
    test = load_split("manifold:sphere:d=2,dim=7,n=300,n_test=50", "test")
    assert train.images.shape == (300, 7) and test.images.shape == (50, 7) and train.shape_chw == (7,)
    assert train.images.dtype == np.float32 and (train.true_lid == 2).all()
    both = np.concatenate([train.images, test.images]).astype(np.float64)
    sv = np.linalg.svd(both, compute_uv=False)
    assert (sv > 1e-5 * sv[0]).sum() == 3  # a 2-sphere spans 3 dimensions, the same 3 for both splits
    assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    lolly = load_split("manifold:lollipop:dim=6,n=400", "train")
    assert set(np.unique(lolly.true_lid)) == {1, 2}
    with pytest.raises(UnknownDatasetError, match="key=value"):
        load_split("manifold:sphere:dims=3", "train")
    with pytest.raises(UnknownDatasetError, match="Unknown manifold"):
        load_split("manifold:torus", "train")


def test_lid_error_metrics_match_a_direct_computation():
    from scipy.stats import spearmanr

    truth = np.array([1, 1, 2, 2, 2, 3])
    est = np.array([1.4, 0.2, 2.0, 3.5, np.nan, 2.9])
    got = lid_error_metrics(est, truth)
    keep = ~np.isnan(est)
    err = np.abs(est[keep] - truth[keep])
    assert got["mae"] == pytest.approx(err.mean()) and got["n"] == 5
    assert got["within_1"] == pytest.approx(np.mean(err <= 1))
    assert got["spearman"] == pytest.approx(spearmanr(est[keep], truth[keep]).statistic)
    assert got["mae_by_true_lid"]["2"] == pytest.approx((0.0 + 1.5) / 2)


def test_flow_lid_run_on_a_manifold_writes_its_error_against_the_truth(tmp_path):
    """Through main_ood.py: a tabular flow on a 2-d subspace of R^6, Jacobian LID, lid_error in metrics.json."""
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "main_ood.py", "preset=flow_tabular",
                          "data.in_distribution=manifold:subspace:d=2,dim=6,n=1500",
                          "data.ood=manifold:sphere:d=1,dim=6,n=300,seed=3", "training.steps=300",
                          "training.progress=false", "ood.scores=[log_likelihood,lid]", "ood.n_in_train=64",
                          "ood.n_in_test=64", "ood.n_ood=64", "ood.n_generated=0", "lid.n_per_split=16",
                          "lid.method=jacobian", "lid.calibration=lpca", "lid.lpca_points=500", "tracking.wandb=false",
                          f"run.runs_root={runs}", "run.num_threads=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run = next(runs.glob("single/*"))
    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.read_parquet(run / "scores.parquet")
    for split, truth in (("in_test", 2), ("ood", 1)):
        entry = metrics[f"lid_error/{split}"]
        lid = table.loc[table["split"] == split, "lid"].dropna().to_numpy()
        assert entry["n"] == 16 and entry["method"] == "jacobian"
        assert entry["mae"] == pytest.approx(np.abs(lid - truth).mean())
    assert metrics["lid_error/in_test"]["within_1"] >= 0.75  # LPCA-calibrated tau recovers d = 2
    listing = subprocess.run([sys.executable, "-m", "genood.reports.aggregate", str(runs)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert "LID estimators against the known dimension" in listing.stdout and "jacobian" in listing.stdout


def test_killed_likelihood_scoring_resumes_without_recomputing_finished_batches(tmp_path):
    from genood import rundir
    rundir.allow_writes(tmp_path)  # this test's folder stands for a run directory the runner chose
    cfg = runconfig.resolve({"model": {"family": "diffusion", "channels": [8, 8], "norm_groups": 4},
                             "tracking": {"wandb": False}})
    model = build_model((1, 6, 6), cfg["model"]).eval()
    model.configure(dict(cfg, ode=dict(cfg["ode"], rtol=1e-3, atol=1e-3)))
    x = torch.rand(10, 1, 6, 6) * 256
    calls = []
    real = model.log_prob

    class Killed(Exception):
        pass

    def counting(xb):
        calls.append(xb.shape[0])
        if kill and len(calls) == 3:
            raise Killed()
        return real(xb)
    model.log_prob = counting
    kill = False
    full = score_images(model, x, ["log_likelihood", "likelihood_nfe"], 3, torch.device("cpu"), progress=False)
    calls.clear()
    cache, digest = tmp_path / "in_test.npz", model_digest(model)
    kill = True
    with pytest.raises(Killed):
        score_images(model, x, ["log_likelihood"], 3, torch.device("cpu"), progress=False, cache=cache, digest=digest)
    assert calls == [3, 3, 3]
    calls.clear()
    kill = False
    resumed = score_images(model, x, ["log_likelihood"], 3, torch.device("cpu"), progress=False, cache=cache, digest=digest)
    assert calls == [3, 1]  # only the batches the killed run had not finished
    assert np.array_equal(resumed["log_likelihood"], full["log_likelihood"])  # seeded probes: identical numbers
    assert (full["likelihood_nfe"] > 0).all()
