"""Headroom: the selected detector of each model beside a supervised discriminator, per OOD set.

``sweep.py aggregate <id> --separability corruption,real`` measures (or reads from the cache,
:mod:`genood.ood.separability`) how well a classifier trained with both labels tells each chosen set from its
in-distribution, and writes ``separability.csv``: per model, in-distribution and set, the discriminator's AUROC
(optimistic: it saw the OOD labels), the selected label-free detector's AUROC, and the gap. A set where the
discriminator is near 1 and the detector is not is one the model or the score misses, not one the data hide.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import pandas as pd

from genood.reports import suite

__all__ = ["headroom", "headroom_lines", "headroom_figure", "headroom_cells"]

COLUMNS = ["model", "in_dataset", "ood_dataset", "ood_group", "detector", "detector_auroc", "separability_auroc",
           "separability_lo", "separability_hi", "paired", "gap", "optimistic"]


def headroom(sets: pd.DataFrame, picked: Dict[str, Dict[str, Any]], tokens: List[str],
             measure: Callable[[str, List[str]], list]) -> pd.DataFrame:
    """Rows of ``COLUMNS`` for the OOD sets of ``sets`` (a :func:`suite.per_set` frame) that ``tokens`` (groups or
    sets, as ``--select-on``) name, one per model with the detector ``picked`` chose for it;
    ``measure(in_dataset, names)`` returns the discriminator measurements in the order of ``names``."""
    judged = suite.ood_rows(sets)
    chosen = judged[suite.selection_mask(judged, tokens)]
    pairs = chosen[["in_dataset", "ood_dataset", "ood_group"]].drop_duplicates()
    found: Dict[tuple, Any] = {}
    for ind, g in pairs.groupby("in_dataset", sort=True):
        names = list(dict.fromkeys(g["ood_dataset"]))
        found.update({(ind, m.name): m for m in measure(ind, names)})
    rows = []
    for model, p in picked.items():
        mine = chosen[(chosen["model"] == model) & (chosen["detector"] == p.get("detector"))]
        for r in mine.itertuples(index=False):
            m = found.get((r.in_dataset, r.ood_dataset))
            if m is None:
                continue
            rows.append({"model": model, "in_dataset": r.in_dataset, "ood_dataset": r.ood_dataset,
                         "ood_group": r.ood_group, "detector": p["detector"], "detector_auroc": float(r.auroc),
                         "separability_auroc": m.auroc, "separability_lo": m.auroc_ci[0],
                         "separability_hi": m.auroc_ci[1], "paired": m.paired,
                         "gap": float(r.auroc) - m.auroc, "optimistic": True})
    return pd.DataFrame(rows, columns=COLUMNS)


def headroom_lines(table: pd.DataFrame) -> List[str]:
    """Console lines: per model, in-distribution and group, the detector's and the discriminator's mean, and the
    set with the largest gap."""
    if table.empty:
        return []
    lines = ["headroom (a supervised discriminator per set, optimistic: trained with the OOD labels; "
             "separability.csv has every set):"]
    for (model, ind, grp), g in table.groupby(["model", "in_dataset", "ood_group"], sort=False):
        w = g.loc[g["gap"].idxmin()]
        lines.append(f"  {model}, in {ind}, {grp} ({len(g)} set{'' if len(g) == 1 else 's'}): {g['detector'].iloc[0]} mean "
                     f"{g['detector_auroc'].mean():.3f}, discriminator mean {g['separability_auroc'].mean():.3f}; "
                     f"largest gap {w['ood_dataset']} {w['detector_auroc']:.3f} vs {w['separability_auroc']:.3f}")
    return lines


def headroom_cells(table: pd.DataFrame) -> Dict[tuple, pd.DataFrame]:
    """Per (model, in-distribution): one row a set with the detector's AUROC, the discriminator's with its
    interval and the gap, formatted for a report table (the largest gap first)."""
    out = {}
    for key, g in table.groupby(["model", "in_dataset"], sort=True):
        g = g.sort_values("gap")
        out[key] = pd.DataFrame({
            "group": g["ood_group"].to_numpy(),
            "detector": g["detector_auroc"].map(lambda v: f"{v:.3f}").to_numpy(),
            "discriminator (opt)": [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                                    zip(g["separability_auroc"], g["separability_lo"], g["separability_hi"])],
            "gap": g["gap"].map(lambda v: f"{round(v, 3) + 0.0:+.3f}" if round(v, 3) else "0.000").to_numpy(),
            "paired": g["paired"].map(lambda v: "yes" if v else "no").to_numpy()}, index=g["ood_dataset"].to_numpy())
    return out


def headroom_figure(table: pd.DataFrame):
    """The selected detector's AUROC against the discriminator's, one point a set, one panel per (model,
    in-distribution); the diagonal is 'the score finds all the data allow', the distance below it is headroom."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(table.groupby(["model", "in_dataset"], sort=True))
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    colour = {grp: palette[k % len(palette)] for k, grp in enumerate(sorted(table["ood_group"].unique()))}
    cols = min(3, max(1, len(panels)))
    fig = make_subplots(rows=-(-len(panels) // cols), cols=cols, subplot_titles=[f"{m}, in {i}" for (m, i), _ in panels])
    for k, ((model, ind), g) in enumerate(panels):
        at = dict(row=k // cols + 1, col=k % cols + 1)
        fig.add_trace(go.Scatter(x=[0.5, 1], y=[0.5, 1], mode="lines", line=dict(color="#aaa", dash="dot"),
                                 showlegend=False, hoverinfo="skip"), **at)
        for grp, h in g.groupby("ood_group", sort=True):
            fig.add_trace(go.Scatter(x=h["separability_auroc"], y=h["detector_auroc"], mode="markers", name=grp,
                                     marker=dict(color=colour[grp], size=8), legendgroup=grp, showlegend=k == 0, text=h["ood_dataset"],
                                     hovertemplate="%{text}: discriminator %{x:.3f}, detector %{y:.3f}"), **at)
    fig.update_xaxes(title_text="discriminator AUROC (optimistic)")
    fig.update_yaxes(title_text="selected detector AUROC")
    return fig
