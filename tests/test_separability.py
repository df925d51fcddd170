"""A supervised discriminator per OOD set (genood.ood.separability) and the headroom view beside the selected
detector (genood.reports.headroom, ``sweep.py aggregate --separability``)."""
import json

import numpy as np
import pandas as pd
import pytest

from genood.data.derived.shifts import invert, rot90
from genood.ood import separability
from genood.reports import headroom, suite
from tests.test_semantics import _bars


@pytest.fixture(autouse=True)
def own_data_root(tmp_path, monkeypatch):
    """Every dataset here is an npz under tmp_path: the caches go there too, not into the project's data root."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data_root"))


def test_a_transform_that_keeps_the_distribution_is_inseparable_and_one_that_moves_it_is_not():
    """Bars at uniform places with balanced orientations: a quarter turn maps the distribution onto itself (the
    grouping classifier calls it a corruption, yet no detector could see it), inverting the grey levels does not.
    The expected AUROCs (0.5 and 1) follow from the construction, not from the discriminator."""
    train, y_train = _bars(3000, 0)
    test, y_test = _bars(1000, 1)
    turned = separability.train_discriminator(train, rot90(train, y_train, 1, None)[0], steps=300, paired=True)
    value, (lo, hi) = separability.discriminator_auroc(turned, test, rot90(test, y_test, 1, None)[0], b=200)
    assert 0.42 < value < 0.58 and lo < value < hi
    flipped = separability.train_discriminator(train, invert(train, y_train, None, None)[0], steps=300, paired=True)
    value, (lo, _) = separability.discriminator_auroc(flipped, test, invert(test, y_test, None, None)[0], b=200)
    assert value > 0.99 and lo > 0.98


def test_measure_through_the_registry_pairs_derived_sets_and_caches(tmp_path, monkeypatch):
    images, labels = _bars(1500, 2)
    np.savez(tmp_path / "bars.npz", images=images, labels=labels)
    np.savez(tmp_path / "other.npz", images=255 - _bars(800, 3)[0])
    name = f"npz:{tmp_path / 'bars.npz'}"
    sets = [f"{name}:invert", f"npz:{tmp_path / 'other.npz'}"]
    first = separability.measure(name, sets, 0.1, 0, steps=150)
    assert [m.paired for m in first] == [True, False]
    assert [m.name for m in first] == sets and all(m.auroc > 0.95 for m in first)
    assert first[0].n_in == first[0].n_ood == 300  # every fifth image of the pool is test
    cached = list((separability.semantics._cache_dir().parent / "separability").glob("*/auroc.json"))
    assert any(set(json.loads(p.read_text())) == set(sets) for p in cached)

    def refuse(*a, **k):
        raise AssertionError("trained again although the cache holds the set")
    monkeypatch.setattr(separability, "train_discriminator", refuse)
    assert [m.row() for m in separability.measure(name, sets, 0.1, 0, steps=150)] == [m.row() for m in first]


def test_bad_inputs_are_one_sentence(tmp_path, capsys):
    images, labels = _bars(300, 4)
    np.savez(tmp_path / "bars.npz", images=images, labels=labels)
    np.savez(tmp_path / "big.npz", images=np.zeros((300, 12, 12, 1), np.uint8))
    name = f"npz:{tmp_path / 'bars.npz'}"
    assert separability.main([name, f"npz:{tmp_path / 'big.npz'}", "--steps", "5"]) == 2
    assert "has images of shape (12, 12, 1)" in capsys.readouterr().err
    assert separability.main([name, f"{name}:nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "nosuch" in err[-1]
    assert separability.main([name, f"{name}:invert", "--steps", "0"]) == 2
    assert "positive number of training steps" in capsys.readouterr().err


def test_headroom_pairs_the_selected_detector_with_the_discriminator_on_the_named_sets_only():
    from tests.test_semantics import _frame
    sets = _frame()
    picked = suite.selection(sets, ["near", "corruption"])
    asked = []

    def measure(in_dataset, names):
        asked.append((in_dataset, list(names)))
        return [separability.Separability(n, 0.9 if n == "corr1" else 1.0, (0.85, 0.95), 10, 10, True, 5, 0.1)
                for n in names]
    table = headroom.headroom(sets, picked, ["corruption", "real"], measure)
    assert asked == [("d", ["corr1", "real1"])]  # shift and unnamed sets are never measured
    assert list(table["ood_dataset"]) == ["corr1", "real1"] and set(table["detector"]) == {"good"}
    assert table["gap"].tolist() == pytest.approx([0.95 - 0.9, 0.97 - 1.0])
    assert table["optimistic"].all()
    lines = headroom.headroom_lines(table)
    assert any("largest gap corr1 0.950 vs 0.900" in line for line in lines)
    (key, cells), = headroom.headroom_cells(table).items()  # the report's table: the largest gap first
    assert key == (table["model"].iloc[0], "d") and list(cells.index) == ["real1", "corr1"]
    assert cells.loc["real1", "gap"] == "-0.030" and cells.loc["corr1", "gap"] == "+0.050" and cells.loc["corr1", "discriminator (opt)"] == "0.900 [0.850, 0.950]"
    with pytest.raises(suite.SelectionError):
        headroom.headroom(sets, picked, ["shift"], measure)


def test_aggregate_separability_end_to_end(tiny_cfg, tmp_path):
    """A real run on a user dataset with two OOD sets, then the aggregate's --separability step on its folder:
    the CSV and the report's headroom section."""
    from genood import runconfig
    from genood.commands.sweep import _headroom_table
    from genood.ood import runner
    from genood.reports.aggregate import collect_runs, write_outputs
    images, labels = _bars(1000, 5)
    np.savez(tmp_path / "bars.npz", images=images, labels=labels)
    name = f"npz:{tmp_path / 'bars.npz'}"
    cfg = runconfig.resolve(dict(tiny_cfg, data=dict(tiny_cfg["data"], in_distribution=name,
                                                     ood={"corruption": [f"{name}:invert"], "far": [f"{name}:uniform"]}),
                                 ood=dict(tiny_cfg["ood"], scores=["log_likelihood"], bootstrap=0, n_generated=0,
                                          baselines=["intensity_mean"])))
    directory = runner.run_ood(cfg, echo=False)
    frame, _ = collect_runs([directory])
    out = tmp_path / "runs"  # the runs root: where aggregates are written
    write_outputs(frame, [directory], out, select_on=["corruption"],
                  headroom=_headroom_table(frame, ["corruption"], ["corruption", "far"], 100))
    table = pd.read_csv(out / "separability.csv")
    assert sorted(table["ood_dataset"]) == sorted([f"{name}:invert", f"{name}:uniform"])
    assert (table["separability_auroc"] > 0.95).all() and table["optimistic"].all()
    page = (out / "report.html").read_text()
    assert "Headroom: the selected detector beside a supervised discriminator" in page
    assert all(f"{v:.3f}" in page for v in table["separability_auroc"])
    assert "separability.csv" not in {p.name for p in write_outputs(frame, [directory], tmp_path / "plain")}
    assert "Headroom" not in (tmp_path / "plain" / "report.html").read_text()
    with pytest.raises(SystemExit, match="--separability 'nowhere' names no group"):
        _headroom_table(frame, ["corruption"], ["nowhere"], 100)


class _Linear:
    """log p(x) = <w, x>: a fixed, asymmetric 'density' whose value on any image is known in closed form."""

    def __init__(self, shape):
        import torch
        self.w = torch.arange(float(np.prod(shape))).reshape(shape) / 100.0

    def log_prob(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_orientation_is_the_likelihood_difference_to_each_transform_computed_by_numpy():
    import torch

    from genood.ood.scores import ScoreUnavailable, get
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 256, size=(5, 1, 6, 6)))
    model = _Linear((1, 6, 6))
    cfg = {"orientation": {"transforms": ["hflip", "vflip", "rot90", "rot180"]}}
    out = get("orientation").fn(model, x, {"cfg": cfg}).numpy()
    a, w = x.numpy(), model.w.numpy()
    want = [(a * w).sum((1, 2, 3)) - (t * w).sum((1, 2, 3)) for t in
            (a[..., ::-1], a[..., ::-1, :], np.rot90(a, 1, (2, 3)), np.rot90(a, 2, (2, 3)))]
    np.testing.assert_allclose(out, np.stack(want, 1), rtol=1e-10)
    assert get("orientation").column_names(cfg) == [f"orientation@{t}" for t in ("hflip", "vflip", "rot90", "rot180")]
    with pytest.raises(ScoreUnavailable, match=r"unknown transform\(s\) \['mirror'\]"):
        get("orientation").column_names({"orientation": {"transforms": ["mirror"]}})
    wide = torch.zeros(2, 1, 4, 6)
    with pytest.raises(ScoreUnavailable, match="needs square images"):
        get("orientation").fn(_Linear((1, 4, 6)), wide, {"cfg": cfg})
