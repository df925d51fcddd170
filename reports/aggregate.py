"""Collect finished runs' metrics.json into one tidy table; print it; write CSV, Markdown, HTML.

    python -m reports.aggregate runs/demo [--out runs/demo]

One row per (run, detector): model, in-dataset, ood-dataset, score/detector, AUROC, AUPR-in,
AUPR-out, FPR95, n_in, n_ood, run name. Runs without metrics.json (unfinished) are skipped
and counted.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import List, Tuple

import pandas as pd
import yaml

import runconfig
import rundir

COLUMNS = ["model", "in_dataset", "ood_dataset", "detector", "auroc", "aupr_in", "aupr_out", "fpr95", "n_in", "n_ood", "run"]


def run_dirs_under(roots: List[Path]) -> List[Path]:
    """Every run directory (a folder with config.yaml) below the given folders."""
    return [p.parent for root in roots for p in sorted(Path(root).rglob("config.yaml"))]


def collect(roots: List[Path]) -> Tuple[pd.DataFrame, int]:
    """Rows for every run directory under ``roots`` with a metrics.json; also the count of unfinished runs."""
    return collect_runs(run_dirs_under(roots))


def _describe(cfg: dict) -> Tuple[str, str, str]:
    if "model" in cfg:
        m = cfg["model"]
        spec = runconfig.FAMILIES.get(m.get("family"))
        keys = spec.run_name if spec else ()
        label = "/".join([str(m.get("family"))] + [str(m.get(k)) for k in keys] + [str(cfg.get("preset") or "custom")])
        return label, cfg["data"]["in_distribution"], cfg["data"]["ood"]
    return "-", "-", "-"  # jobs without a model (the orchestration's sleep job)


def collect_runs(directories: List[Path]) -> Tuple[pd.DataFrame, int]:
    """Rows for the given run directories (each listed once); also how many lack metrics.json."""
    rows, unfinished, seen = [], 0, set()
    for directory in directories:
        directory = Path(directory)
        if directory in seen:
            continue
        seen.add(directory)
        metrics_path = directory / "metrics.json"
        if not metrics_path.exists():
            unfinished += 1
            continue
        cfg = yaml.safe_load((directory / "config.yaml").read_text())
        model, ind, ood = _describe(cfg)
        for detector, values in json.loads(metrics_path.read_text()).items():
            if "auroc" not in values:  # not a detector (e.g. lid_error/<split>: see collect_lid_errors)
                continue
            rows.append({"model": model, "in_dataset": ind, "ood_dataset": ood, "detector": detector,
                         **{k: values.get(k) for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "n_in", "n_ood")},
                         "run": directory.name})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["model", "in_dataset", "ood_dataset", "detector", "run"], ignore_index=True), unfinished


LID_COLUMNS = ["model", "in_dataset", "split", "method", "knob", "mae", "within_1", "spearman", "n", "mae_by_true_lid", "run"]


def collect_lid_errors(directories: List[Path]) -> pd.DataFrame:
    """One row per (run, split) with an ``lid_error/<split>`` entry: an LID estimator against the known LID
    of synthetic-manifold data (MAE, fraction within +-1, Spearman, MAE per manifold piece)."""
    rows = []
    for directory in dict.fromkeys(Path(d) for d in directories):
        metrics_path = directory / "metrics.json"
        if not metrics_path.exists():
            continue
        cfg = yaml.safe_load((directory / "config.yaml").read_text())
        model, ind, _ = _describe(cfg)
        for key, values in json.loads(metrics_path.read_text()).items():
            if not key.startswith("lid_error/"):
                continue
            knob = next((f"{k}={v:g}" for k, v in values.items() if k.startswith("log_")), "")
            rows.append({"model": model, "in_dataset": ind, "split": key.split("/", 1)[1], "method": values.get("method"),
                         "knob": knob, "mae": values.get("mae"), "within_1": values.get("within_1"),
                         "spearman": values.get("spearman"), "n": values.get("n"),
                         "mae_by_true_lid": json.dumps(values.get("mae_by_true_lid", {})), "run": directory.name})
    frame = pd.DataFrame(rows, columns=LID_COLUMNS)
    return frame.sort_values(["in_dataset", "split", "method", "run"], ignore_index=True)


def lid_error_section(directories: List[Path]) -> str:
    """The terminal text of the LID-error table ("" when no run measured one)."""
    frame = collect_lid_errors(directories)
    return "" if frame.empty else "\nLID estimators against the known dimension:\n" + format_table(frame)


def format_table(frame: pd.DataFrame) -> str:
    """A fixed-width text table for the terminal."""
    if frame.empty:
        return "(no finished runs)"
    shown = frame.drop(columns=["run"]).copy()
    for col in ("auroc", "aupr_in", "aupr_out", "fpr95", "mae", "within_1", "spearman"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
    return shown.to_string(index=False)


def to_markdown(frame: pd.DataFrame, columns: List[str] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |\n"
                   for row in frame[columns].itertuples(index=False))
    return head + body


def to_html(frame: pd.DataFrame, run_dirs: List[Path], out: Path, lid_errors: pd.DataFrame = None) -> str:
    """A self-contained report: the table, then each run's figures (linked relative to ``out``)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>OOD report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f0f0}"
             "img{max-width:540px;margin:4px;border:1px solid #eee}.bad{color:#c0392b;font-weight:bold}</style></head><body>",
             "<h1>Likelihood-based OOD detection</h1>",
             "<p>In-distribution test samples are the positive class; every score is oriented so that higher means "
             "more in-distribution. An AUROC below 0.5 for the likelihood is the paradox, reported as is.</p><table><tr>"]
    parts += [f"<th>{html.escape(c)}</th>" for c in COLUMNS] + ["</tr>"]
    for row in frame[COLUMNS].itertuples(index=False):
        cells = []
        for col, v in zip(COLUMNS, row):
            text = f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
            cls = " class='bad'" if col == "auroc" and isinstance(v, float) and v < 0.5 else ""
            cells.append(f"<td{cls}>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    if lid_errors is not None and not lid_errors.empty:
        parts.append("<h2>LID estimators against the known dimension</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in LID_COLUMNS) + "</tr>")
        for row in lid_errors[LID_COLUMNS].itertuples(index=False):
            parts.append("<tr>" + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                          for v in row) + "</tr>")
        parts.append("</table>")
    by_name = {Path(d).name: Path(d) for d in run_dirs}
    for run in sorted(set(frame["run"])):
        directory = by_name.get(run)
        if directory is None:
            continue
        parts.append(f"<h2>{html.escape(run)}</h2>")
        for fig in ("likelihood_histogram", "roc", "lid_vs_likelihood", "lid_curves", "samples"):
            png = directory / "figures" / f"{fig}.png"
            page = directory / "figures" / f"{fig}.html"
            if png.exists():
                rel = Path(_relative(png, out))
                link = _relative(page, out) if page.exists() else str(rel)
                parts.append(f"<a href='{html.escape(link)}'><img src='{html.escape(str(rel))}' alt='{fig}'></a>")
    parts.append("</body></html>")
    return "".join(parts)


def _relative(path: Path, start: Path) -> str:
    import os
    return os.path.relpath(path, start)


def auroc_heatmap(frame: pd.DataFrame):
    """Plotly heatmaps of AUROC: in-dataset (rows) x OOD dataset (columns), one panel per model/detector."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [(k, g) for k, g in frame.groupby(["model", "detector"], sort=True)]
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[f"{m} | {d}" for (m, d), _ in panels],
                        vertical_spacing=min(0.3, 0.9 / max(1, len(panels))))
    for i, (_, g) in enumerate(panels, start=1):
        table = g.pivot_table(index="in_dataset", columns="ood_dataset", values="auroc", aggfunc="mean")
        fig.add_trace(go.Heatmap(z=table.values, x=list(table.columns), y=list(table.index), zmin=0, zmax=1,
                                 colorscale="RdBu", text=[[f"{v:.3f}" if v == v else "" for v in row] for row in table.values],
                                 texttemplate="%{text}", showscale=(i == 1), colorbar=dict(title="AUROC")), row=i, col=1)
        if i == len(panels):
            fig.update_xaxes(title_text="OOD dataset", row=i, col=1)
        fig.update_yaxes(title_text="in-distribution", row=i, col=1)
    fig.update_layout(height=320 * max(1, len(panels)), width=760, template="plotly_white",
                      title="AUROC (in-distribution positive; < 0.5 is the paradox)")
    return fig


def write_outputs(frame: pd.DataFrame, run_dirs: List[Path], out: Path, heatmap: bool = False) -> List[Path]:
    """Write aggregate.csv, aggregate.md and report.html into ``out`` (atomically); optionally the AUROC heatmap."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "aggregate.csv", out / "aggregate.md", out / "report.html"]
    lid_errors = collect_lid_errors(run_dirs)
    rundir.atomic_write(paths[0], lambda p: frame.to_csv(p, index=False))
    rundir.write_text(paths[1], to_markdown(frame))
    rundir.write_text(paths[2], to_html(frame, run_dirs, out, lid_errors))
    if not lid_errors.empty:
        paths.append(out / "lid_error.csv")
        rundir.atomic_write(paths[-1], lambda p: lid_errors.to_csv(p, index=False))
    if heatmap and not frame.empty and (frame["in_dataset"] != "-").any():
        from ood.figures import write_figures
        paths += write_figures({"auroc_heatmap": auroc_heatmap(frame[frame["in_dataset"] != "-"])}, out, png=True,
                               warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.aggregate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    parser.add_argument("--out", type=Path, help="where to write aggregate.csv/.md and report.html (default: first root)")
    args = parser.parse_args(argv)
    missing = [r for r in args.roots if not r.exists()]
    if missing:
        print(f"error: {missing[0]} does not exist; give a folder holding run directories (e.g. runs/demo).", file=sys.stderr)
        return 2
    dirs = run_dirs_under(args.roots)
    frame, unfinished = collect_runs(dirs)
    print(format_table(frame) + lid_error_section(dirs))
    if unfinished:
        print(f"({unfinished} run(s) without metrics.json skipped: unfinished or failed)")
    for p in write_outputs(frame, dirs, args.out or args.roots[0], heatmap=True):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
