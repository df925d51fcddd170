import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genood.models import training
from genood.models.flows import build_model
from tests.conftest import ROOT, TINY_MODEL


def _images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)


def _weights(directory: Path):
    return training.load_checkpoint(directory)["model"]


def _trained_uninterrupted(cfg, tmp_path):
    """(images, a run directory trained without interruption, an empty one for the interrupted run)."""
    images = _images()
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    for d in (full_dir, cut_dir):
        d.mkdir()
    training.fit(cfg, full_dir, images, log=lambda m: None)
    return images, full_dir, cut_dir


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_identical_weights(tiny_cfg, tmp_path):
    images, full_dir, cut_dir = _trained_uninterrupted(tiny_cfg, tmp_path)

    def stop_at_4(step, bpd):
        if step == 4:
            raise Interrupt()
    with pytest.raises(Interrupt):
        training.fit(tiny_cfg, cut_dir, images, log=lambda m: None, callbacks=[stop_at_4])
    assert training.load_checkpoint(cut_dir)["step"] == 4
    logs = []
    _, result = training.fit(tiny_cfg, cut_dir, images, log=logs.append)
    assert result.resumed_from == 4 and any("resuming from step 4" in m for m in logs)
    a, b = _weights(full_dir), _weights(cut_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert training.load_checkpoint(cut_dir)["finished"] is True


def test_sigkilled_training_resumes_to_the_same_weights(tmp_path):
    """A real kill -9 of train.py mid-run; rerunning the same command finishes identically."""
    data_dir = tmp_path / "data"
    images = np.random.default_rng(1).integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images)
    model = ",".join(f"{k}={v}" for k, v in TINY_MODEL.items())
    common = [f"data.in_distribution=npz:{tmp_path / 'set.npz'}", "training.steps=60", "training.batch_size=8",
              "training.checkpoint_every=5", "training.progress=false", "tracking.wandb=false", "run.num_threads=1",
              "run.name=r"] + [f"model.{kv}" for kv in model.split(",")]
    env = dict(os.environ, DATA_DIR=str(data_dir))

    def cmd(root):
        return [sys.executable, str(ROOT / "train.py"), f"run.runs_root={root}"] + common

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "single" / "r" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = training.load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 60, "the run finished before it could be killed; make it longer"
    out = subprocess.run(cmd(tmp_path / "cut"), check=True, env=env, capture_output=True, text=True)
    assert f"resuming from step {killed_at}" in out.stderr
    a = _weights(tmp_path / "full" / "single" / "r")
    b = _weights(tmp_path / "cut" / "single" / "r")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    images = torch.from_numpy(_images()).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    model = build_model((1, 4, 4), tiny_cfg["model"])
    real = model.log_prob
    calls = {"n": 0}

    def poisoned(x):
        calls["n"] += 1
        out = real(x)
        return out * float("nan") if calls["n"] > 3 else out
    monkeypatch.setattr(model, "log_prob", poisoned)
    with pytest.raises(training.TrainingDiverged, match=r"step 3 .*last good checkpoint \(step 2\)"):
        training.train(model, images, tiny_cfg, tmp_path, log=lambda m: None)
    state = training.load_checkpoint(tmp_path)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_batches_are_a_function_of_seed_and_step():
    a = training.batch_indices(7, 100, 16, seed=3)
    assert np.array_equal(a, training.batch_indices(7, 100, 16, seed=3))
    epoch = np.concatenate([training.batch_indices(s, 100, 16, seed=3) for s in range(6)])
    assert len(set(epoch.tolist())) == 96  # no repeats inside an epoch


def test_learning_rate_schedule_warmup_then_cosine():
    f = training._lr_lambda({"warmup_steps": 10, "steps": 110, "lr_schedule": "cosine"})
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


def test_exponential_schedule_is_seed_002s_per_step_decay():
    f = training._lr_lambda({"warmup_steps": 0, "steps": 50000, "lr_schedule": "exponential", "lr_decay": 0.999995})
    assert f(0) == 1.0 and f(1000) == pytest.approx(0.999995 ** 1000) and f(50000) == pytest.approx(0.7788, abs=1e-4)


def test_adam_betas_reach_the_optimizer(tiny_cfg):
    cfg = dict(tiny_cfg["training"], adam_betas=[0.95, 0.9995], lr_schedule="exponential", lr_decay=0.5, warmup_steps=0)
    opt, sched = training.make_optimizer(torch.nn.Linear(2, 2), cfg)
    assert opt.param_groups[0]["betas"] == (0.95, 0.9995)
    lr0 = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5)


def test_stop_training_checkpoints_the_step_reached_and_resumes_identically(tiny_cfg, tmp_path):
    """A callback raising StopTraining (a wall-time budget) ends the run with an unfinished checkpoint at that step,
    off the checkpoint grid; the same call resumes from it to the weights of an uninterrupted run."""
    images, full_dir, cut_dir = _trained_uninterrupted(tiny_cfg, tmp_path)

    def budget(step, value):
        if step == 3:  # checkpoint_every is 2: step 3 is saved only because training stops there
            raise training.StopTraining()
    _, result = training.fit(tiny_cfg, cut_dir, images, log=lambda m: None, callbacks=[budget])
    state = training.load_checkpoint(cut_dir)
    assert result.steps == 3 and state["step"] == 3 and state["finished"] is False
    assert not (cut_dir / "figures" / "samples.png").exists()  # an unfinished model draws no sample grid
    _, result = training.fit(tiny_cfg, cut_dir, images, log=lambda m: None)
    assert result.resumed_from == 3 and result.steps == 6
    a, b = _weights(full_dir), _weights(cut_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
