"""Per-run figures: the likelihood-paradox histogram and ROC curves.

HTML is written with ``include_plotlyjs="directory"`` (one shared plotly.min.js beside the
files, so the pages work offline). PNG export uses kaleido, which needs a Chromium
(``make setup`` installs Debian's); without one, PNGs are skipped with a warning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from genood.rundir import atomic_write

SPLIT_STYLE = {  # as in the seeds' figure: blues in-distribution, red OOD, gold generated
    "in_train": ("In-distribution train", "#1f4e9c"),
    "in_val": ("In-distribution val", "#6a3d9a"),
    "in_test": ("In-distribution test", "#5b9bd5"),
    "ood": ("OOD", "#c0392b"),
    "generated": ("Generated", "#d4a017"),
}
# a run scored on several OOD sets (the suite) draws each in its own colour, reds and browns first
OOD_COLOURS = ("#c0392b", "#e67e22", "#8c564b", "#d62728", "#ff7f0e", "#7f7f7f", "#bcbd22", "#17becf", "#e377c2",
               "#2ca02c", "#9467bd", "#393b79")
MAX_OOD_TRACES = 12  # OOD sets drawn per figure; the legend says how many more the tables have


def split_groups(frame, max_ood: int = MAX_OOD_TRACES):
    """The traces of a per-split figure: ``[(label, colour, rows)]`` for the in-distribution splits, then each
    OOD set, then the generated samples, for the rows of ``frame`` (a table with ``split`` and ``dataset``
    columns). OOD rows come either as split ``ood`` (one set, or several told apart by ``dataset``) or as
    splits ``ood@<set>`` (the per-point stages of a multi-set run); each set gets its own trace, at most
    ``max_ood`` of them; a last ``(label, None, None)`` entry says how many were left out."""
    if frame is None or len(frame) == 0:
        return []
    split = frame["split"].astype(str)
    out = []
    for name in ("in_train", "in_val", "in_test"):
        part = frame[split == name]
        if len(part):
            out.append((SPLIT_STYLE[name][0], SPLIT_STYLE[name][1], part))
    ood = frame[(split == "ood") | split.str.startswith("ood@")]
    keys = ood["split"].astype(str) + "|" + ood["dataset"].astype(str)
    names = list(dict.fromkeys(keys))
    for k, key in enumerate(names[:max_ood]):
        part = ood[keys == key]
        label = "OOD" if len(names) == 1 else f"OOD {part['dataset'].iloc[0]}"
        out.append((label, OOD_COLOURS[k % len(OOD_COLOURS)], part))
    part = frame[split == "generated"]
    if len(part):
        out.append((SPLIT_STYLE["generated"][0], SPLIT_STYLE["generated"][1], part))
    if len(names) > max_ood:
        out.append((f"(+{len(names) - max_ood} more OOD sets in the tables)", None, None))
    return out


def run_title(directory: Path, fallback: str) -> str:
    """``<in-distribution> vs <OOD sets>`` from a run directory's config.yaml, for the figures a stage draws
    from its own per-point files (they hold every OOD set it scored, not only the report's first pair)."""
    import yaml

    try:
        return config_title(yaml.safe_load((Path(directory) / "config.yaml").read_text()) or {})
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return fallback


def config_title(cfg) -> str:
    """``<in-distribution> vs <OOD sets>`` of a run configuration."""
    return f"{cfg['data']['in_distribution']} vs {ood_title(cfg['data']['ood'])}"


def trace_name(label: str, part, detail: str = "") -> str:
    """A legend entry: the group's label, then its dataset (unless the label names it) and ``detail``."""
    dataset = str(part["dataset"].iloc[0])
    inner = ", ".join(x for x in ((dataset if dataset not in label else ""), detail) if x)
    return f"{label} ({inner})" if inner else label


def ood_title(ood) -> str:
    """A run's ``data.ood`` for a figure title: the set's name, or how many sets in which groups."""
    from genood import runconfig

    sets = runconfig.ood_sets(ood)
    if len(sets) == 1:
        return str(sets[0][0])
    present = {str(g) for _, g in sets}
    groups = [g for g in runconfig.OOD_GROUPS if g in present] + sorted(present - set(runconfig.OOD_GROUPS))
    return f"{len(sets)} sets ({', '.join(groups)})"


def add_left_out_note(fig, groups) -> None:
    """A legend-only entry for the OOD sets :func:`split_groups` left out of a figure."""
    for label, colour, part in groups:
        if part is None:
            fig.add_scatter(x=[None], y=[None], mode="markers", name=label, marker=dict(color="white"))


def score_histogram(scores, column: str = "log_likelihood", title: str = "", bins: int = 66):
    """Overlaid density histograms of one score column, one trace per split (the paradox figure)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    # a common bin range covering the bulk (0.5-99.5 percentiles) of every split
    los, his = [], []
    for _, part in scores.groupby("split"):
        v = part[column].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            los.append(np.percentile(v, 0.5))
            his.append(np.percentile(v, 99.5))
    lo, hi = (min(los), max(his)) if los else (0.0, 1.0)
    size = (hi - lo) / bins if hi > lo else 1.0
    groups = split_groups(scores)
    for label, colour, part in groups:
        if part is None:
            continue
        fig.add_trace(go.Histogram(x=part[column], name=trace_name(label, part, f"n={len(part)}"),
                                   marker_color=colour, opacity=0.55, histnorm="probability density",
                                   xbins=dict(start=lo, end=hi, size=size)))
    add_left_out_note(fig, groups)
    fig.update_layout(barmode="overlay", title=title, xaxis_title=column, yaxis_title="density",
                      template="plotly_white", legend=dict(orientation="h", y=-0.2), width=900, height=520)
    return fig


def lid_curve_figure(curves, log_tau: float, title: str = "", max_lines: int = 60, knob: str = "log_tau"):
    """LID against the estimator's knob (log tau, log t0, ...): faint lines for individual points, bold mean
    per split, the chosen value dashed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = split_groups(curves)
    for label, colour, part in groups:
        if part is None:
            continue
        for k, (_, pt) in enumerate(part.groupby("index", sort=False)):
            if k >= max_lines:
                break
            fig.add_trace(go.Scatter(x=pt[knob], y=pt["lid"], mode="lines", line=dict(color=colour, width=0.6),
                                     opacity=0.25, showlegend=False, hoverinfo="skip"))
        mean = part.groupby(knob)["lid"].mean()
        fig.add_trace(go.Scatter(x=mean.index, y=mean.values, mode="lines", line=dict(color=colour, width=3),
                                 name=trace_name(label, part, f"mean of {part['index'].nunique()}")))
    add_left_out_note(fig, groups)
    label = knob.replace("_", " ")
    fig.add_vline(x=log_tau, line_dash="dash", line_color="black", annotation_text=f"{label} = {log_tau:.2f}")
    fig.update_layout(title=title, xaxis_title=label, yaxis_title=f"LID(x; {label})", template="plotly_white",
                      legend=dict(orientation="h", y=-0.2), width=900, height=560)
    return fig


def lid_scatter(scores, title: str = ""):
    """LID against log-likelihood per split (the seeds' scatter): OOD points sit at high likelihood, low LID."""
    import plotly.graph_objects as go

    fig = go.Figure()
    have = scores.dropna(subset=["lid"])
    groups = split_groups(have)
    for label, colour, part in groups:
        if part is None:
            continue
        fig.add_trace(go.Scatter(x=part["log_likelihood"], y=part["lid"], mode="markers", name=trace_name(label, part),
                                 marker=dict(color=colour, size=6, opacity=0.6)))
    add_left_out_note(fig, groups)
    fig.update_layout(title=title, xaxis_title="log-likelihood (nats)", yaxis_title="LID", template="plotly_white",
                      legend=dict(orientation="h", y=-0.2), width=900, height=560)
    return fig


def roc_figure(curves: Dict[str, tuple], title: str = ""):
    """ROC curves: ``curves[name] = (fpr, tpr, auroc)``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, (fpr, tpr, auc) in curves.items():
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {auc:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dot", color="grey")))
    fig.update_layout(title=title, xaxis_title="FPR (OOD accepted)", yaxis_title="TPR (in-distribution accepted)",
                      template="plotly_white", width=700, height=600)
    return fig


def suite_heatmap(metrics: Dict[str, Dict], sets: List[tuple], title: str = ""):
    """AUROC of every label-free per-point detector (rows) on every OOD set (columns, ordered by group) of a
    run with several OOD sets (metrics keys ``<set>::<detector>``); model-free baselines marked (mf)."""
    import plotly.graph_objects as go

    rows: Dict[str, Dict[str, float]] = {}
    for key, entry in metrics.items():
        if "::" not in key or "/" in key.split("::", 1)[1] or entry.get("optimistic") or entry.get("per") == "batch":
            continue
        name = key.split("::", 1)[1] + (" (mf)" if entry.get("model_free") else "")
        rows.setdefault(name, {})[key.split("::", 1)[0]] = entry.get("auroc")
    from genood.runconfig import GROUP_ORDER
    measured = {e["ood_dataset"]: e["ood_group"] for e in metrics.values() if isinstance(e, dict) and "ood_group" in e}
    sets = [(n, measured.get(n, grp)) for n, grp in sets]  # transform sets carry their measured group
    order = [n for g in GROUP_ORDER for n, grp in sets if grp == g]
    labels = sorted(rows)
    z = [[rows[r].get(c, float("nan")) for c in order] for r in labels]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{c} ({dict(sets)[c]})" for c in order], y=labels, zmin=0, zmax=1,
                               colorscale="RdBu", colorbar=dict(title="AUROC"),
                               text=[[f"{v:.2f}" if v == v else "" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_layout(title=title, template="plotly_white", height=max(320, 18 * len(labels) + 160),
                      width=max(640, 46 * len(order) + 320), xaxis=dict(tickangle=-45))
    return fig


def write_figures(figs: Dict[str, object], directory: Path, png: bool, warn: Callable[[str], None]) -> List[Path]:
    """Write each figure as ``<name>.html`` (and ``.png`` when possible), atomically. Returns the paths. The PNGs
    are rendered in a child process with a deadline (:mod:`genood.ood.png_export`): a Chromium that hangs costs a
    warning, never the run."""
    from genood.ood import png_export

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        target = directory / f"{name}.html"
        atomic_write(target, lambda p, f=fig: f.write_html(str(p), include_plotlyjs="directory", full_html=True))
        written.append(target)
    if png and figs:
        paths = [directory / f"{name}.png" for name in figs]
        tmp = [p.with_name(f".{p.stem}.tmp.png") for p in paths]
        try:
            sizes = [(f.layout.width or 900, f.layout.height or 520) for f in figs.values()]  # kaleido ignores layout size
            png_export.export(list(figs.values()), tmp, sizes)
            for t, p in zip(tmp, paths):
                t.replace(p)
            written.extend(paths)
        except Exception as exc:  # no Chromium, kaleido failed, or Chromium hung past the deadline
            for t in tmp:
                t.unlink(missing_ok=True)
            first = str(exc).splitlines()[0] if str(exc) else ""
            warn(f"PNG export skipped ({type(exc).__name__}: {first}); the HTML figures are written; run `make setup` "
                 f"to install Chromium for kaleido.")
    return written
