"""The sweep's results as one tidy table: finished runs' metrics.json collected (one row per run and detector:
model, in-dataset, OOD dataset, detector, AUROC, AUPR-in, AUPR-out, FPR95 with intervals, n_in, n_ood, run),
summarised across seeds and formatted as pivots. The bottom of genood.reports: the suite's tables
(:mod:`genood.reports.suite`), the report page (:mod:`genood.reports.report`) and the command line
(:mod:`genood.reports.aggregate`) build on it.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import yaml

from genood import runconfig

__all__ = ["METRICS", "COLUMNS", "EXTRA_COLUMNS", "LID_COLUMNS", "run_dirs_under", "collect", "config_group", "variant_labels", "collect_runs", "collect_lid_errors", "lid_error_section", "seed_summary", "cell", "short_dataset", "pair_label", "pivots", "best_over_pairs", "best_over_pairs_line", "format_pivot", "wrapped", "default_selection", "format_table", "to_markdown", "auroc_heatmap", "has_suite"]
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
COLUMNS = ["model", "in_dataset", "ood_dataset", "detector", "auroc", "aupr_in", "aupr_out", "fpr95", "n_in", "n_ood", "run"]
# numeric interval columns and flags kept in the CSV beside COLUMNS (the text tables show COLUMNS)
EXTRA_COLUMNS = [f"{m}_{end}" for m in METRICS for end in ("lo", "hi")] + ["label_free", "optimistic", "per_batch", "seed", "group",
                                                                         "ood_group", "group_source", "model_free"]


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
        sets = runconfig.ood_sets(cfg["data"]["ood"])
        return label, cfg["data"]["in_distribution"], sets[0][0] if len(sets) == 1 else "-"
    return "-", "-", "-"  # jobs without a model (the orchestration's sleep job)


def _default_group(dataset: str) -> str:
    from genood.data.derived import group_of

    try:
        return group_of(str(dataset))
    except ValueError:
        return "real"


def config_group(cfg: dict) -> str:
    """A short hash of the configuration without ``run.*``: runs differing only in their seed share it."""
    import hashlib
    rest = {k: v for k, v in cfg.items() if k != "run"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]


# keys that vary between runs of one model label without making them different models: the seed and run
# bookkeeping, and the evaluation data (the tables' columns)
_NOT_A_VARIANT = ("run.", "data.in_distribution", "data.ood")


def _one_model_per_dataset(flats: Dict[Path, Dict[str, Any]], members: List[Path]) -> bool:
    """True when the runs' checkpoints differ only with their in-distribution (each dataset scored by one trained
    model, e.g. the zoo's recipe trained on fmnist and on mnist): then the checkpoint is the dataset's model, not
    a variant of it."""
    seen: Dict[str, str] = {}
    for d in members:
        ind = json.dumps(flats[d].get("data.in_distribution"), default=str)
        ckpt = json.dumps(flats[d].get("ood.checkpoint"), default=str)
        if seen.setdefault(ind, ckpt) != ckpt:
            return False
    return True


def variant_labels(configs: Dict[Path, dict]) -> Dict[Path, str]:
    """Each run's model label (family, its naming keys, preset), extended by ``key=value`` for every configuration
    key on which runs sharing that label differ (the seed and the evaluation data aside), so that a sweep's
    variants of one model (negative training on or off, a coupling's mask or width) stay separate rows instead
    of being read as seeds of one configuration. Keys missing from some runs' configs (written by an older
    version) are not variants, nor is a checkpoint that only follows the in-distribution (one model a dataset)."""
    base = {d: _describe(cfg)[0] for d, cfg in configs.items()}
    out = dict(base)
    for label in set(base.values()):
        members = [d for d in configs if base[d] == label]
        if len(members) < 2:
            continue
        flats = {d: runconfig.flatten(configs[d]) for d in members}
        shared = set.intersection(*(set(f) for f in flats.values()))
        varying = sorted(k for k in shared if not k.startswith(_NOT_A_VARIANT)
                         and len({json.dumps(flats[d][k], default=str) for d in members}) > 1
                         and not (k == "ood.checkpoint" and _one_model_per_dataset(flats, members)))
        for d in members:
            if varying:
                out[d] = label + " " + ",".join(f"{k.split('.')[-1]}={flats[d][k]}" for k in varying)
    return out


def collect_runs(directories: List[Path]) -> Tuple[pd.DataFrame, int]:
    """Rows for the given run directories (each listed once); also how many lack metrics.json."""
    rows, unfinished, seen, finished = [], 0, set(), {}
    for directory in directories:
        directory = Path(directory)
        if directory in seen:
            continue
        seen.add(directory)
        if not (directory / "metrics.json").exists():
            unfinished += 1
            continue
        finished[directory] = yaml.safe_load((directory / "config.yaml").read_text())
    labels = variant_labels(finished)
    for directory, cfg in finished.items():
        metrics_path = directory / "metrics.json"
        _, ind, ood = _describe(cfg)
        model = labels[directory]
        for key, values in json.loads(metrics_path.read_text()).items():
            if "auroc" not in values:  # not a detector (e.g. lid_error/<split>: see collect_lid_errors)
                continue
            detector = key.split("::", 1)[1] if "::" in key else key  # <set>::<detector> in runs with several OOD sets
            set_name = values.get("ood_dataset", ood)
            ci = {f"{m}_{end}": (values.get(f"{m}_ci") or [None, None])[i] for m in METRICS
                  for i, end in enumerate(("lo", "hi"))}
            rows.append({"model": model, "in_dataset": ind, "ood_dataset": set_name, "detector": detector,
                         **{k: values.get(k) for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "n_in", "n_ood")},
                         "run": directory.name, **ci, "label_free": bool(values.get("label_free", not values.get("optimistic"))),
                         "optimistic": bool(values.get("optimistic", False)), "per_batch": values.get("per") == "batch",
                         "seed": (cfg.get("run") or {}).get("seed"), "group": config_group(cfg),
                         "ood_group": values.get("ood_group") or _default_group(set_name),
                         "group_source": values.get("group_source") or "declared",
                         "model_free": bool(values.get("model_free", False))})
    frame = pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)
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


def seed_summary(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Across seeds: one row per (model, pair, detector, configuration without run.*) with the mean, standard
    deviation and a t-interval of each metric over the seeds (n_seeds = 1: the run's own bootstrap interval)."""
    from scipy.stats import t as student_t

    keys = ["model", "in_dataset", "ood_dataset", "detector", "group"]
    rows = []
    for key, g in frame.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key), n_seeds=int(g["seed"].nunique()), label_free=bool(g["label_free"].all()),
                   ood_group=g["ood_group"].iloc[0] if "ood_group" in g else "real",
                   model_free=bool(g["model_free"].all()) if "model_free" in g else False,
                   optimistic=bool(g["optimistic"].any()), per_batch=bool(g["per_batch"].any()),
                   n_in=g["n_in"].iloc[0], n_ood=g["n_ood"].iloc[0])
        for m in METRICS:
            vals = pd.to_numeric(g[m], errors="coerce").dropna().to_numpy(dtype=float)
            row[m] = float(vals.mean()) if vals.size else float("nan")
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
            if vals.size > 1:
                half = student_t.ppf(0.5 + level / 2, vals.size - 1) * row[f"{m}_std"] / math.sqrt(vals.size)
                # every metric here is a rate in [0, 1]: the t-interval is clipped to it
                row[f"{m}_lo"], row[f"{m}_hi"] = max(0.0, row[m] - half), min(1.0, row[m] + half)
            else:
                row[f"{m}_lo"] = pd.to_numeric(g[f"{m}_lo"], errors="coerce").iloc[0]
                row[f"{m}_hi"] = pd.to_numeric(g[f"{m}_hi"], errors="coerce").iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def cell(value, lo=None, hi=None) -> str:
    """``0.962 [0.951, 0.971]`` (or ``0.962`` without an interval, ``-`` without a value)."""
    if value is None or value != value:
        return "-"
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def short_dataset(name: str) -> str:
    """A dataset as a table heading: ``npz:/long/path/x.npz`` -> ``x.npz``; registry names as they are."""
    name = str(name)
    return Path(name[4:]).name if name.startswith("npz:") else name


def pair_label(in_dataset: str, ood_dataset: str) -> str:
    return f"{short_dataset(in_dataset)}->{short_dataset(ood_dataset)}"


def pivots(frame: pd.DataFrame, metric: str = "auroc") -> Dict[str, pd.DataFrame]:
    """Per model: detectors (rows) x (in -> ood) pairs (columns) of ``metric`` cells with intervals, over the
    in-distribution-test rows (not generated_vs_ood). The best label-free per-point detector of each pair is
    marked *; optimistic ones (OOD labels chose something) are marked (opt), tests on batches of points
    (a different task) (batch)."""
    summary = seed_summary(frame[~frame["detector"].str.startswith("generated_vs_ood/")])
    out = {}
    for model, g in summary.groupby("model", sort=True):
        g = g.assign(pair=[pair_label(a, b) for a, b in zip(g["in_dataset"], g["ood_dataset"])])
        best = {}
        for pair, h in g[g["label_free"] & ~g["optimistic"] & ~g["per_batch"]].groupby("pair"):
            if h[metric].notna().any():
                best[pair] = h.loc[h[metric].idxmax() if metric != "fpr95" else h[metric].idxmin(), "detector"]
        table: Dict[str, Dict[str, str]] = {}
        for row in g.itertuples(index=False):
            name = row.detector + (" (opt)" if row.optimistic else "") + (" (batch)" if row.per_batch else "")
            text = cell(getattr(row, metric), getattr(row, f"{metric}_lo"), getattr(row, f"{metric}_hi"))
            if row.n_seeds > 1:
                text += f" ({row.n_seeds} seeds)"
            if best.get(row.pair) == row.detector:
                text += " *"
            table.setdefault(name, {})[row.pair] = text
        out[model] = pd.DataFrame(table).T.fillna("-").sort_index()
    return out


def best_over_pairs(frame: pd.DataFrame, metric: str = "auroc") -> Dict[str, Dict[str, Any]]:
    """Per model with two or more (in -> ood) pairs: the label-free per-point detector whose worst pair is best
    (the question "which one detector works in every direction?"), as {"detector", "worst", "pairs": {pair: value}}.
    Only detectors present in every pair compete. This ranks by test AUROCs, so it is a reading aid for the
    table (like its *), not a detector of its own."""
    summary = seed_summary(frame[~frame["detector"].str.startswith("generated_vs_ood/")])
    out: Dict[str, Dict[str, Any]] = {}
    lower = metric == "fpr95"
    for model, g in summary.groupby("model", sort=True):
        g = g.assign(pair=[pair_label(a, b) for a, b in zip(g["in_dataset"], g["ood_dataset"])])
        pairs = sorted(g["pair"].unique())
        g = g[g["label_free"] & ~g["optimistic"] & ~g["per_batch"] & g[metric].notna()]
        if len(pairs) < 2 or g.empty:
            continue
        table = g.pivot_table(index="detector", columns="pair", values=metric, aggfunc="mean").reindex(columns=pairs)
        table = table.dropna()
        if table.empty:
            continue
        worst = table.max(axis=1) if lower else table.min(axis=1)
        name = worst.idxmin() if lower else worst.idxmax()
        out[model] = {"detector": name, "worst": float(worst[name]), "pairs": {p: float(table.loc[name, p]) for p in pairs}}
    return out


def best_over_pairs_line(best: Dict[str, Any], metric: str = "auroc") -> str:
    pairs = ", ".join(f"{p} {v:.3f}" for p, v in best["pairs"].items())
    return (f"best label-free detector over every pair (by its worst pair's {metric.upper()}; optimistic: "
            f"chosen on the very pairs it is shown on, `--select-on` chooses honestly): {best['detector']}  ({pairs})")


def format_pivot(frame: pd.DataFrame, metric: str = "auroc", width: int = 100) -> str:
    """The console view: per model, detectors x pairs with intervals, columns wrapped to ``width`` characters.
    When the runs hold an OOD suite, the pivot shows the real-dataset pairs (the suite has its own view)."""
    if frame.empty:
        return "(no finished runs)"
    if has_suite(frame) and (frame["ood_group"] == "real").any():
        frame = frame[frame["ood_group"] == "real"]
    parts = [f"{metric.upper()} [95% interval]; * = the best label-free per-point detector of the pair;\n"
             "(opt) = optimistic, OOD labels chose something; (batch) = a test on batches of points"]
    over = best_over_pairs(frame, metric)
    for model, table in pivots(frame, metric).items():
        parts.append(f"\n{model}")
        parts.extend(wrapped(table, width))
        if model in over:
            parts.append(textwrap.fill(best_over_pairs_line(over[model], metric), width, subsequent_indent="  "))
    return "\n".join(parts)


def _text_block(table: pd.DataFrame, chunk: List[str], widths: List[int], name_w: int) -> str:
    lines = ["".ljust(name_w) + "".join(c.ljust(w) for c, w in zip(chunk, widths))]
    for name, row in table[chunk].iterrows():
        lines.append(str(name).ljust(name_w) + "".join(str(v).ljust(w) for v, w in zip(row, widths)))
    return "\n".join(line.rstrip() for line in lines)


def wrapped(table: pd.DataFrame, width: int) -> List[str]:
    """A text table cut into column chunks that fit ``width`` characters."""
    name_w = max(len(str(i)) for i in table.index) + 2
    cols, parts = list(table.columns), []
    while cols:
        chunk, used = [], name_w
        for c in cols:
            w = max(len(c), table[c].str.len().max()) + 2
            if chunk and used + w > width:
                break
            chunk.append(c)
            used += w
        cols = cols[len(chunk):]
        parts.append(_text_block(table, chunk, [max(len(c), table[c].str.len().max()) + 2 for c in chunk], name_w))
    return parts


def default_selection(frame: pd.DataFrame) -> List[str]:
    """``near`` and ``corruption`` (``transform`` for runs made before sets were measured) where the runs have them
    and at least one other OOD group remains to report on; shifts are never a selection set."""
    groups = set(frame["ood_group"]) - {"shift"}
    chosen = [g for g in ("near", "corruption", "transform") if g in groups]
    return chosen if chosen and groups - set(chosen) else []


def format_table(frame: pd.DataFrame) -> str:
    """A fixed-width text table for the terminal."""
    if frame.empty:
        return "(no finished runs)"
    shown = frame[[c for c in frame.columns if c != "run" and c not in EXTRA_COLUMNS]].copy()
    for col in ("auroc", "aupr_in", "aupr_out", "fpr95", "mae", "within_1", "spearman"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
    return shown.to_string(index=False)


def to_markdown(frame: pd.DataFrame, columns: List[str] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |\n"
                   for row in frame[columns].itertuples(index=False))
    return head + body


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


def has_suite(frame: pd.DataFrame) -> bool:
    """Whether the runs hold more than the classic pairs: a derived set, or several sets per in-distribution."""
    if frame.empty:
        return False
    return bool((frame["ood_group"] != "real").any() or frame.groupby(["model", "in_dataset"])["ood_dataset"].nunique().max() > 1)
