"""What W&B would receive from a real OOD job, read back from the offline run with W&B's own reader
(``wandb leet inspect --json``, the wandb CLI's reader of a run's .wandb transaction log)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genood import runconfig
from tests.conftest import TINY_MODEL


def _read_back(run_dir: Path) -> list:
    (log,) = list((run_dir / "wandb").glob("offline-run-*/*.wandb"))
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    from genood.ood.runner import run_ood

    tmp = tmp_path_factory.mktemp("wandb")
    images = np.random.default_rng(0).integers(0, 256, size=(96, 8, 8), dtype=np.uint8)
    np.savez(tmp / "a.npz", images=images)
    np.savez(tmp / "b.npz", images=np.clip(images.astype(int) + 60, 0, 255).astype(np.uint8))
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp / "runs"), "seed": 0},
        "model": dict(TINY_MODEL), "data": {"in_distribution": f"npz:{tmp / 'a.npz'}", "ood": f"npz:{tmp / 'b.npz'}"},
        "training": {"steps": 30, "batch_size": 8, "checkpoint_every": 10, "progress": False, "sample_grid": 4},
        "ood": {"scores": ["log_likelihood", "bits_per_dim", "typicality"], "n_generated": 8, "png": False,
                "bootstrap": 50},
        "tracking": {"wandb": True, "mode": "offline"}})
    os.environ["WANDB_MODE"] = "offline"
    run_dir = run_ood(cfg, echo=False)
    return run_dir, _read_back(run_dir)


def test_the_resolved_config_is_what_wandb_receives(offline_run):
    run_dir, records = offline_run
    (run,) = [r for r in records if r["type"] == "run"]
    sent = dict(run["run"]["config"]["update"])
    for r in records:
        if r["type"] == "config":
            sent.update(r["config"].get("update", {}))
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    flat_sent, flat_resolved = _flatten({k: v for k, v in sent.items() if not k.startswith("_wandb")}), _flatten(resolved)
    assert flat_sent == flat_resolved


def test_one_summary_value_per_detector_and_metric(offline_run):
    run_dir, records = offline_run
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics) > 5
    for detector, entry in metrics.items():
        for m in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            key = f"{detector}/{m}"
            assert key in summary, key
            assert summary[key] == pytest.approx(entry[m], abs=1e-12) if not math.isnan(entry[m]) else True


def test_the_training_curve_the_scores_table_and_the_charts(offline_run):
    run_dir, records = offline_run
    curve = [r["history"]["item"] for r in records if r["type"] == "history" and "train/bits_per_dim" in r["history"]["item"]]
    assert [h["_step"] for h in curve] == [10, 20, 30] and all(np.isfinite(h["train/bits_per_dim"]) for h in curve)
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["scores._type"] == "table-file"
    (table_file,) = list((run_dir / "wandb").glob(f"offline-run-*/files/{summary['scores.path']}"))
    table = json.loads(table_file.read_text())
    scores = pd.read_parquet(run_dir / "scores.parquet")
    assert table["columns"] == list(scores.columns) and len(table["data"]) == len(scores)
    np.testing.assert_allclose([row[table["columns"].index("log_likelihood")] for row in table["data"]],
                               scores["log_likelihood"].to_numpy(), rtol=1e-6)
    charts = {k for r in records if r["type"] == "config" for k in r["config"].get("update", {})
              if k.startswith("_wandb.visualize.charts/")}
    assert {"_wandb.visualize.charts/log_likelihood_histogram/in_test", "_wandb.visualize.charts/log_likelihood_histogram/ood",
            "_wandb.visualize.charts/typicality_vs_log_likelihood"} <= charts


def test_the_checkpoint_artifact(offline_run):
    run_dir, records = offline_run
    models = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    (art,) = models
    from genood.tracking import artifact_name
    assert art["name"] == artifact_name(f"checkpoint-{run_dir.name}") and len(art["name"]) <= 128
    (entry,) = art["manifest"]["contents"]
    assert entry["path"] == "checkpoint.pt" and int(entry["size"]) == (run_dir / "checkpoint.pt").stat().st_size


def test_the_reachability_check_uses_wandb_base_url(monkeypatch):
    from genood.orchestration import wandb_backend

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert wandb_backend.wandb_host() == ("api.wandb.ai", 443)
    with socket.socket() as server:  # a listening TCP socket stands for a lab's server: the check is a TCP connect
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert wandb_backend.wandb_host() == ("127.0.0.1", port) and wandb_backend.reachable(timeout=2)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # closed now
    assert not wandb_backend.reachable(timeout=2)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with pytest.raises(wandb_backend.WandbUnavailable, match=f"127.0.0.1:{port} did not answer; from WANDB_BASE_URL"):
        wandb_backend.require_wandb()
