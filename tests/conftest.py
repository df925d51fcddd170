"""Shared fixtures. Tests never touch the network; W&B runs offline when a test turns it on."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_MODEL = {"family": "flow", "coupling": "rq_nsf", "levels": 1, "steps_per_level": 2, "hidden_channels": 8,
              "num_blocks": 1, "num_bins": 4, "tail_bound": 3.0, "actnorm": True, "one_by_one_conv": True,
              "logit_alpha": 0.05}


@pytest.fixture
def tiny_cfg(tmp_path):
    """A resolved config for a very small flow, writing under tmp_path, tracking off."""
    import runconfig

    return runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs"), "seed": 0},
        "model": dict(TINY_MODEL),
        "training": {"steps": 6, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 2, "progress": False,
                     "sample_grid": 4},
        "ood": {"n_in_train": 16, "n_in_test": 16, "n_ood": 16, "n_generated": 8, "png": False},
        "tracking": {"wandb": False},
    })


def real_data_available() -> bool:
    from data.registry import DatasetNotFoundError, load_split

    try:
        load_split("fmnist", "test")
        load_split("mnist", "test")
        return True
    except DatasetNotFoundError:
        return False


needs_real_data = pytest.mark.skipif(not real_data_available(), reason="offline mirror missing: run `make data`")


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (see tests/pgserver.py); fails, never skips, when it cannot start."""
    from tests.pgserver import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
