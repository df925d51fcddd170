"""OOD curves during training (seed 003's train_unsup_ood): recorded every N steps, resumable, and without any
effect on the trained weights."""
import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig


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
    from genood.models.runs import run_training
    from genood.models.training import load_trained
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
    from genood.models.runs import run_training

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


# --- negative training (seed 003, Appendix B) -----------------------------------------------------------------

def _neg_cfg(tmp, neg, ood, root="runs", **training):
    from tests.conftest import TINY_MODEL
    return runconfig.resolve({
        "run": {"runs_root": str(tmp / root)},
        "data": {"in_distribution": f"npz:{tmp / 'in.npz'}", "ood": ood, "val_fraction": 0.2},
        "model": dict(TINY_MODEL), "tracking": {"wandb": False},
        "ood": {"scores": ["log_likelihood"], "n_generated": 0, "png": False, "bootstrap": 20},
        "training": dict({"steps": 30, "batch_size": 16, "progress": False, "sample_grid": 0, "lr": 3e-3,
                          "negative_ood": neg, "negative_val": -1.0e9, "negative_weight": 1.0}, **training)})


def test_negative_training_pushes_down_only_its_own_set_and_refuses_to_be_evaluated_on_it(npz_pair):
    import json
    import math

    from genood.data.transforms import dequantize_uniform
    from genood.models.runs import run_training
    from genood.models.training import load_trained
    from genood.models.training_hooks import _negative_set, _negative_term
    from genood.ood.runner import run_ood

    rng = np.random.default_rng(1)
    np.savez(npz_pair / "neg.npz", images=(200 + rng.integers(0, 50, size=(80, 8, 8))).astype(np.uint8))
    neg, ood = f"npz:{npz_pair / 'neg.npz'}", f"npz:{npz_pair / 'ood.npz'}"
    # the term: a pure function of (seed, step) over the negative set only, zero once the floor is reached
    cfg = _neg_cfg(npz_pair, neg, ood)
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    bound = _negative_set(cfg["training"], images)
    from genood.data.registry import load_split
    n = len(load_split(neg, "train"))  # the negative set's training split only
    assert bound.name == neg and bound.images.shape == (n, 1, 8, 8) and n < 80
    model = load_trained(run_training(_neg_cfg(npz_pair, None, ood, root="plain"), echo=False) / "checkpoint.pt")[0]
    term = _negative_term(model, bound, 5, 0, "cpu")
    gen = torch.Generator().manual_seed(0 * 1_000_003 + 5 + 0x4E47)
    idx = torch.randint(0, n, (16,), generator=gen)
    x = dequantize_uniform(bound.images[idx].float(), gen)
    assert torch.isclose(term, torch.relu(model.log_prob(x) + 1.0e9).mean() / (64 * math.log(2.0)))
    bound.floor = 1.0e9
    assert _negative_term(model, bound, 5, 0, "cpu").item() == 0.0

    plain = run_ood(_neg_cfg(npz_pair, None, ood, root="plain"), echo=False)
    pushed = run_ood(_neg_cfg(npz_pair, neg, ood), echo=False)
    metrics = json.loads((pushed / "metrics.json").read_text())
    assert metrics["negative_training"]["negative_ood"] == neg
    assert "negative_training" not in json.loads((plain / "metrics.json").read_text())
    neg_images = torch.from_numpy(np.load(npz_pair / "neg.npz")["images"][:, None].astype(np.float32)) + 0.5
    lp = {k: load_trained(d / "checkpoint.pt")[0].log_prob(neg_images).mean().item() for k, d in (("plain", plain), ("pushed", pushed))}
    assert lp["pushed"] < lp["plain"] - 50, lp  # the negative set's likelihood went down

    with pytest.raises(runconfig.ConfigError, match="negative training pushed down"):
        run_ood(_neg_cfg(npz_pair, neg, neg), echo=False)
    from_ckpt = _neg_cfg(npz_pair, None, neg, root="other")
    from_ckpt["ood"]["checkpoint"] = str(pushed / "checkpoint.pt")
    with pytest.raises(runconfig.ConfigError, match="negative training pushed down"):
        run_ood(from_ckpt, echo=False)
