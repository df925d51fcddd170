"""The entry points end known problems with one clear sentence and exit code 2."""
import subprocess
import sys

import pytest

from genood import runconfig
from tests.conftest import ROOT


def _run(args, env_extra=None, cwd=ROOT):
    import os
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unknown_config_key_names_its_dotted_path(tmp_path):
    line = _one_error_line(_run(["main_ood.py", "--config", "configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml",
                                 "training.stepz=3"]))
    assert "'training.stepz'" in line and "did you mean 'training.steps'" in line


def test_bad_value_type_and_choice():
    with pytest.raises(runconfig.ConfigError, match="'training.steps' must be an integer, got 'many'"):
        runconfig.resolve({"training": {"steps": "many"}})
    with pytest.raises(runconfig.ConfigError, match="'model.coupling' must be one of rq_nsf, affine"):
        runconfig.resolve({}, ["model.coupling=glow"])
    with pytest.raises(runconfig.ConfigError, match="unknown preset 'huge'"):
        runconfig.resolve({"preset": "huge"})


@pytest.mark.parametrize("override, message", [
    ("lid.chunk_size=0", "'lid.chunk_size' must be >= 1 and <= 65536, got 0"),
    ("lid.n_per_split=-3", "'lid.n_per_split' must be >= 1"),
    ("lid.keep=1.5", "'lid.keep' must be > 0.0 and <= 1.0"),
    ("lid.lpca_variance=0", "'lid.lpca_variance' must be > 0.0"),
    ("lid.log_tau_grid=[4,-10,57]", "'lid.log_tau_grid' must be \\[min, max, points\\]"),
    ("lid.log_tau_grid=[-10,4]", "'lid.log_tau_grid' must be"),
])
def test_out_of_range_lid_settings_are_one_sentence(override, message):
    with pytest.raises(runconfig.ConfigError, match=message):
        runconfig.resolve({}, [override])
    runconfig.resolve({}, [override.split("=")[0] + "=" + {"lid.keep": "1.0", "lid.lpca_variance": "0.5"}.get(
        override.split("=")[0], "[-10, 4, 2]" if "grid" in override else "1")])


def test_missing_dataset_is_one_sentence(tmp_path):
    line = _one_error_line(_run(["train.py", "--config", "configurations/train_fmnist_rq_nsf_tiny.yaml",
                                 f"run.runs_root={tmp_path}", "tracking.wandb=false"], {"DATA_DIR": str(tmp_path / "empty")}))
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in line and "make data" in line


def test_missing_checkpoint_is_one_sentence(tmp_path):
    np_path = tmp_path / "x.npz"
    import numpy as np
    np.savez(np_path, images=np.zeros((10, 8, 8), np.uint8))
    line = _one_error_line(_run(["main_ood.py", f"data.in_distribution=npz:{np_path}", f"data.ood=npz:{np_path}",
                                 f"ood.checkpoint={tmp_path / 'nowhere'}", f"run.runs_root={tmp_path}",
                                 "tracking.wandb=false"]))
    assert str(tmp_path / "nowhere" / "checkpoint.pt") in line and "train.py" in line


def test_unknown_score_is_one_sentence(tmp_path):
    line = _one_error_line(_run(["main_ood.py", "ood.scores=[likelihood]", f"run.runs_root={tmp_path}",
                                 "tracking.wandb=false"]))
    assert "Unknown OOD score 'likelihood'" in line


def test_overrides_parse_as_yaml():
    cfg = runconfig.resolve({}, ["training.lr=3e-4", "ood.scores=[log_likelihood]", "data.shape=[1, 28, 28]"])
    assert cfg["training"]["lr"] == 3e-4 and cfg["ood"]["scores"] == ["log_likelihood"]
    assert cfg["data"]["shape"] == [1, 28, 28]


def test_every_shipped_configuration_resolves():
    files = sorted((ROOT / "configurations").rglob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        runconfig.load(f)


def test_ood_run_names_follow_the_lid_settings_that_change_results():
    base = {"ood": {"scores": ["log_likelihood", "lid"]}}
    name = runconfig.run_name(runconfig.resolve(base), "ood")
    assert runconfig.run_name(runconfig.resolve(base, ["lid.log_tau=-2"]), "ood") != name
    assert runconfig.run_name(runconfig.resolve(base, ["lid.n_per_split=8"]), "ood") != name
    assert runconfig.run_name(runconfig.resolve(base, ["lid.chunk_size=64"]), "ood") == name
    plain = runconfig.resolve({})  # without the lid score, lid settings do not split runs
    assert runconfig.run_name(runconfig.resolve({}, ["lid.log_tau=-2"]), "ood") == runconfig.run_name(plain, "ood")


@pytest.mark.parametrize("argv", [["--runs-root", "/r", "--store", "s.db", "aggregate", "a", "b"],
                                  ["aggregate", "a", "b", "--runs-root", "/r", "--store", "s.db"],
                                  ["--store", "s.db", "aggregate", "--runs-root", "/r", "a", "b"]])
def test_sweep_runs_root_and_store_go_before_or_after_the_command(argv):
    from genood.commands.sweep import parser
    args = parser().parse_args(argv)
    assert (args.cmd, args.sweep_ids, args.runs_root, args.store) == ("aggregate", ["a", "b"], "/r", "s.db")
    plain = parser().parse_args(["status", "x"])
    assert plain.runs_root is None and plain.store is None
