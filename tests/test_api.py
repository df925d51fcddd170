"""The Python API (genood.api): the same code path as the runner, its doctests, the README's example."""
import doctest
import json
import re

import numpy as np
import pandas as pd
import pytest

import genood
from genood import api, runconfig
from genood.ood import runner
from tests.conftest import ROOT, needs_real_data


def test_the_api_doctests_pass():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


def test_the_api_is_reexported_from_the_package_and_nothing_else_is():
    assert genood.score is api.score and genood.open_model is api.open_model
    assert set(genood.__all__) - {"__version__"} <= set(api.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        genood.nothing  # noqa: B018


def _run(tiny_cfg, scores):
    cfg = runconfig.resolve(dict(tiny_cfg, ood=dict(tiny_cfg["ood"], scores=scores, bootstrap=50,
                                                     baselines=["intensity_mean"], n_generated=0)))
    return cfg, runner.run_ood(cfg, echo=False)


@needs_real_data
def test_a_score_through_the_api_equals_the_runners_for_the_same_configuration(tiny_cfg):
    cfg, directory = _run(tiny_cfg, ["log_likelihood", "typicality"])
    run = api.open_run(directory)
    model = api.open_model(directory)
    assert model.step == cfg["training"]["steps"] and model.finished
    table = run.scores
    data = {}
    in_name = cfg["data"]["in_distribution"]
    for split, source, part in (("in_train", in_name, "train"), ("in_val", in_name, "train"),
                                ("in_test", in_name, "test"), ("ood", cfg["data"]["ood"], "test")):
        index = table.loc[table["split"] == split, "index"].to_numpy()  # the runner's points, by their index
        data[split] = api.load_dataset(source, part).images[index]
    ours = api.score(model, data, ["log_likelihood", "typicality"], config=cfg)
    for split in ("in_train", "in_val", "in_test", "ood"):
        want = table.loc[table["split"] == split, "log_likelihood"].to_numpy()
        got = ours.table.loc[ours.table["split"] == split, "log_likelihood"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    mine = ours.metrics().set_index("detector")
    theirs = run.metrics.set_index("detector")
    for det in ("log_likelihood", "typicality", "baseline:intensity_mean"):
        assert mine.loc[det, "auroc"] == pytest.approx(theirs.loc[det, "auroc"], abs=1e-12)
        assert mine.loc[det, "auroc_lo"] == pytest.approx(theirs.loc[det, "auroc_lo"], abs=1e-12)
    # a second call reads the cached batches: the same numbers
    again = api.score(model, data, ["log_likelihood"], config=cfg)
    np.testing.assert_array_equal(again["log_likelihood"].to_numpy(), ours["log_likelihood"].to_numpy())
    assert {"roc"} <= set(run.figures()) and {"roc"} <= set(ours.figures())


def test_metrics_are_the_runners_metrics_with_intervals():
    from genood.ood.metrics import auroc
    rng = np.random.default_rng(0)
    s_in, s_ood = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    m = api.metrics(s_in, s_ood, bootstrap=300)
    assert m["auroc"] == pytest.approx(auroc(s_in, s_ood))
    # the AUROC is the probability that an in-distribution point outscores an OOD one: count the pairs
    assert m["auroc"] == pytest.approx(np.mean(s_in[:, None] > s_ood[None, :]))
    lo, hi = m["auroc_ci"]
    assert lo < m["auroc"] < hi and hi - lo < 0.15


def test_bad_input_to_the_api_is_one_sentence(tmp_path):
    with pytest.raises(runconfig.ConfigError, match="not a finished run directory") as err:
        api.open_run(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(runconfig.ConfigError, match="must hold stored images, uint8"):
        api._splits({"in_test": np.zeros((2, 28, 28, 1), dtype=np.float32)}, (1, 28, 28),
                    runconfig.resolve({}))
    with pytest.raises(runconfig.ConfigError, match="Sweep 'local-00000000' is not in"):
        api.open_sweep("local-00000000", runs_root=tmp_path)


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its API example (the block after <!-- api-example -->)"
    return block.group(1)


@needs_real_data
def test_the_readmes_api_example_runs_and_is_at_most_ten_lines():
    code = _readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (our own README, the example users copy)
    frame = scope["table"]
    assert isinstance(frame, pd.DataFrame) and {"detector", "auroc", "auroc_lo", "auroc_hi"} <= set(frame.columns)
    assert json.dumps(frame["auroc"].tolist())  # plain numbers
