"""Measured grouping (issue 31): a transform that keeps the meaning is a shift, one that destroys it a corruption,
by a classifier of the in-distribution; shifts are their own column and never enter an OOD mean, a selection or a
ceiling; a hand override is reported as such; a bad group name is one sentence."""
import numpy as np
import pandas as pd
import pytest

from genood import runconfig
from genood.data.derived.shifts import hflip, rot90
from genood.ood import semantics
from genood.reports import suite
from genood.runconfig import ConfigError


def _bars(n, seed=0):
    """8x8 images of a horizontal bar (class 0) or a vertical bar (class 1) at a random place, with noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 8, 8, 1)).astype(np.uint8)
    labels = rng.integers(0, 2, size=n)
    at = rng.integers(1, 7, size=n)
    for i in range(n):
        if labels[i] == 0:
            images[i, at[i], 1:7, 0] = 230
        else:
            images[i, 1:7, at[i], 0] = 230
    return images, labels.astype(np.int64)


def test_a_label_keeping_and_a_label_destroying_transform_land_in_their_groups():
    """Mirroring left-right keeps a bar's orientation (shift); a quarter turn swaps the classes (corruption)."""
    train, y_train = _bars(2000, 0)
    test, y_test = _bars(500, 1)
    net = semantics.train_classifier(train, y_train, steps=150)
    clean = semantics.classifier_accuracy(net, test, y_test)
    assert clean > 0.95
    kept = semantics.classifier_accuracy(net, hflip(test, y_test, None, None)[0], y_test)
    swapped = semantics.classifier_accuracy(net, rot90(test, y_test, 1, None)[0], y_test)
    assert semantics.measured_group(kept, clean) == "shift"
    assert semantics.measured_group(swapped, clean) == "corruption" and swapped < 0.2
    assert semantics.measured_group(clean - semantics.MARGIN, clean) == "shift"  # the margin is inclusive
    assert semantics.measured_group(clean - semantics.MARGIN - 0.01, clean) == "corruption"


def test_measure_end_to_end_on_a_user_dataset_groups_and_caches(tmp_path, monkeypatch):
    """Through the data registry (an npz with labels and its derived sets): the measured groups, a class split
    left near and another dataset left real without measuring; the second call reuses the cache."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data_root"))  # the cache too stays under tmp_path
    images, labels = _bars(1500, 2)
    path = tmp_path / "bars.npz"
    np.savez(path, images=images, labels=labels)
    name = f"npz:{path}"
    sets = [f"{name}:hflip", f"{name}:rot90", f"{name}:classes=0", "mnist"]
    first = semantics.measure(name, sets, 0.1, 0)
    assert [m.group for m in first] == ["shift", "corruption", "near", "real"]
    assert [m.source for m in first][:2] == ["measured", "measured"] and first[2].accuracy is None
    assert first[0].val_accuracy > 0.9 and first[0].clean_accuracy > 0.9
    again = semantics.measure(name, sets, 0.1, 0)
    assert [m.row() for m in again] == [m.row() for m in first]


def test_a_dataset_without_labels_cannot_be_measured_and_says_how_to_group_by_hand(tmp_path):
    images, _ = _bars(200, 3)
    path = tmp_path / "nolabels.npz"
    np.savez(path, images=images)
    with pytest.raises(ValueError, match="group its transformed sets by hand"):
        semantics.measure(f"npz:{path}", [f"npz:{path}:hflip"], 0.1, 0)


def _frame():
    """Suite rows of one model: near and corruption (selection), far and real (held out), and shift sets whose
    AUROCs would change every OOD number if they were averaged in (0.02 and 0.99)."""
    rows = []
    for detector, free, auroc in (("good", False, {"near1": 0.9, "corr1": 0.95, "far1": 0.99, "real1": 0.97,
                                                   "shift1": 0.02, "shift2": 0.99}),
                                  ("bad", False, {"near1": 0.6, "corr1": 0.7, "far1": 0.5, "real1": 0.4,
                                                  "shift1": 0.5, "shift2": 0.5}),
                                  ("mf", True, {"near1": 0.5, "corr1": 0.8, "far1": 0.9, "real1": 0.6,
                                                "shift1": 0.6, "shift2": 0.4})):
        for name, value in auroc.items():
            group = {"near": "near", "corr": "corruption", "far1": "far", "real": "real", "shif": "shift"}
            g = next(v for k, v in group.items() if name.startswith(k))
            rows.append({"model": "m", "in_dataset": "d", "ood_dataset": name, "ood_group": g, "detector": detector,
                         "auroc": value, "auroc_lo": value - 0.01, "auroc_hi": value + 0.01, "model_free": free,
                         "n_seeds": 1, "best_baseline": None, "best_baseline_auroc": None, "beats_baselines": True})
    return pd.DataFrame(rows)


def test_shifts_never_enter_an_ood_mean_a_selection_or_a_ceiling():
    sets = _frame()
    seen = []

    def chooser(rows):
        seen.append(set(rows["ood_group"]))
        return suite.select(rows)
    picked = suite.selection(sets, ["near", "corruption"], chooser=chooser)["m"]
    assert seen == [{"near", "corruption"}]
    assert picked["detector"] == "good" and set(picked["held_out"]["ood_group"]) == {"far", "real"}
    assert set(picked["groups"]["ood_group"]) == {"far", "real"}
    assert "shift" not in set(picked["ceiling"]["ood_group"])
    shift = picked["shift"].set_index("detector")
    assert shift.loc["good", "mean"] == pytest.approx(0.505) and shift.loc["good", "gap"] == pytest.approx(0.485)
    assert shift.loc["good", "farthest_set"] == "shift2" and shift.loc["good", "farthest"] == pytest.approx(0.99)
    far = picked["groups"].set_index(["detector", "ood_group"]).loc[("good", "far")]
    assert far["mean"] == pytest.approx(0.99)  # a shift's 0.02 or 0.99 in it would move this
    assert list(suite.ood_rows(sets)["ood_group"].unique()) == ["near", "corruption", "far", "real"]
    lines = suite.selection_lines({"m": picked})
    assert any(line.strip().startswith("shift (") for line in lines)


@pytest.mark.parametrize("tokens", [["shift"], ["near", "shift1"]])
def test_selecting_on_shift_sets_is_one_sentence(tokens):
    with pytest.raises(suite.SelectionError, match="keep the in-distribution's meaning"):
        suite.selection(_frame(), tokens)


def test_a_hand_override_is_reported_as_set_by_hand():
    frame = pd.DataFrame([{"model": "m", "in_dataset": "fmnist", "ood_dataset": "fmnist:hflip", "ood_group": "shift",
                           "group_source": "hand"},
                          {"model": "m", "in_dataset": "fmnist", "ood_dataset": "mnist", "ood_group": "real",
                           "group_source": "declared"}])
    groups = suite.set_groups(frame, [])
    assert groups.to_dict("records")[0]["source"] == "hand" and len(groups) == 1
    assert "fmnist:hflip shift (set by hand)" in suite.set_group_lines(groups)[0]
    assert runconfig.ood_sets({"shift": ["fmnist:hflip"], "real": ["mnist"]}) == [("fmnist:hflip", "shift"), ("mnist", "real")]


@pytest.mark.parametrize("value", [{"semantic": ["fmnist:hflip"]}, {"shifts": ["fmnist:hflip"]}, {}])
def test_a_bad_group_name_is_one_sentence(value):
    with pytest.raises(ConfigError) as err:
        runconfig.resolve({"preset": "flow_rq_nsf_tiny", "data": {"ood": value}})
    assert "\n" not in str(err.value) and "'data.ood'" in str(err.value)


def test_a_blend_carries_its_dominant_images_label_so_it_can_be_measured():
    from genood.data.derived.blends import blend, partners
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4, 1)
    labels = np.array([0, 1, 2, 3, 4, 5])
    j = partners(6, np.random.default_rng(3))
    _, kept = blend(images, labels, 0.75, np.random.default_rng(3))
    assert kept.tolist() == labels.tolist()                  # x_i dominates
    _, kept = blend(images, labels, 0.25, np.random.default_rng(3))
    assert kept.tolist() == labels[j].tolist()               # its partner dominates
    assert all(a != b for a, b in zip(kept, labels))         # never itself
    assert blend(images, None, 0.5, np.random.default_rng(3))[1] is None


def test_the_measurement_table_prints_every_set_with_its_drop(tmp_path):
    rows = [semantics.Measured("toy:hflip", "corruption", "measured", 0.5, 0.9, 0.88),
            semantics.Measured("toy:noise=8", "shift", "measured", 0.85, 0.9, 0.88),
            semantics.Measured("toy:classes=1", "near", "derivation (changes the labels)", None, None, None)]
    text = semantics.table_markdown("toy", rows)
    assert "0.900 on clean in_test (0.880 on in_val)" in text
    assert "| toy:hflip | 0.500 | +0.400 | corruption |" in text
    assert "| toy:noise=8 | 0.850 | +0.050 | shift |" in text and "| toy:classes=1 | - | - | near |" in text
