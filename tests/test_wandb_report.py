"""The W&B Report of a sweep, built with wandb-workspaces up to the save call (saving needs a W&B server)."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from genood.reports import wandb_report
from genood.reports.aggregate import COLUMNS, EXTRA_COLUMNS
from tests.conftest import ROOT


def _frame():
    rows = []
    for model, fam in (("flow/rq_nsf/flow_rq_nsf_tiny", "flow"), ("hvae/dlml/hvae_tiny", "hvae")):
        for ind, ood in (("fmnist", "mnist"), ("mnist", "fmnist")):
            for det, auroc, lf, opt in (("log_likelihood", 0.1, True, False), ("complexity", 0.9, True, False),
                                        ("dual_threshold", 0.99, False, True)):
                rows.append({"model": model, "in_dataset": ind, "ood_dataset": ood, "detector": det, "auroc": auroc,
                             "aupr_in": auroc, "aupr_out": auroc, "fpr95": 0.5, "n_in": 100, "n_ood": 100,
                             "run": f"{fam}-{ind}", "auroc_lo": auroc - 0.01, "auroc_hi": auroc + 0.01,
                             "label_free": lf, "optimistic": opt, "per_batch": False, "seed": 0, "group": f"{fam}{ind}"})
    return pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)


def test_the_report_has_the_pivot_and_a_panel_grid_per_pair():
    import wandb_workspaces.reports.v2 as wr

    report = wandb_report.build(_frame(), "local-abc", "lab", "likelihood-paradox", {"flow": "bits_per_dim", "hvae": "nelbo_bpd"})
    assert report.project == "likelihood-paradox" and report.entity == "lab"
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 4  # 2 models x 2 pairs
    tables = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert len(tables) == 2 and "0.900 [0.890, 0.910] *" in tables[0].text and "dual_threshold (opt)" in tables[0].text
    first = grids[0]
    (runset,) = first.runsets
    assert runset.filters == ("Config('model.family') == 'flow' and Config('data.in_distribution') == 'fmnist' "
                              "and Config('data.ood') == 'mnist'")
    bar, line = first.panels
    assert [m.name for m in bar.metrics] == ["complexity/auroc", "log_likelihood/auroc"]  # label-free only
    assert line.y == ["train/bits_per_dim"]
    assert any(isinstance(b, wr.WeaveBlockSummaryTable) and b.table_name == "aggregate" for b in report.blocks)
    # every block that needs no server converts to W&B's report spec (what save() sends)
    for block in report.blocks:
        if not isinstance(block, (wr.PanelGrid, wr.WeaveBlockSummaryTable)):
            block._to_model()
    for panel in bar, line:
        panel._to_model()


def test_report_wandb_without_a_login_is_one_sentence(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY",)}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    out = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(tmp_path / "runs"), "report",
                          "entity/project/abc123", "--wandb"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and "needs a login" in out.stderr and "Traceback" not in out.stderr
