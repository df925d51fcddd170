"""OOD curves during training (seed 003's train_unsup_ood): recorded every N steps, resumable, and without any
effect on the trained weights."""
import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig


@pytest.fixture
def npz_pair(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 120, size=(120, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "ood.npz", images=(60 + rng.integers(0, 3, size=(60, 8, 8))).astype(np.uint8))
    return tmp_path


def _cfg(tmp, every, root="runs"):
    from tests.conftest import TINY_MODEL
    return runconfig.resolve({
        "run": {"runs_root": str(tmp / root)},
        "data": {"in_distribution": f"npz:{tmp / 'in.npz'}", "ood": f"npz:{tmp / 'ood.npz'}", "val_fraction": 0.2},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "training": {"steps": 12, "batch_size": 16, "progress": False, "sample_grid": 0, "checkpoint_every": 4,
                     "ood_curve_every": every, "ood_curve_points": 20}})


def test_curves_are_recorded_every_n_steps_and_leave_the_weights_as_without(npz_pair):
    from genood.models.ood_curves import OodCurves
    from genood.models.training import load_trained, run_training
    from genood.ood.metrics import auroc

    with_curves = run_training(_cfg(npz_pair, 4), echo=False)
    without = run_training(_cfg(npz_pair, 0, root="plain"), echo=False)
    a, b = load_trained(with_curves / "checkpoint.pt")[0], load_trained(without / "checkpoint.pt")[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    frame = pd.read_parquet(with_curves / "training_curves.parquet")
    assert sorted(frame.step.unique()) == [4, 8, 12] and set(frame.group) == {"in_test", "real"}
    assert (with_curves / "figures" / "ood_curves.html").exists()
    # the last row equals a direct evaluation of the final model on the same points
    curves = OodCurves(_cfg(npz_pair, 4), with_curves, (1, 8, 8), lambda m: None)
    curves.attach(a)
    bits = {name: curves._bits(x) for name, _, x in curves.sets}
    last = frame[frame.step == 12].set_index("group")
    assert np.isclose(last.loc["in_test", "bits_per_dim"], bits[curves.sets[0][0]].mean(), atol=1e-5)
    assert np.isclose(last.loc["real", "auroc"], auroc(-bits[curves.sets[0][0]], -bits[curves.sets[1][0]]), atol=1e-6)


def test_a_killed_run_resumes_its_curves(npz_pair):
    from genood.models.training import run_training

    class Killed(Exception):
        pass

    def kill(step, loss):
        if step == 10:
            raise Killed
    with pytest.raises(Killed):
        run_training(_cfg(npz_pair, 4), echo=False, callbacks=[kill])
    directory = run_training(_cfg(npz_pair, 4), echo=False)
    frame = pd.read_parquet(directory / "training_curves.parquet")
    assert frame.groupby("step").size().to_dict() == {4: 2, 8: 2, 12: 2}  # step 8's rows kept once, none doubled


def test_curves_on_vectors_are_one_sentence(tmp_path):
    from genood.models.training import ood_curves

    cfg = runconfig.resolve({"preset": "flow_tabular", "training": {"ood_curve_every": 5}})
    with pytest.raises(runconfig.ConfigError, match="ood_curve_every"):
        ood_curves(cfg, tmp_path, (6,), print, None)
