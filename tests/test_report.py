"""The sweep report: one self-contained HTML page opened in a real headless Chromium (Debian's chromium +
chromedriver through selenium), with no network, no JavaScript console errors, and every plot drawn."""
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from genood import runconfig
from genood.ood.runner import run_ood
from genood.reports import report
from genood.reports.aggregate import collect_runs, format_pivot, pivots


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs (both orders of a pair of small generated image sets) with every kind of score."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    blobs = rng.integers(0, 120, size=(160, 8, 8), dtype=np.uint8)
    flat = (np.full((160, 8, 8), 60) + rng.integers(0, 3, size=(160, 8, 8))).astype(np.uint8)
    np.savez(tmp / "a.npz", images=blobs)
    np.savez(tmp / "b.npz", images=flat)
    from tests.conftest import TINY_MODEL
    dirs = []
    for ind, ood in (("a", "b"), ("b", "a")):
        cfg = runconfig.resolve({
            "run": {"runs_root": str(tmp / "runs"), "sweep_id": "report-test"},
            "data": {"in_distribution": f"npz:{tmp / f'{ind}.npz'}", "ood": f"npz:{tmp / f'{ood}.npz'}", "val_fraction": 0.2},
            "model": dict(TINY_MODEL), "tracking": {"wandb": False},
            "training": {"steps": 20, "batch_size": 16, "progress": False, "sample_grid": 4},
            "ood": {"scores": ["log_likelihood", "bits_per_dim", "complexity", "derivative_norm", "typicality", "lid"],
                    "n_generated": 8, "png": False, "bootstrap": 200},
            "lid": {"n_per_split": 6, "log_tau_grid": [-8.0, 2.0, 6]},
            "combined": {"sets": [["log_likelihood", "complexity"]], "max_components": 2},
            "typicality": {"batch_sizes": [4]}})
        dirs.append(run_ood(cfg, echo=False))
    return tmp, dirs


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, ("the report test needs Debian's chromium and chromium-driver "
                                "(`make setup` installs them as root; else `apt-get install chromium chromium-driver`)")
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1300,900"):  # no network at all
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_report_opens_in_headless_chromium_without_errors_and_draws_every_plot(two_runs, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    _, dirs = two_runs
    frame, unfinished = collect_runs(dirs)
    assert unfinished == 0
    page = report.write(frame, dirs, tmp_path / "elsewhere" / "report.html")  # away from the runs: no sibling files
    text = page.read_text()
    markup = re.sub(r"<script>.*?</script>", "<script></script>", text, flags=re.S)  # plotly.js's own strings aside
    assert "<script src" not in markup and "<link" not in markup
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", markup), "the page must not load other files"
    expected = text.count("class='plot'")
    assert expected >= 2 + 2 * 6  # heatmap(s), then per run: histogram, 5 scatters (one per score), ROC, LID curves
    driver = _chromium()
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.querySelectorAll('.plot .main-svg').length > 0 && "
                                       "document.querySelectorAll('.plot').length === "
                                       "document.querySelectorAll('.plot.js-plotly-plot').length"))
        drawn = driver.execute_script("return document.querySelectorAll('.plot.js-plotly-plot').length")
        traces = driver.execute_script("return Array.from(document.querySelectorAll('.plot.js-plotly-plot'))"
                                       ".map(e => e.data.length)")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        title = driver.title
    finally:
        driver.quit()
    assert errors == [], errors
    assert drawn == expected and all(n >= 1 for n in traces), (drawn, expected, traces)
    assert "OOD detection" in title
    # what the page says: the pivot with intervals, the best label-free detector marked, the optimistic envelope
    assert "density:log_likelihood+complexity" in text and "&#9733;" in text and "dual_threshold (opt)" in text
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", text)
    assert markup.count("data:image/png;base64,") == 2  # both runs' sample grids, embedded


def test_console_pivot_has_intervals_marks_and_fits_100_columns(two_runs):
    _, dirs = two_runs
    frame, _ = collect_runs(dirs)
    text = format_pivot(frame)
    assert max(len(line) for line in text.splitlines()) <= 100
    tables = pivots(frame)
    (model, table), = tables.items()
    assert set(table.columns) == {"a.npz->b.npz", "b.npz->a.npz"}
    cells = [v for col in table.columns for v in table[col]]
    assert all(re.fullmatch(r"(\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]|\d\.\d{3}|-)( \*)?", v) for v in cells), cells
    for col in table.columns:  # exactly one best label-free detector per pair, and never an optimistic one
        marked = [name for name, v in table[col].items() if v.endswith(" *")]
        assert len(marked) == 1 and not marked[0].endswith("(opt)")
    assert {"label_free", "optimistic", "auroc_lo", "auroc_hi"} <= set(frame.columns)
    assert frame.loc[frame.detector == "dual_threshold", "optimistic"].all()
    assert not frame.loc[frame.detector.str.startswith("density:"), "optimistic"].any()
    # the one label-free detector with the best worst pair, against a direct computation over the summary
    from genood.reports.aggregate import best_over_pairs
    (best,) = best_over_pairs(frame).values()
    ok = frame[frame.label_free & ~frame.optimistic & ~frame.per_batch & ~frame.detector.str.startswith("generated_vs_ood/")]
    worst = ok.groupby("detector").filter(lambda g: len(g) == 2).groupby("detector")["auroc"].min()  # one run per pair
    assert best["detector"] == worst.idxmax() and best["worst"] == pytest.approx(worst.max())
    assert best["worst"] == min(best["pairs"].values()) and "best label-free detector over every pair" in text


def test_aggregate_table_goes_to_wandb_as_a_table_offline(two_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from genood.reports.aggregate import log_to_wandb
    _, dirs = two_runs
    frame, _ = collect_runs(dirs)
    run_id = log_to_wandb(frame, "local-test", tmp_path)
    (run_dir,) = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    tables = list(run_dir.rglob("aggregate_*.table.json")) + list(run_dir.rglob("aggregate_seeds_*.table.json"))
    assert tables, "the aggregate wandb.Table was not written"
    import json
    data = json.loads(sorted(tables)[0].read_text())
    assert "auroc" in data["columns"] and len(data["data"]) == len(frame)


def test_seed_summary_is_a_t_interval_clipped_to_the_unit_range():
    from scipy.stats import t as student_t

    from genood.reports.aggregate import seed_summary
    vals = [0.90, 0.99, 1.0]
    frame = pd.DataFrame({"model": "m", "in_dataset": "a", "ood_dataset": "b", "detector": "d", "group": "g",
                          "seed": [0, 1, 2], "label_free": True, "optimistic": False, "per_batch": False,
                          "n_in": 10, "n_ood": 10, "auroc": vals, "aupr_in": vals, "aupr_out": vals,
                          "fpr95": [0.0, 0.01, 0.3],
                          **{f"{m}_{e}": 0.5 for m in ("auroc", "aupr_in", "aupr_out", "fpr95") for e in ("lo", "hi")}})
    (row,) = seed_summary(frame).to_dict("records")
    half = student_t.ppf(0.975, 2) * np.std(vals, ddof=1) / np.sqrt(3)
    assert row["n_seeds"] == 3 and row["auroc"] == pytest.approx(np.mean(vals))
    assert row["auroc_lo"] == pytest.approx(np.mean(vals) - half) and row["auroc_hi"] == 1.0  # not mean + half > 1
    assert row["fpr95_lo"] == 0.0 and row["fpr95_hi"] < 1.0
