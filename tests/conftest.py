"""Shared fixtures. Tests never touch the network; W&B runs offline when a test turns it on."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_MODEL = {"family": "flow", "coupling": "rq_nsf", "levels": 1, "steps_per_level": 2, "hidden_channels": 8,
              "num_blocks": 1, "num_bins": 4, "tail_bound": 3.0, "actnorm": True, "one_by_one_conv": True,
              "logit_alpha": 0.05}


@pytest.fixture
def tiny_cfg(tmp_path):
    """A resolved config for a very small flow, writing under tmp_path, tracking off."""
    from genood import runconfig
    return runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs"), "seed": 0},
        "model": dict(TINY_MODEL),
        "training": {"steps": 6, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 2, "progress": False,
                     "sample_grid": 4},
        "ood": {"n_in_train": 16, "n_in_test": 16, "n_ood": 16, "n_generated": 8, "png": False},
        "tracking": {"wandb": False},
    })


def real_data_available() -> bool:
    from genood.data.registry import DatasetNotFoundError, load_split

    try:
        load_split("fmnist", "test")
        load_split("mnist", "test")
        return True
    except DatasetNotFoundError:
        return False


needs_real_data = pytest.mark.skipif(not real_data_available(), reason="offline mirror missing: run `make data`")


def _postgres():
    from tests.pgserver import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (see tests/pgserver.py); fails, never skips, when it cannot start."""
    yield from _postgres()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of one test alone, which the test may stop and start again (tests/test_faults.py)."""
    yield from _postgres()


def assert_training_resumes_to_the_same_weights(cfg, images, tmp_path, stop_at: int = 4) -> None:
    """Train once uninterrupted and once killed at ``stop_at`` then resumed: the final weights must be equal."""
    import torch

    from genood.models import training

    class Stop(Exception):
        pass

    def stop(step, loss):
        if step == stop_at:
            raise Stop()
    training.fit(cfg, tmp_path / "full", images, log=lambda m: None)
    with pytest.raises(Stop):
        training.fit(cfg, tmp_path / "cut", images, log=lambda m: None, callbacks=[stop])
    torch.manual_seed(123)  # whatever the global generator holds, the resumed steps draw the same noise
    _, result = training.fit(cfg, tmp_path / "cut", images, log=lambda m: None)
    assert result.resumed_from == stop_at
    a, b = training.load_checkpoint(tmp_path / "full")["model"], training.load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def npz_pair(tmp_path):
    """Small 8x8 image sets as npz datasets: in.npz (in-distribution), ood.npz and val_ood.npz (two OOD sets)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 120, size=(120, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "ood.npz", images=(60 + rng.integers(0, 3, size=(60, 8, 8))).astype(np.uint8))
    np.savez(tmp_path / "val_ood.npz", images=(200 + rng.integers(0, 40, size=(60, 8, 8))).astype(np.uint8))
    return tmp_path
