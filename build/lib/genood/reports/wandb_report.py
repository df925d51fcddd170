"""A W&B Report of a sweep (through wandb-workspaces, W&B's library for reports): the counterpart of report.html.

``python sweep.py report <sweep-id> --wandb [--entity E] [--project P]`` builds, per model, a heading, the
pivot of detectors x (in -> ood) pairs with intervals as a Markdown table (best label-free detector per pair
marked), and per pair a panel grid over that pair's runs: the AUROC of every label-free detector as a bar
chart (summary values ``<detector>/auroc``, which every run logs), the likelihood-vs-score scatter charts and
histograms the runs logged (their ``charts/*`` tables), and the training curve; the aggregate table that
``sweep.py aggregate --wandb`` logs closes the report. ``save`` needs a W&B login and a reachable server
(``$WANDB_BASE_URL`` for a self-hosted one).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import pandas as pd

from genood.reports.aggregate import pair_label, pivots


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| detector | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in table.iterrows():
        lines.append(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _filters(model: str, ind: str, ood: Optional[str]) -> str:
    """Runs of one model and in-distribution, and of one OOD set unless the runs score several (``ood`` None)."""
    family = model.split("/", 1)[0]
    return (f"Config('model.family') == '{family}' and Config('data.in_distribution') == '{ind}'"
            + (f" and Config('data.ood') == '{ood}'" if ood is not None else ""))


def build(frame: pd.DataFrame, sweep_id: str, entity: str, project: str, loss_names: Optional[Dict[str, str]] = None):
    """The report object (nothing is sent until ``.save()``)."""
    import wandb_workspaces.reports.v2 as wr

    loss_names = loss_names or {}
    test_rows = frame[~frame["detector"].str.startswith("generated_vs_ood/")]
    blocks: List = [
        wr.H1(f"OOD detection: sweep {sweep_id}"),
        wr.P(f"{test_rows['run'].nunique()} runs, {test_rows[['in_dataset', 'ood_dataset']].drop_duplicates().shape[0]} "
             "(in-distribution -> OOD) pairs. AUROC with 95% bootstrap intervals; in-distribution is the positive class; "
             "* marks the best label-free per-point detector of a pair; (opt) entries chose something with OOD labels "
             "and are upper bounds, never headlines."),
        wr.TableOfContents(),
    ]
    for model, table in pivots(frame).items():
        blocks += [wr.H2(model), wr.MarkdownBlock(_markdown(table))]
        rows = test_rows[test_rows["model"] == model]
        label_free = sorted(rows.loc[rows["label_free"] & ~rows["optimistic"] & ~rows["per_batch"], "detector"].unique())
        family = model.split("/", 1)[0]
        suite_runs = set(rows.groupby("run")["ood_dataset"].nunique().loc[lambda n: n > 1].index)
        for (ind, ood), pair in rows.groupby(["in_dataset", "ood_dataset"]):
            several = bool(set(pair["run"]) & suite_runs)  # one run scored several OOD sets: summaries name set and group
            head = f"ood/{pair['ood_group'].iloc[0]}/{ood}/" if several and "ood_group" in pair else ""
            runset = wr.Runset(entity=entity, project=project, name=f"{model}: {pair_label(ind, ood)}",
                               filters=_filters(model, ind, None if several else ood))
            panels = [wr.BarPlot(title=f"AUROC, label-free detectors ({pair_label(ind, ood)})",
                                 metrics=[wr.SummaryMetric(f"{head}{d}/auroc") for d in label_free], orientation="h"),
                      wr.LinePlot(title="training curve", x="Step", y=[f"train/{loss_names.get(family, 'loss')}"])]
            blocks += [wr.H3(pair_label(ind, ood)), wr.PanelGrid(runsets=[runset], panels=panels)]
    blocks += [wr.H2("Aggregate table"),
               wr.WeaveBlockSummaryTable(entity=entity, project=project, table_name="aggregate")]
    return wr.Report(project=project, entity=entity, title=f"OOD detection: {sweep_id}",
                     description="Built by `python sweep.py report --wandb` from the sweep's runs.", blocks=blocks)


def save(frame: pd.DataFrame, sweep_id: str, entity: Optional[str], project: str) -> str:
    """Build and save the report; returns its URL. Fails in one sentence without a login or a reachable server."""
    from genood import runconfig
    from genood.orchestration.wandb_backend import require_wandb

    require_wandb()
    report = build(frame, sweep_id, entity or "", project, {n: f.loss for n, f in runconfig.FAMILIES.items()})
    report.save()
    return report.url
