"""One self-contained HTML report of a sweep: opens with no network and no sibling files.

    python sweep.py report <sweep-id>            (also written by `sweep.py aggregate`)
    python -m genood.reports.report runs/demo --out report.html

Contents: per model, a pivot of detectors x (in -> ood) pairs with bootstrap (or across-seed) intervals,
the best label-free detector of each pair marked; an AUROC heatmap; the LID-error table when runs
measured one; then per run the log-likelihood histograms per split, every score against the
log-likelihood (the seeds' scatter figures), LID curves, the ROC curves of every detector with the
dual-threshold envelope, and the sample grid. plotly.js and the images are embedded.
"""
from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from genood import rundir
from genood.reports.collect import (best_over_pairs, best_over_pairs_line, collect_lid_errors, collect_runs, pair_label, pivots,
                               seed_summary)

MAX_SCATTER = 1500   # points per split in a scatter (seeded subsample): keeps the page light
MAX_ROC = 400        # points per ROC curve drawn

CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222}"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:13px;text-align:left;white-space:nowrap}th{background:#f3f3f3}td.best{font-weight:bold;"
       "background:#e8f4e8}tr.opt td{font-style:italic;color:#777}.bad{color:#c0392b}"
       "details{margin:1em 0;border-top:1px solid #ddd;padding-top:0.5em}summary{font-size:1.1em;cursor:pointer}"
       ".grid{display:flex;flex-wrap:wrap;gap:8px}.plot{width:560px;height:380px}img{border:1px solid #eee}")


class Page:
    """Collects HTML parts and plotly figures (each drawn into its own div by one embedded script)."""

    def __init__(self):
        self.parts: List[str] = []
        self.figures: List[tuple] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig, width: int = 560, height: int = 380) -> None:
        div = f"plot{len(self.figures)}"
        fig.update_layout(width=width, height=height, margin=dict(l=50, r=20, t=50, b=45), template="plotly_white")
        self.figures.append((div, fig.to_json()))
        self.parts.append(f"<div class='plot' id='{div}' style='width:{width}px;height:{height}px'></div>")

    def render(self, title: str) -> str:
        from plotly.offline import get_plotlyjs

        calls = "".join(f"draw('{div}',{spec});" for div, spec in self.figures)
        script = ("function draw(id,spec){Plotly.newPlot(id,spec.data,spec.layout,"
                  "{displaylogo:false,responsive:false,staticPlot:false});}" + calls)
        return ("<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{CSS}</style>"
                f"<script>{get_plotlyjs()}</script></head><body>" + "".join(self.parts)
                + f"<script>{script}</script></body></html>")


def _pivot_html(frame: pd.DataFrame, page: Page) -> None:
    over = best_over_pairs(frame)
    for model, table in pivots(frame).items():
        page.add(f"<h3>{html.escape(model)}</h3><table><tr><th>detector</th>"
                 + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
        for name, row in table.iterrows():
            opt = name.endswith(" (opt)")
            cells = []
            for v in row:
                best = v.endswith(" *")
                text = html.escape(v[:-2] if best else v)
                bad = v[:5].replace(".", "", 1).isdigit() and float(v[:5]) < 0.5
                cls = "best" if best else ("bad" if bad else "")
                cells.append(f"<td class='{cls}'>{text}{' &#9733;' if best else ''}</td>")
            page.add(f"<tr class='{'opt' if opt else ''}'><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
        page.add("</table>")
        if model in over:
            page.add(f"<p>{html.escape(best_over_pairs_line(over[model]))}</p>")


def _heatmap(frame: pd.DataFrame, page: Page) -> None:
    import plotly.graph_objects as go

    summary = seed_summary(frame[~frame["detector"].str.startswith("generated_vs_ood/")])
    for model, g in summary.groupby("model", sort=True):
        g = g.assign(pair=[pair_label(a, b) for a, b in zip(g["in_dataset"], g["ood_dataset"])])
        z = g.pivot_table(index="detector", columns="pair", values="auroc", aggfunc="mean")
        fig = go.Figure(go.Heatmap(z=z.values, x=list(z.columns), y=list(z.index), zmin=0, zmax=1, colorscale="RdBu",
                                   text=[[f"{v:.3f}" if v == v else "" for v in row] for row in z.values],
                                   texttemplate="%{text}", colorbar=dict(title="AUROC")))
        fig.update_layout(title=f"AUROC: {model}")
        page.figure(fig, width=min(1100, 320 + 160 * z.shape[1]), height=max(320, 60 + 26 * z.shape[0]))


def histogram(table: pd.DataFrame, column: str, title: str):
    import plotly.graph_objects as go

    finite = table[np.isfinite(table[column].to_numpy(dtype=float))]
    lo, hi = np.nanquantile(finite[column], [0.005, 0.995]) if len(finite) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 61)
    fig = go.Figure()
    from genood.ood.figures import add_left_out_note, split_groups

    groups = split_groups(finite)
    for label, colour, part in groups:
        v = part[column].to_numpy(dtype=float) if part is not None else np.empty(0)
        if v.size:
            dens, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges, density=True)
            fig.add_bar(x=0.5 * (edges[1:] + edges[:-1]), y=dens, name=f"{label} ({v.size})", marker_color=colour,
                        opacity=0.55)
    add_left_out_note(fig, groups)
    fig.update_layout(barmode="overlay", bargap=0, title=title, xaxis_title=column, yaxis_title="density")
    return fig


# drawn beside the selected detector and baseline in the severity curves: the likelihood itself (the paradox)
SEVERITY_REFERENCE = ("log_likelihood",)


def _thin(x: np.ndarray, y: np.ndarray, n: int):
    if x.size <= n:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, n).round().astype(int))
    return x[keep], y[keep]


def roc_figure(directory: Path, table: pd.DataFrame, metrics: Dict, title: str, prefix: str = "", only=None):
    import plotly.graph_objects as go

    from genood.ood.metrics import roc_curve_points

    fig = go.Figure()
    path = directory / "detector_values.parquet"
    if path.exists():
        values = pd.read_parquet(path)
        for key, g in values.groupby("detector", sort=True):
            if not key.startswith(prefix) or "::" in key[len(prefix):]:
                continue  # a run with several OOD sets: the curves of its first set (``prefix`` = "<set>::")
            key = key[len(prefix):]
            if key.startswith("generated_vs_ood/") or (only is not None and key not in only):
                continue
            pos, neg = g.loc[g.side == "in", "value"].to_numpy(), g.loc[g.side == "ood", "value"].to_numpy()
            if pos.size and neg.size:
                fpr, tpr = _thin(*roc_curve_points(pos, neg), MAX_ROC)
                auc = metrics.get(key, {}).get("auroc", float("nan"))
                fig.add_scatter(x=fpr, y=tpr, mode="lines", name=f"{key} ({auc:.3f})", line=dict(width=1.5))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), showlegend=False)
    fig.update_layout(title=title, xaxis_title="false positive rate (OOD accepted)", yaxis_title="true positive rate",
                      legend=dict(font=dict(size=9)))
    return fig


def _run_pair(directory: Path):
    """(cfg, metrics, table, pair label, prefix) of one OOD run, restricted to its first OOD set; None when the
    directory is not an OOD job (e.g. the orchestration's sleep job)."""
    import yaml

    metrics = json.loads((directory / "metrics.json").read_text())
    cfg = yaml.safe_load((directory / "config.yaml").read_text()) or {}
    if "data" not in cfg:
        return None
    from genood import runconfig
    from genood.data.registry import canonical_name

    sets = runconfig.ood_sets(cfg["data"]["ood"])
    first = sets[0][0]
    prefix = f"{first}::" if len(sets) > 1 else ""
    pair = f"{cfg['data']['in_distribution']} -> {first}" + (f" (first of {len(sets)} OOD sets)" if prefix else "")
    scores_path = directory / "scores.parquet"
    table = pd.read_parquet(scores_path) if scores_path.exists() else pd.DataFrame()
    if prefix and len(table):
        table = table[(table["split"] != "ood") | (table["dataset"] == canonical_name(first))]
        metrics = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    return cfg, metrics, table, pair, prefix


def run_figures(directory: Path) -> Dict[str, Any]:
    """The report's figures of one finished run directory as plotly figures, by name, in the page's order: each
    score's own figures (``<score>`` or ``<score>:<i>``, as its registration draws them), ``roc`` (every detector
    on the first OOD set), and where the run has them ``ood_curves`` (during training) and ``model_views``."""
    got = _run_pair(Path(directory))
    if got is None:
        return {}
    _, metrics, table, pair, prefix = got
    from genood.ood import scores as score_registry

    figs: Dict[str, Any] = {}
    for name in dict.fromkeys(c.split("@", 1)[0] for c in table.columns if c not in ("split", "dataset", "index")):
        spec = score_registry.REGISTRY.get(name)
        drawn = list(spec.report(directory, table, metrics, pair) if spec is not None and spec.report else [])
        for i, fig in enumerate(drawn):  # the figures a score's registration brings
            figs[name if len(drawn) == 1 else f"{name}:{i}"] = fig
    figs["roc"] = roc_figure(directory, table, metrics, f"ROC of every detector ({pair})", prefix)
    from genood.models.ood_curves import curves_figure
    curves = curves_figure(directory, f"OOD curves during training ({pair})")  # a run artifact, when training made one
    if curves is not None:
        figs["ood_curves"] = curves
    from genood.models.views import views_figure
    views = views_figure(directory, f"model views ({pair})")  # coupling layers and latents, when the family has them
    if views is not None:
        figs["model_views"] = views
    return figs


def _run_section(directory: Path, page: Page) -> None:
    got = _run_pair(directory)
    if got is None:  # not an OOD job: nothing to draw
        return
    pair = got[3]
    page.add(f"<details><summary>{html.escape(directory.name)} ({html.escape(pair)})</summary><div class='grid'>")
    for fig in run_figures(directory).values():
        page.figure(fig)
    samples = directory / "figures" / "samples.png"
    if samples.exists():
        data = base64.b64encode(samples.read_bytes()).decode()
        page.add(f"<div><p>samples from the model</p><img alt='samples' width='380' src='data:image/png;base64,{data}'></div>")
    page.add("</div></details>")


def _table_html(table: pd.DataFrame, first: str = "detector") -> str:
    head = f"<table><tr><th>{first}</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns) + "</tr>"
    body = "".join("<tr><td>" + html.escape(str(name)) + "</td>"
                   + "".join(f"<td class='{'bad' if str(v).endswith('!') else ''}'>{html.escape(str(v))}</td>" for v in row)
                   + "</tr>" for name, row in table.iterrows())
    return head + body + "</table>"


def _headroom_html(table: pd.DataFrame, page: Page) -> None:
    """``--separability``'s measurement: the selected detector beside a supervised discriminator, per set."""
    from genood.reports.headroom import headroom_cells, headroom_figure

    page.add("<h3>Headroom: the selected detector beside a supervised discriminator</h3><p>A small CNN trained "
             "with both labels (the in-distribution's and the set's training splits) tells each set from the "
             "in-distribution; its AUROC on the test splits is optimistic (it saw the OOD labels) and bounds from "
             "below what the data allow. A set far below the diagonal is one the model or the score misses, not one "
             "the data hide. Sorted by gap, largest first.</p>")
    for (model, ind), cells in headroom_cells(table).items():
        page.add(f"<p><b>{html.escape(str(model))}, in {html.escape(str(ind))}</b>: "
                 f"{html.escape(str(table.loc[table['model'] == model, 'detector'].iloc[0]))}</p>"
                 + _table_html(cells, first="OOD set"))
    n = table.groupby(["model", "in_dataset"]).ngroups
    page.figure(headroom_figure(table), width=1100, height=340 * max(1, -(-n // 3)))


def _suite_html(frame: pd.DataFrame, page: Page, select_on: Optional[List[str]], run_dirs=(),
                headroom: Optional[pd.DataFrame] = None, per_seed: Optional[pd.DataFrame] = None) -> None:
    """The OOD suite: per model the group summary (mean/worst per group), the detectors x sets table with the
    sets a learned detector loses to the best model-free baseline marked '!', the selected detector's lines and
    the severity curves; with ``headroom`` (``--separability``) the detector beside a supervised discriminator."""
    from genood.reports import suite
    from genood.reports.collect import default_selection

    sets = suite.per_set(frame)
    page.add("<h2>OOD suite</h2><p>Groups: <b>near</b> (class splits: semantic shift), <b>corruption</b> (the "
             "in-distribution images transformed so that their meaning is lost), <b>far</b> (synthetic images), "
             "<b>real</b> (another dataset); apart from them <b>shift</b> (transforms that keep the meaning: a "
             "detector should accept them, so an AUROC near 0.5 is the wish there, and they never enter an OOD group "
             "or a selection). Whether a transform keeps the meaning is measured (table below) unless set by hand. "
             "Cells of the group table: AUROC mean/worst over the group's sets. In the per-set table a "
             "learned detector's cell ends in '!' where the best model-free baseline (mf) of that set is at least as "
             "good.</p>")
    groups = suite.set_groups(frame, run_dirs)
    if len(groups):
        shown = groups.assign(**{c: groups[c].map(lambda v: "-" if v is None or v != v else f"{v:.3f}")
                                 for c in ("accuracy", "clean_accuracy", "drop", "margin")})
        shown = shown.assign(source=shown["source"].map(lambda v: "set by hand" if v == "hand" else v))
        page.add("<h3>Groups of the transformed sets</h3><p>A small CNN trained on the in-distribution's training "
                 "split classifies each transformed test set; a transform whose accuracy stays within the margin of "
                 "the clean accuracy is a shift, otherwise a corruption.</p>"
                 + _table_html(shown.set_index("ood_dataset"), first="OOD set"))
    for model, table in suite.group_table(sets).items():
        page.add(f"<h3>{html.escape(model)}: groups</h3>" + _table_html(table))
        g = sets[sets["model"] == model]
        for ind, h in g.groupby("in_dataset", sort=True):
            cells = {}
            for r in h.itertuples(index=False):
                mark = "" if r.model_free or r.beats_baselines else "!"
                cells.setdefault(r.detector + (" (mf)" if r.model_free else ""), {})[f"{r.ood_dataset} ({r.ood_group})"] = \
                    f"{r.auroc:.3f}{mark}"
            order = list(dict.fromkeys(f"{r.ood_dataset} ({r.ood_group})" for r in h.itertuples(index=False)))
            page.add(f"<details><summary>{html.escape(model)}, in-distribution {html.escape(str(ind))}: every set</summary>"
                     + _table_html(pd.DataFrame(cells).T.reindex(columns=order).fillna("-").sort_index()) + "</details>")
    tokens = select_on or default_selection(frame)
    if tokens:
        page.add("<h3>Selected detector</h3><p>" + "<br>".join(html.escape(line) for line in
                 suite.selection_lines(suite.selection(sets, tokens))) + "</p>")
        per_seed = suite.seed_view(frame, tokens) if per_seed is None else per_seed
        if len(per_seed):
            page.add(f"<h4>{suite.SEED_HEADING}</h4><p>Each seed's runs alone (the selection above is on the seeds' "
                     "mean AUROCs):<br>"
                     + "<br>".join(html.escape(line) for line in suite.seed_selection_lines(per_seed)) + "</p>")
    if headroom is not None and len(headroom):
        _headroom_html(headroom, page)
    sev = suite.severity_rows(sets)
    if len(sev):
        picked = suite.selection(sets, tokens) if tokens else {}
        keep = sorted({n for p in picked.values() for n in (p.get("detector"), p.get("baseline")) if n} | set(SEVERITY_REFERENCE))
        page.add("<h3>AUROC against shift strength</h3>")
        page.figure(suite.severity_figure(sev, keep), width=1100, height=320 * max(1, -(-sev.groupby(["model", "in_dataset", "axis"]).ngroups // 3)))


def build(frame: pd.DataFrame, run_dirs: List[Path], title: str = "Likelihood-based OOD detection",
          select_on: Optional[List[str]] = None, headroom: Optional[pd.DataFrame] = None,
          per_seed: Optional[pd.DataFrame] = None) -> str:
    """The report's HTML text for the aggregate ``frame`` of the runs in ``run_dirs`` (``headroom``: a
    :func:`genood.reports.headroom.headroom` table, shown in the suite's section; ``per_seed``: the suite's
    :func:`genood.reports.suite.seed_view` table when the caller has it)."""
    page = Page()
    page.add(f"<h1>{html.escape(title)}</h1><p>In-distribution test points are the positive class; every score "
             "is oriented so that higher means more in-distribution, and an AUROC below 0.5 is reported as is "
             "(for the likelihood it is the paradox). Cells: AUROC [95% interval] (bootstrap over points for one seed, "
             "t-interval over seeds otherwise); &#9733; marks the best label-free detector of each pair (only "
             "in-distribution data chose anything in it); <i>italic (opt)</i> rows chose something with OOD labels "
             "and are upper envelopes, never headlines.</p>")
    if frame.empty:
        page.add("<p>No finished runs yet.</p>")
    else:
        from genood.reports.suite import has_suite
        suite_runs = has_suite(frame)
        _pivot_html(frame[frame["ood_group"] == "real"] if suite_runs and (frame["ood_group"] == "real").any() else frame, page)
        if suite_runs:
            _suite_html(frame, page, select_on, run_dirs, headroom, per_seed)
        elif frame["ood_dataset"].nunique() <= 8:
            page.add("<h2>AUROC heatmap</h2>")
            _heatmap(frame, page)
    lid_errors = collect_lid_errors(run_dirs)
    if not lid_errors.empty:
        page.add("<h2>LID estimators against the known dimension</h2><table><tr>"
                 + "".join(f"<th>{c}</th>" for c in lid_errors.columns if c != "run") + "</tr>")
        for row in lid_errors.drop(columns=["run"]).itertuples(index=False):
            page.add("<tr>" + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                      for v in row) + "</tr>")
        page.add("</table>")
    page.add("<h2>Runs</h2>")
    for directory in dict.fromkeys(Path(d) for d in run_dirs):
        if (directory / "metrics.json").exists():
            _run_section(directory, page)
    return page.render(title)


def write(frame: pd.DataFrame, run_dirs: List[Path], path: Path, title: Optional[str] = None,
          select_on: Optional[List[str]] = None, headroom: Optional[pd.DataFrame] = None,
          per_seed: Optional[pd.DataFrame] = None) -> Path:
    """Write the report atomically to ``path`` (a file the caller names: its folder becomes a write root) and
    return it."""
    rundir.allow_writes(Path(path).parent)
    text = build(frame, run_dirs, title or "Likelihood-based OOD detection", select_on, headroom, per_seed)
    rundir.write_text(Path(path), text)
    return Path(path)


def main(argv=None) -> int:
    from genood.reports.cli import parse_roots
    parsed = parse_roots("python -m genood.reports.report", __doc__, "the HTML file (default: <first root>/report.html)", argv)
    if parsed is None:
        return 2
    args, dirs = parsed
    frame, _ = collect_runs(dirs)
    from genood.reports.suite import SelectionError
    try:
        print(f"wrote {write(frame, dirs, args.out or args.roots[0] / 'report.html', select_on=args.select_on)}")
    except SelectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
