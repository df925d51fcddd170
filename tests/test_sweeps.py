"""The local sweep backend with real agent processes, on both store implementations: SQLite and a real
PostgreSQL server (started by the test setup). Every test runs once per store."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from genood.orchestration.store import STORE_ENV, open_store, store_locator
from tests.conftest import ROOT, TINY_MODEL


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def store_backend(request, monkeypatch):
    """Run each test against the SQLite file (default) and a fresh PostgreSQL database ($OOD_SWEEP_STORE,
    which every CLI call and agent process inherits)."""
    if request.param == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_server").new_database())
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    return request.param


def sweep_cli(root, *args, check=True, env=None):
    out = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return out


def create(root, meta: dict, tmp_path, *extra):
    path = tmp_path / f"meta-{len(list(tmp_path.glob('meta-*')))}.yaml"
    path.write_text(yaml.safe_dump(meta))
    return sweep_cli(root, "create", "--config", str(path), "--backend", "local", *extra).stdout.strip().splitlines()[-1]


def agent(root, sweep_id, *extra, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), "agent", sweep_id, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runs(root, sweep_id):
    store = open_store(store_locator(root), runs_root=root)
    try:
        return store.runs(sweep_id)
    finally:
        store.close()


def sleep_meta(n_values=200, sleep=0.0, fail=False, **extra):
    return {"job": "sleep", "method": "grid", "base_config": {"sleep": sleep, "fail": fail},
            "sweep_configuration": {"value": {"sweep": True, "values": [round(i / n_values, 6) for i in range(n_values)]}},
            **extra}


def test_eight_agents_run_every_run_exactly_once(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, sleep_meta(200), tmp_path)
    procs = [agent(root, sid) for _ in range(8)]
    for p in procs:
        p.wait(timeout=600)
        assert p.returncode == 0, p.stdout.read()
    rows = runs(root, sid)
    assert len(rows) == 200 and {r["status"] for r in rows} == {"finished"}
    assert all(r["claims"] == 1 for r in rows)
    executions = [len((Path(r["run_dir"]) / "executions.log").read_text().splitlines()) for r in rows]
    assert executions == [1] * 200
    workers = {r["agent"] for r in rows}
    assert len(workers) > 1, "the agents should have shared the work"


def test_failing_run_is_retried_then_failed_while_the_sweep_goes_on(tmp_path):
    root = tmp_path / "runs"
    meta = sleep_meta(3, max_attempts=3)
    meta["sweep_configuration"]["fail"] = {"sweep": True, "values": [False, True]}
    sid = create(root, meta, tmp_path)
    p = agent(root, sid)
    p.wait(timeout=300)
    rows = {(r["params"]["value"], r["params"]["fail"]): r for r in runs(root, sid)}
    for (value, fail), r in rows.items():
        if fail == "True":
            assert r["status"] == "failed" and r["failures"] == 3 and "sleep job asked to fail" in r["error"]
            assert len((Path(root) / sid / r["name"] / "executions.log").read_text().splitlines()) == 3
        else:
            assert r["status"] == "finished" and r["failures"] == 0
    status = sweep_cli(root, "status", sid).stdout
    assert "3 finished, 3 failed" in status and "RuntimeError: sleep job asked to fail" in status
    finished = [line for line in status.splitlines() if " finished " in line and not line.startswith("sweep ")]
    assert len(finished) == 3 and all(re.search(r" \d+s  ", line) for line in finished)  # each run's time is shown
    assert "re-queued 3 run(s)" in sweep_cli(root, "rerun", sid, "--failed").stdout
    assert sum(r["status"] == "queued" for r in runs(root, sid)) == 3


def test_sigterm_requeues_the_current_run(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, sleep_meta(2, sleep=60), tmp_path)
    p = agent(root, sid)
    deadline = time.time() + 60
    while time.time() < deadline and not any(r["status"] == "running" for r in runs(root, sid)):
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert p.returncode == 0
    rows = runs(root, sid)
    assert [r["status"] for r in rows] == ["queued", "queued"]
    assert rows[0]["claims"] == 1 and rows[0]["failures"] == 0 and rows[0]["agent"] is None


def test_sigkilled_agent_run_is_resumed_from_checkpoint_by_another_agent(tmp_path):
    root = tmp_path / "runs"
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    np.savez(tmp_path / "b.npz", images=255 - images)
    meta = {"job": "ood", "method": "grid", "base_config": {
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 400, "batch_size": 8, "checkpoint_every": 10, "progress": False, "sample_grid": 0},
        "ood": {"n_generated": 8, "png": False, "figures": False}},
        "sweep_configuration": {"data": {"in_distribution": {"sweep": True, "sweep_identifier": "ind",
                                                            "sweep_alias": ["a"], "values": [f"npz:{tmp_path / 'a.npz'}"]},
                                         "ood": f"npz:{tmp_path / 'b.npz'}"}}}
    sid = create(root, meta, tmp_path)
    (name,) = [r["name"] for r in runs(root, sid)]
    ckpt = root / sid / name / "checkpoint.pt"
    first = agent(root, sid, "--lease", "2")
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    import torch
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 400
    assert runs(root, sid)[0]["status"] == "running"  # the dead agent still holds it until the lease expires
    second = agent(root, sid, "--lease", "2")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    (row,) = runs(root, sid)
    assert row["status"] == "finished" and row["claims"] == 2
    assert f"resuming from step {killed_at}" in (root / sid / name / "run.log").read_text()
    agg = sweep_cli(root, "aggregate", sid).stdout
    table = pd.read_csv(root / sid / "aggregate.csv")
    metrics = json.loads((root / sid / name / "metrics.json").read_text())
    assert len(table) == len(metrics) and not table.duplicated(["run", "detector"]).any()
    for _, r in table.iterrows():
        assert r["auroc"] == pytest.approx(metrics[r["detector"]]["auroc"], abs=1e-12)
        assert r["n_in"] == metrics[r["detector"]]["n_in"]
    scores = pd.read_parquet(root / sid / name / "scores.parquet")
    assert not scores.duplicated(["split", "index"]).any()
    assert "log_likelihood" in agg


def test_aggregate_matches_metrics_and_overlapping_sweeps_reuse_finished_runs(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, sleep_meta(5), tmp_path)
    agent(root, sid).wait(timeout=300)
    sweep_cli(root, "aggregate", sid)
    table = pd.read_csv(root / sid / "aggregate.csv")
    assert len(table) == 5
    for _, r in table.iterrows():
        metrics = json.loads((root / sid / r["run"] / "metrics.json").read_text())
        assert r["auroc"] == metrics["sleep"]["auroc"] and r["fpr95"] == metrics["sleep"]["fpr95"]
    # a bigger grid overlapping the first: only the new cells are queued
    out = sweep_cli(root, "create", "--config", str(tmp_path / "meta-0.yaml"), "--backend", "local")
    assert "0 queued, 5 reused" in out.stderr
    assert "axes: value: 0.0, 0.2, 0.4, 0.6, ... (5 values)" in out.stderr  # the grid is named at create
    bigger = sleep_meta(10)
    sid2 = create(root, bigger, tmp_path)
    rows = runs(root, sid2)
    assert sum(r["status"] == "queued" for r in rows) == 5  # values 0.1, 0.3, ... are new; 0.0, 0.2, ... reused
    assert all(r["reused_from"].startswith(str(root / sid)) for r in rows if r["status"] == "finished")
    forced = sweep_cli(root, "create", "--config", str(tmp_path / "meta-0.yaml"), "--backend", "local", "--force")
    assert "5 queued, 0 reused" in forced.stderr


def test_random_search_uses_the_wandb_engine_and_respects_run_cap(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, sleep_meta(50, method="random", run_cap=4), tmp_path)
    assert runs(root, sid) == []
    p = agent(root, sid)
    p.wait(timeout=300)
    rows = runs(root, sid)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}


def test_unknown_sweep_id_is_one_sentence(tmp_path):
    out = sweep_cli(tmp_path, "status", "local-deadbeef", check=False)
    assert out.returncode == 2 and out.stderr.startswith("error: Sweep 'local-deadbeef' is not in")


def test_meta_run_script_pins_the_gpu_and_logs_per_agent(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, sleep_meta(3), tmp_path)
    env = dict(os.environ, OOD_RUNS_ROOT=str(root), PYTHON=sys.executable)
    out = subprocess.run([str(ROOT / "meta_run_ood.sh"), sid, "3", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = runs(root, sid)
    assert [r["status"] for r in rows] == ["finished", "finished", "queued"]  # count=2
    line = (Path(rows[0]["run_dir"]) / "executions.log").read_text()
    assert line.strip().endswith("CUDA_VISIBLE_DEVICES=3")
    logs = list((root / sid / "agents").glob("*-gpu3.log"))
    assert len(logs) == 1 and "finished" in logs[0].read_text()


def test_bayes_search_reads_the_metric_from_finished_runs(tmp_path):
    root = tmp_path / "runs"
    meta = sleep_meta(6, method="bayes", run_cap=5, metric={"name": "sleep/auroc", "goal": "maximize"})
    sid = create(root, meta, tmp_path)
    p = agent(root, sid)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    rows = runs(root, sid)
    assert len(rows) == 5 and all(r["status"] == "finished" and r["metrics"]["sleep"]["auroc"] >= 0 for r in rows)


def test_hyperband_early_termination_stops_a_worse_run(tmp_path):
    root = tmp_path / "runs"
    good = [10 - 0.1 * i for i in range(100)]
    meta = {"job": "sleep", "method": "grid", "metric": {"name": "train/bits_per_dim", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 2},  # iterations = logged points (every 10 steps, as on W&B)
            "base_config": {"sleep": 0.2},
            "sweep_configuration": {"curve": {"sweep": True, "sweep_alias": ["good1", "good2", "good3", "bad"],
                                              "values": [good, [v - 0.05 for v in good], [v - 0.1 for v in good],
                                                         [v + 50 for v in good]]}}}
    sid = create(root, meta, tmp_path)
    p = agent(root, sid)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    status = {r["params"]["curve"]: r["status"] for r in runs(root, sid)}
    assert status == {"good1": "finished", "good2": "finished", "good3": "finished", "bad": "stopped"}, out
    assert "stopped early" in out
