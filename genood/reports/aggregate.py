"""Collect finished runs' metrics.json into one tidy table; print it; write CSV, Markdown, HTML.

    python -m genood.reports.aggregate runs/demo [--out runs/demo]

One row per (run, detector): model, in-dataset, ood-dataset, score/detector, AUROC, AUPR-in,
AUPR-out, FPR95, n_in, n_ood, run name. Runs without metrics.json (unfinished) are skipped
and counted. The top of genood.reports: the table is :mod:`genood.reports.collect` (its names are
re-exported here), the suite's view :mod:`genood.reports.suite`, the page :mod:`genood.reports.report`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import pandas as pd

from genood import rundir
from genood.reports import report, suite
from genood.reports.cli import parse_roots
from genood.reports.collect import (  # noqa: F401  (the table's names, re-exported here: their old home)
    METRICS, COLUMNS, EXTRA_COLUMNS, LID_COLUMNS, run_dirs_under, collect, config_group, variant_labels,
    collect_runs, collect_lid_errors, lid_error_section, seed_summary, cell, short_dataset, pair_label, pivots,
    best_over_pairs, best_over_pairs_line, format_pivot, wrapped, default_selection, format_table, to_markdown,
    auroc_heatmap, has_suite)
from genood.reports.suite import SelectionError, format_suite

__all__ = ["METRICS", "COLUMNS", "EXTRA_COLUMNS", "LID_COLUMNS", "run_dirs_under", "collect", "config_group",
           "variant_labels", "collect_runs", "collect_lid_errors", "lid_error_section", "seed_summary", "cell",
           "short_dataset", "pair_label", "pivots", "best_over_pairs", "best_over_pairs_line", "format_pivot",
           "wrapped", "default_selection", "format_table", "to_markdown", "auroc_heatmap", "has_suite",
           "format_suite", "write_outputs", "log_to_wandb", "parse_roots", "main"]


def write_outputs(frame: pd.DataFrame, run_dirs: List[Path], out: Path, heatmap: bool = False,
                  select_on: Optional[List[str]] = None, headroom: Optional[pd.DataFrame] = None,
                  per_seed: Optional[pd.DataFrame] = None) -> List[Path]:
    """Write aggregate.csv, aggregate.md and report.html into ``out`` (atomically), with an OOD suite also
    suite.csv (per set) and suite_groups.csv (per group) (over several training seeds also suite_seeds.csv: the
    selection made on each seed's runs), with ``headroom`` (a :mod:`genood.reports.headroom`
    table) also separability.csv and the report's headroom section; optionally the AUROC heatmap. ``per_seed``:
    :func:`genood.reports.suite.seed_view`'s table when the caller has it (else computed here, once for the CSV and
    the report). ``out`` is the caller's choice and becomes a write root."""
    rundir.allow_writes(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "aggregate.csv", out / "aggregate.md", out / "report.html"]
    lid_errors = collect_lid_errors(run_dirs)
    rundir.atomic_write(paths[0], lambda p: frame.to_csv(p, index=False))
    if not frame.empty:  # across seeds: mean, standard deviation and t-interval per configuration
        paths.append(out / "aggregate_seeds.csv")
        summary = seed_summary(frame)
        rundir.atomic_write(paths[-1], lambda p: summary.to_csv(p, index=False))
    rundir.write_text(paths[1], to_markdown(frame))
    if suite.has_suite(frame):
        sets = suite.per_set(frame)
        paths.append(out / "suite.csv")
        rundir.atomic_write(paths[-1], lambda p: sets.to_csv(p, index=False))
        paths.append(out / "suite_groups.csv")
        rundir.atomic_write(paths[-1], lambda p: suite.group_summary(sets).to_csv(p, index=False))
        groups = suite.set_groups(frame, run_dirs)
        if len(groups):
            paths.append(out / "set_groups.csv")
            rundir.atomic_write(paths[-1], lambda p: groups.to_csv(p, index=False))
        per_seed = suite.seed_view(frame, select_on) if per_seed is None else per_seed
        if len(per_seed):  # a sweep over run.seed: the selection made again on each seed's runs
            paths.append(out / "suite_seeds.csv")
            rundir.atomic_write(paths[-1], lambda p: per_seed.to_csv(p, index=False))
    if headroom is not None:
        paths.append(out / "separability.csv")
        rundir.atomic_write(paths[-1], lambda p: headroom.to_csv(p, index=False))
    report.write(frame, run_dirs, paths[2], select_on=select_on, headroom=headroom, per_seed=per_seed)  # one self-contained page (plotly.js and images embedded)
    if not lid_errors.empty:
        paths.append(out / "lid_error.csv")
        rundir.atomic_write(paths[-1], lambda p: lid_errors.to_csv(p, index=False))
    if heatmap and not frame.empty and (frame["in_dataset"] != "-").any() and frame["ood_dataset"].nunique() <= 8:
        from genood.ood.figures import write_figures
        paths += write_figures({"auroc_heatmap": auroc_heatmap(frame[frame["in_dataset"] != "-"])}, out, png=True,
                               warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    return paths


def log_to_wandb(frame: pd.DataFrame, sweep_id: str, out: Path, project: str = "likelihood-paradox",
                 entity: str = None) -> str:
    """Log the sweep's aggregate table (and its seed summary) as ``wandb.Table``s into one W&B run of job
    type ``aggregate`` (online when logged in, else offline under ``out``). Returns the run's id."""
    import os
    import warnings

    from genood import tracking
    if sweep_id.count("/") == 2:  # a W&B sweep: entity/project/id
        entity, project, _ = sweep_id.split("/")
    os.environ.setdefault("WANDB_SILENT", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import wandb
    mode = os.environ.get("WANDB_MODE") or ("online" if tracking.has_login() else "offline")
    run = wandb.init(project=project, entity=entity, name=f"aggregate-{sweep_id.replace('/', '_')}", job_type="aggregate",
                     group=sweep_id.replace("/", "_"), dir=str(out), mode=mode, reinit="finish_previous")
    try:
        clean = frame.astype({c: "float64" for c in ("auroc", "aupr_in", "aupr_out", "fpr95")})
        run.log({"aggregate": wandb.Table(dataframe=clean), "aggregate_seeds": wandb.Table(dataframe=seed_summary(frame))})
        return run.id
    finally:
        run.finish()


def main(argv=None) -> int:
    parsed = parse_roots("python -m genood.reports.aggregate", __doc__,
                         "where to write aggregate.csv/.md and report.html (default: first root)", argv)
    if parsed is None:
        return 2
    args, dirs = parsed
    frame, unfinished = collect_runs(dirs)
    try:
        per_seed = suite.seed_view(frame, args.select_on)  # once, for the console, the CSV and the report
        suite_text = format_suite(frame, args.select_on, per_seed=per_seed)
    except SelectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_pivot(frame) + lid_error_section(dirs) + suite_text)
    if unfinished:
        print(f"({unfinished} run(s) without metrics.json skipped: unfinished or failed)")
    for p in write_outputs(frame, dirs, args.out or args.roots[0], heatmap=True, select_on=args.select_on,
                           per_seed=per_seed):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
