"""Agents as a submitit job array, run through submitit's local executor (the same code path as Slurm's)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from genood.orchestration.launch import launch
from genood.orchestration.store import store_locator
from tests.conftest import ROOT, TINY_MODEL
from tests.test_sweeps import create, runs


def _create(root, meta, tmp_path):
    return create(root, meta, tmp_path)


def _runs(root, sid):
    return runs(root, sid)


def _training_sweep(tmp_path, root, seed: int = 0) -> tuple:
    """A one-run OOD sweep of a tiny flow on generated 8x8 images (400 steps, a checkpoint every 10): (sweep id,
    run name, its checkpoint path)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    np.savez(tmp_path / "b.npz", images=255 - images)
    sid = _create(root, {"job": "ood", "method": "grid", "base_config": {
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "data": {"in_distribution": f"npz:{tmp_path / 'a.npz'}", "ood": f"npz:{tmp_path / 'b.npz'}"},
        "training": {"steps": 400, "batch_size": 8, "checkpoint_every": 10, "progress": False, "sample_grid": 0},
        "ood": {"n_generated": 8, "png": False, "figures": False}},
        "sweep_configuration": {"run": {"seed": {"sweep": True, "values": [0]}}}}, tmp_path)
    (name,) = [r["name"] for r in _runs(root, sid)]
    return sid, name, root / sid / name / "checkpoint.pt"


def test_a_local_array_of_agents_runs_every_run_once(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "runs"
    sid = _create(root, {"job": "sleep", "method": "grid", "base_config": {"sleep": 0.05},
                         "sweep_configuration": {"value": {"sweep": True, "values": list(range(12))}}}, tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), "launch", sid, "--local",
                          "--agents", "3", "--wait"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "submitted 3 agent task(s)" in out.stderr and out.stderr.count("'finished'") == 3
    rows = _runs(root, sid)
    assert [r["status"] for r in rows] == ["finished"] * 12 and all(r["claims"] == 1 for r in rows)
    assert len({r["agent"] for r in rows}) > 1
    logs = list((root / sid / "slurm").rglob("*_log.err"))
    assert len(logs) == 3 and any("claimed" in p.read_text() for p in logs)


def test_a_preempted_array_task_hands_its_run_back_and_the_requeued_task_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "runs"
    sid, name, ckpt = _training_sweep(tmp_path, root, 0)
    (job,) = launch(sid, store_locator(root), root, agents=1, slurm=False, lease=60.0)
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), job.stderr()
    # what Slurm does before pre-empting a task or at its time limit: USR2 to the task's process (the agent)
    (row,) = _runs(root, sid)
    pid = int(row["agent"].rsplit("-pid", 1)[1])
    os.kill(pid, signal.SIGUSR2)
    result = job.result()  # the requeued task (a fresh agent in the same array slot) drains the sweep
    assert result["finished"] == 1, job.stderr()
    (row,) = _runs(root, sid)
    assert row["status"] == "finished" and row["claims"] == 2  # handed back at once: no lease had to expire
    assert int(row["agent"].rsplit("-pid", 1)[1]) != pid
    log = (root / sid / name / "run.log").read_text()
    assert "resuming from step" in log
    assert "Requeued job" in "".join(p.read_text() for p in (root / sid / "slurm").rglob("*_log.*"))


@pytest.fixture(scope="module")
def slurm():
    from tests.slurmcluster import SlurmCluster

    cluster = SlurmCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_real_slurm_array_runs_the_sweep_and_a_preempted_task_is_resumed(tmp_path, monkeypatch, slurm):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "runs"
    sid, name, ckpt = _training_sweep(tmp_path, root, 1)
    (job,) = launch(sid, store_locator(root), root, agents=1, slurm=True, time_min=10, mem_gb=1)
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), job.stderr()
    # Slurm's warning before pre-emption or the time limit (sbatch --signal=USR2@...): USR2 to the job's steps
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    deadline = time.time() + 60
    while time.time() < deadline and _runs(root, sid)[0]["status"] != "queued":
        time.sleep(0.1)
    (row,) = _runs(root, sid)
    assert row["status"] == "queued" and row["claims"] == 1, job.stderr()  # handed back at once, no lease to wait for
    # submitit called our checkpoint() and asked Slurm to requeue the task (Slurm's SIGTERM to the requeued step may
    # cut submitit's own "Requeued job" line short; Slurm's line says it). The run is handed back inside
    # checkpoint(), before the requeue is asked for: wait for the line rather than read the logs at once.
    deadline = time.time() + 30
    while True:
        logs = "".join(p.read_text() for p in (root / sid / "slurm").rglob("*_log.*"))
        if ("Requeued job" in logs or "DUE TO JOB REQUEUE" in logs) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert "Calling checkpoint method" in logs and ("Requeued job" in logs or "DUE TO JOB REQUEUE" in logs), logs
    # the requeued task would start after Slurm's requeue delay (minutes); clear the queue and let the next agent array
    # resume the run instead
    import getpass
    subprocess.run(["scancel", "-u", getpass.getuser()], check=True)
    deadline = time.time() + 60
    while time.time() < deadline and subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        time.sleep(0.2)
    (second,) = launch(sid, store_locator(root), root, agents=1, slurm=True, time_min=10, mem_gb=1)
    deadline = time.time() + 240
    while time.time() < deadline and _runs(root, sid)[0]["status"] != "finished":
        time.sleep(0.2)
    (row,) = _runs(root, sid)
    assert row["status"] == "finished" and row["claims"] == 2, second.stderr()
    assert "resuming from step" in (root / sid / name / "run.log").read_text()


def test_a_real_controller_refusing_the_array_is_one_sentence_quoting_it_and_the_sweep_is_unchanged(tmp_path, slurm):
    """A bad partition and limits no node can meet: sbatch's own error, quoted; nothing in the store changes."""
    from genood.orchestration.launch import SubmissionFailed
    from genood.orchestration.store import open_store
    root = tmp_path / "runs"
    sid, name, ckpt = _training_sweep(tmp_path, root, 1)
    store = open_store(store_locator(root), runs_root=root)
    try:
        before = store.runs(sid)
        for kwargs, expected in (({"partition": "no_such_partition"}, "invalid partition"),
                                 ({"mem_gb": 10_000_000}, "sbatch: error")):
            with pytest.raises(SubmissionFailed) as caught:
                launch(sid, store_locator(root), root, agents=2, slurm=True, time_min=10, **kwargs)
            said = str(caught.value)
            assert said.startswith(f"Slurm refused the 2 agent task(s) of {sid} (sbatch: ") and "\n" not in said
            assert expected in said.lower() and "the sweep is unchanged" in said
        assert store.runs(sid) == before
    finally:
        store.close()
