"""The OOD suite view of aggregated runs: per OOD set, per group (near / corruption / far / real, and the
shift column apart), and an honest selection of one detector.

A detector is worth what it does on sets nobody tuned it on, so this module judges detectors by their
mean and worst case over groups of OOD sets, and chooses one without looking at the sets it reports:

* :func:`per_set`: one row per (model, in-distribution, OOD set, detector), label-free per-point entries
  only, AUROC with its interval (bootstrap for one seed, t-interval across seeds), and whether the best
  model-free baseline of that set is beaten.
* :func:`group_summary`: per group, the mean and the worst AUROC over the group's sets. Their intervals are
  interval arithmetic on the per-set intervals: [mean of the lower ends, mean of the upper ends] and
  [min of the lower ends, min of the upper ends], which hold whenever every set's interval does.
* :func:`select`: given the rows of the selection sets only, the learned detector with the best worst case
  (ties: the best mean), and the model-free baseline chosen the same way. :func:`selection` applies it per
  model and reports both on every other set.
* :func:`ceiling`: per held-out group, the best learned detector of each set chosen with that set's OOD
  labels (optimistic by construction): how far any one detector could get, printed beside the selection so
  a target that no detector of the catalogue reaches is seen as such; the same over the selection sets
  (``selection_ceiling``) bounds what the selection itself can reach there.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from genood.reports.collect import default_selection, has_suite, seed_summary, wrapped
from genood.runconfig import GROUP_ORDER

__all__ = ["GROUP_ORDER", "OOD_JUDGED", "SHIFT", "ood_rows", "shift_summary", "set_groups", "set_group_lines", "SET_KEYS", "SelectionError", "per_set", "group_summary", "selection_tokens",
           "selection_mask", "select", "selection", "ceiling", "selection_lines", "group_table", "has_suite", "severity_rows",
           "severity_figure", "format_suite", "SEED_COLUMNS", "SEED_HEADING", "seed_selections",
           "seed_selection_lines", "seed_view"]

# The groups OOD detection is judged on. ``shift`` (in_test against a meaning-keeping transform of it, see
# genood.ood.semantics) asks the other question, whether a shift is accepted: an AUROC near 0.5 is the wish there,
# so shift sets have their own column and never enter an OOD group, a selection or a ceiling.
OOD_JUDGED = ("near", "corruption", "far", "real", "transform")
SHIFT = "shift"
SET_KEYS = ["model", "in_dataset", "ood_dataset"]


class SelectionError(ValueError):
    """A ``--select-on`` token names no group or set of the aggregated runs (one sentence)."""


def per_set(frame: pd.DataFrame) -> pd.DataFrame:
    """Label-free, per-point detector rows of in_test vs each OOD set (across seeds where a sweep varies them),
    with ``beats_baselines``: whether the AUROC is above every model-free baseline's on the same set."""

    rows = frame[~frame["detector"].str.contains("generated_vs_ood/", regex=False)]
    if rows.empty:
        return pd.DataFrame(columns=SET_KEYS + ["ood_group", "detector", "auroc", "auroc_lo", "auroc_hi", "model_free",
                                                "n_seeds", "best_baseline", "best_baseline_auroc", "beats_baselines"])
    s = seed_summary(rows)
    s = s[s["label_free"] & ~s["optimistic"] & ~s["per_batch"] & s["auroc"].notna()].copy()
    free = s[s["model_free"]]
    best = free.loc[free.groupby(SET_KEYS)["auroc"].idxmax(), SET_KEYS + ["detector", "auroc"]] if len(free) else \
        pd.DataFrame(columns=SET_KEYS + ["detector", "auroc"])
    best = best.rename(columns={"detector": "best_baseline", "auroc": "best_baseline_auroc"})
    s = s.merge(best, on=SET_KEYS, how="left")
    s["beats_baselines"] = s["best_baseline_auroc"].isna() | (s["auroc"] > s["best_baseline_auroc"])
    cols = SET_KEYS + ["ood_group", "detector", "auroc", "auroc_lo", "auroc_hi", "model_free", "n_seeds",
                       "best_baseline", "best_baseline_auroc", "beats_baselines"]
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    s = s.assign(_g=s["ood_group"].map(lambda g: order.get(g, len(order))))
    return s.sort_values(["model", "in_dataset", "_g", "ood_dataset", "detector"])[cols].reset_index(drop=True)


def ood_rows(sets: pd.DataFrame) -> pd.DataFrame:
    """The rows OOD detection is judged on: every set but the shifts."""
    return sets[sets["ood_group"] != SHIFT]


def shift_summary(sets: pd.DataFrame) -> pd.DataFrame:
    """Per (model, in-distribution, detector) over the shift sets (in_test against a meaning-keeping transform of
    it): mean AUROC and the mean distance from 0.5 (``gap``: 0 when every shift is accepted as in-distribution),
    the set farthest from 0.5 and its AUROC. Empty when the runs hold no shift set."""
    shifts = sets[sets["ood_group"] == SHIFT]
    rows = []
    for key, g in shifts.groupby(["model", "in_dataset", "detector"], sort=True):
        far = g.loc[(g["auroc"] - 0.5).abs().idxmax()]
        rows.append(dict(zip(["model", "in_dataset", "detector"], key), n_sets=len(g), model_free=bool(g["model_free"].all()),
                         mean=float(g["auroc"].mean()), gap=float((g["auroc"] - 0.5).abs().mean()),
                         farthest_set=str(far["ood_dataset"]), farthest=float(far["auroc"])))
    return pd.DataFrame(rows, columns=["model", "in_dataset", "detector", "n_sets", "model_free", "mean", "gap",
                                       "farthest_set", "farthest"])


GROUP_COLUMNS = ["in_dataset", "ood_dataset", "group", "source", "accuracy", "clean_accuracy", "drop", "margin"]


def set_groups(frame: pd.DataFrame, run_dirs) -> pd.DataFrame:
    """One row per (in-distribution, OOD set) whose group was measured or set by hand: the group, who set it
    (``measured`` with the grouping classifier's accuracy on the set and on clean in_test, or ``hand``)."""
    import json
    from pathlib import Path
    rows = {}
    for directory in run_dirs:
        path = Path(directory) / "semantics.json"
        if path.is_file():
            info = json.loads(path.read_text())
            for r in info.get("sets", []):
                rows[(info["in_dataset"], r["ood_dataset"])] = {k: r.get(k) for k in GROUP_COLUMNS[2:]}
    if "group_source" in frame:
        hand = frame[frame["group_source"] == "hand"][["in_dataset", "ood_dataset", "ood_group"]].drop_duplicates()
        for r in hand.itertuples(index=False):
            rows[(r.in_dataset, r.ood_dataset)] = {"group": r.ood_group, "source": "hand", "accuracy": None,
                                                   "clean_accuracy": None, "drop": None, "margin": None}
    out = pd.DataFrame([{"in_dataset": a, "ood_dataset": b, **v} for (a, b), v in sorted(rows.items())], columns=GROUP_COLUMNS)
    return out


def set_group_lines(groups: pd.DataFrame) -> List[str]:
    """Console lines: per in-distribution, each transformed set's group and why (the measurement, or 'set by hand')."""
    lines = []
    for ind, g in groups.groupby("in_dataset", sort=True):
        cells = []
        for r in g.itertuples(index=False):
            if r.source == "hand":
                cells.append(f"{r.ood_dataset} {r.group} (set by hand)")
            elif r.source == "measured":
                cells.append(f"{r.ood_dataset} {r.group} (accuracy {r.accuracy:.3f})")
        clean = g["clean_accuracy"].dropna()
        margin = g["margin"].dropna()
        head = (f"in {ind}: grouping classifier's clean accuracy {clean.iloc[0]:.3f}, shift = within "
                f"{margin.iloc[0]:.2f} of it" if len(clean) else f"in {ind}")
        if cells:
            lines.append(f"{head}: " + ", ".join(cells))
    return lines


def _bounds(g: pd.DataFrame) -> pd.DataFrame:
    lo = g["auroc_lo"].fillna(g["auroc"])
    hi = g["auroc_hi"].fillna(g["auroc"])
    return g.assign(auroc_lo=lo, auroc_hi=hi)


def group_summary(sets: pd.DataFrame) -> pd.DataFrame:
    """Per (model, in-distribution, group, detector): mean and worst AUROC over the group's sets, with
    interval-arithmetic bounds, the worst set's name and how many sets the group has."""
    rows = []
    for key, g in _bounds(sets).groupby(["model", "in_dataset", "ood_group", "detector"], sort=False):
        worst = g.loc[g["auroc"].idxmin()]
        rows.append(dict(zip(["model", "in_dataset", "ood_group", "detector"], key), n_sets=len(g),
                         model_free=bool(g["model_free"].all()),
                         mean=float(g["auroc"].mean()), mean_lo=float(g["auroc_lo"].mean()), mean_hi=float(g["auroc_hi"].mean()),
                         worst=float(g["auroc"].min()), worst_lo=float(g["auroc_lo"].min()), worst_hi=float(g["auroc_hi"].min()),
                         worst_set=str(worst["ood_dataset"])))
    return pd.DataFrame(rows)


def selection_tokens(values: Optional[List[str]]) -> List[str]:
    """``--select-on`` values (repeated and/or comma-separated) as one list of tokens."""
    return [t.strip() for part in (values or []) for t in str(part).split(",") if t.strip()]


def selection_mask(sets: pd.DataFrame, tokens: List[str]) -> pd.Series:
    """Rows of ``sets`` that ``tokens`` name: a group (near, transform, far, real), an OOD set's name, or a pair
    ``<in>-><ood>``. A token that names nothing present is a :class:`SelectionError`."""
    mask = pd.Series(False, index=sets.index)
    pairs = sets["in_dataset"].astype(str) + "->" + sets["ood_dataset"].astype(str)
    for token in tokens:
        hit = (sets["ood_group"] == token) | (sets["ood_dataset"] == token) | (pairs == token)
        if token == SHIFT or (hit & (sets["ood_group"] == SHIFT)).any():
            raise SelectionError(f"--select-on {token!r} names shift sets, which keep the in-distribution's meaning "
                                 f"(a detector should accept them); select on OOD groups such as near and corruption.")
        if not hit.any():
            known = ", ".join(sorted(set(sets["ood_group"]))) or "none"
            raise SelectionError(f"--select-on {token!r} names no group or OOD set of these runs; use a group "
                                 f"({', '.join(GROUP_ORDER)}; present here: {known}) or an OOD set's name.")
        mask |= hit
    return mask


def select(rows: pd.DataFrame) -> Dict[str, Any]:
    """From the selection sets' rows only: the learned (not model-free) detector with the best worst-case AUROC
    over those sets, ties broken by the mean, and the model-free baseline chosen the same way. Only detectors
    present on every selection set compete. Returns {"detector", "worst", "mean", "baseline", "baseline_worst",
    "baseline_mean", "sets"}; a side without candidates is None."""
    n_sets = rows[SET_KEYS].drop_duplicates().shape[0]
    out: Dict[str, Any] = {"sets": sorted(f"{a}->{b}" for a, b in rows[["in_dataset", "ood_dataset"]].drop_duplicates().itertuples(index=False))}
    for side, free, key_w, key_m in (("detector", False, "worst", "mean"), ("baseline", True, "baseline_worst", "baseline_mean")):
        cand = rows[rows["model_free"] == free]
        stats = cand.groupby("detector")["auroc"].agg(["min", "mean", "count"])
        stats = stats[stats["count"] == n_sets]
        name = stats.sort_values(["min", "mean"], ascending=False).index[0] if len(stats) else None
        out.update({side: name, key_w: float(stats.loc[name, "min"]) if name else None,
                    key_m: float(stats.loc[name, "mean"]) if name else None})
    return out


def selection(sets: pd.DataFrame, tokens: List[str], chooser=select) -> Dict[str, Dict[str, Any]]:
    """Per model: the detector (and baseline) ``chooser`` picks from the selection sets' rows alone, with its rows
    on every held-out set (``held_out``: per set AUROC and the best model-free baseline there) and its group
    summary over the held-out sets (``groups``)."""
    out: Dict[str, Dict[str, Any]] = {}
    mask = selection_mask(sets, tokens)
    shifts = sets[sets["ood_group"] == SHIFT]
    sets, mask = ood_rows(sets), mask[sets["ood_group"] != SHIFT]
    for model, g in sets.groupby("model", sort=True):
        chosen_on = g[mask.loc[g.index]]
        if chosen_on.empty:
            continue
        pick = chooser(chosen_on.copy())
        rest = g[~mask.loc[g.index]]
        names = [n for n in (pick.get("detector"), pick.get("baseline")) if n]
        held = rest[rest["detector"].isin(names)]
        mine = shifts[(shifts["model"] == model) & shifts["detector"].isin(names)]
        pick.update(held_out=held.reset_index(drop=True),
                    groups=group_summary(held) if len(held) else pd.DataFrame(), tokens=list(tokens),
                    ceiling=ceiling(rest), selection_ceiling=ceiling(chosen_on), shift=shift_summary(mine))
        out[model] = pick
    return out


SEED_COLUMNS = ["seed", "model", "detector", "selection_worst", "selection_mean", "in_dataset", "ood_group", "n_sets",
                "mean", "worst", "worst_set"]


def seed_selections(frame: pd.DataFrame, tokens: List[str], chooser=select) -> pd.DataFrame:
    """When some (model, in-distribution) was trained with several ``run.seed`` values, the selection made again
    on each seed's runs alone (a (model, in-distribution) run with one seed only joins every seed's selection), so
    whether the pick and its held-out numbers hold across training draws is read, not assumed. One row per (seed,
    model, held-out in-distribution and group) of the detector that seed's selection picked: the held-out group's
    mean and worst AUROC, beside the pick's worst and mean on the selection sets (models run with one seed only are not
    listed: their selection is the one above). Empty when no seed repeats."""
    keys = ["model", "in_dataset"]
    seeds_per = frame.dropna(subset=["seed"]).groupby(keys)["seed"].nunique()
    repeated = seeds_per[seeds_per > 1].index
    if not len(repeated):
        return pd.DataFrame(columns=SEED_COLUMNS)
    frame = frame[frame["model"].isin(repeated.get_level_values("model"))]  # a one-seed model's pick is the main one
    in_repeated = pd.MultiIndex.from_frame(frame[keys]).isin(repeated)
    rows = []
    for seed in sorted(frame.loc[in_repeated, "seed"].dropna().unique()):
        own = frame[~in_repeated | (frame["seed"] == seed)]
        for model, pick in selection(per_set(own), tokens, chooser).items():
            groups = pick["groups"]
            if not pick.get("detector") or not len(groups):
                continue
            for r in groups[groups["detector"] == pick["detector"]].itertuples(index=False):
                rows.append({"seed": seed, "model": model, "detector": pick["detector"], "selection_worst": pick["worst"],
                             "selection_mean": pick["mean"], "in_dataset": r.in_dataset, "ood_group": r.ood_group,
                             "n_sets": r.n_sets, "mean": r.mean, "worst": r.worst, "worst_set": r.worst_set})
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


SEED_HEADING = "Selection per training seed"


def seed_view(frame: pd.DataFrame, select_on: Optional[List[str]] = None) -> pd.DataFrame:
    """:func:`seed_selections` on the sets the suite's views select on (``select_on``, else the default selection);
    empty without a suite or a selection. Computed once per aggregate and handed to the console, CSV and report."""
    tokens = (select_on or default_selection(frame)) if has_suite(frame) else []
    return seed_selections(frame, tokens) if tokens else pd.DataFrame(columns=SEED_COLUMNS)


def seed_selection_lines(table: pd.DataFrame) -> List[str]:
    """Console lines of :func:`seed_selections`: per model and seed the pick, then each held-out group's mean/worst."""
    lines = []
    for (model, seed), g in table.groupby(["model", "seed"], sort=True):
        first = g.iloc[0]
        cells = [f"in {r.in_dataset}, {r.ood_group} {r.mean:.3f}/{r.worst:.3f}" for r in g.itertuples(index=False)]
        lines.append(f"{model}, seed {seed}: {first['detector']} (selection worst {_fmt(first['selection_worst'])}, "
                     f"mean {_fmt(first['selection_mean'])}); held out mean/worst: " + "; ".join(cells))
    return lines


def ceiling(sets: pd.DataFrame) -> pd.DataFrame:
    """Per (in-distribution, group) of ``sets`` (the held-out sets, or the selection sets): the mean and the worst
    over the group's sets of the best learned detector's AUROC on each set, the detector chosen per set with that
    set's OOD labels: an optimistic upper bound on what any single learned detector of these runs reaches
    (``optimistic`` is True on every row)."""
    learned = ood_rows(sets)
    learned = learned[~learned["model_free"].astype(bool)]
    if learned.empty:
        return pd.DataFrame(columns=["in_dataset", "ood_group", "n_sets", "mean", "worst", "worst_set", "optimistic"])
    best = learned.loc[learned.groupby(SET_KEYS)["auroc"].idxmax()]
    rows = []
    for (ind, grp), g in best.groupby(["in_dataset", "ood_group"], sort=False):
        w = g.loc[g["auroc"].idxmin()]
        rows.append({"in_dataset": ind, "ood_group": grp, "n_sets": len(g), "mean": float(g["auroc"].mean()),
                     "worst": float(g["auroc"].min()), "worst_set": str(w["ood_dataset"]), "optimistic": True})
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def selection_lines(picked: Dict[str, Dict[str, Any]]) -> List[str]:
    """Console lines: per model the selected detector, its held-out groups and sets, the baseline beside it."""
    lines = []
    for model, p in picked.items():
        on = "+".join(p["tokens"])
        lines.append(f"{model}: selected on {on} ({len(p['sets'])} sets, none of them reported below): "
                     f"{p['detector'] or '(no learned detector on every set)'} (worst {_fmt(p['worst'])}, mean {_fmt(p['mean'])}); "
                     f"model-free baseline chosen the same way: {p['baseline'] or '-'} (worst {_fmt(p['baseline_worst'])})")
        groups = p["groups"]
        held = p["held_out"]
        for (ind, grp), gg in (groups.groupby(["in_dataset", "ood_group"], sort=False) if len(groups) else []):
            cells = []
            for name in (p["detector"], p["baseline"]):
                r = gg[gg["detector"] == name]
                if len(r):
                    r = r.iloc[0]
                    cells.append(f"{name}: mean {r['mean']:.3f} [{r['mean_lo']:.3f}, {r['mean_hi']:.3f}], "
                                 f"worst {r['worst']:.3f} [{r['worst_lo']:.3f}, {r['worst_hi']:.3f}] ({r['worst_set']})")
            lines.append(f"  held out, in {ind}, {grp} ({int(gg['n_sets'].iloc[0])} sets): " + "; ".join(cells))
        for key, head in (("selection_ceiling", "selection sets' ceiling (optimistic: each selection set's best learned "
                                                 "detector, chosen with its OOD labels; no single detector's mean or worst "
                                                 "there can exceed it)"),
                          ("ceiling", "ceiling (optimistic: each held-out set's best learned detector, chosen with its "
                                      "OOD labels)")):
            ceil = p.get(key)
            if ceil is not None and len(ceil):
                lines.append(f"  {head}: " + "; ".join(
                    f"in {r.in_dataset}, {r.ood_group}: mean {r.mean:.3f}, worst {r.worst:.3f} ({r.worst_set})"
                    for r in ceil.itertuples(index=False)))
        shift = p.get("shift")
        if shift is not None and len(shift):
            lines.append("  shift (in_test against meaning-keeping transforms of it; AUROC 0.5 = accepted, gap = mean "
                         "|AUROC - 0.5|): " + "; ".join(
                             f"in {r.in_dataset}, {r.detector}: mean {r.mean:.3f}, gap {r.gap:.3f}, farthest "
                             f"{r.farthest_set} {r.farthest:.3f}" for r in shift.itertuples(index=False)))
        mine = held[held["detector"] == p["detector"]]
        if len(mine):
            beaten = int((~mine["beats_baselines"]).sum())
            lines.append(f"  per held-out set ({p['detector']}; '!' = not above the best model-free baseline of the set, "
                         f"{beaten} of {len(mine)}): " + ", ".join(
                             f"{r.in_dataset}->{r.ood_dataset} {r.auroc:.3f}{'' if r.beats_baselines else '!'}"
                             for r in mine.itertuples(index=False)))
    return lines


def group_table(sets: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    """Per model: detectors (rows) x (in-distribution, group) columns of ``mean / worst`` cells; model-free
    baselines marked (mf)."""
    out = {}
    summary = group_summary(sets)
    if summary.empty:
        return out
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    for model, g in summary.groupby("model", sort=True):
        g = g.assign(col=[f"{i}:{grp}" for i, grp in zip(g["in_dataset"], g["ood_group"])],
                     _o=[order.get(grp, 9) for grp in g["ood_group"]])
        cols = list(dict.fromkeys(g.sort_values(["in_dataset", "_o"])["col"]))
        table: Dict[str, Dict[str, str]] = {}
        for r in g.itertuples(index=False):
            name = r.detector + (" (mf)" if r.model_free else "")
            table.setdefault(name, {})[r.col] = f"{r.mean:.3f}/{r.worst:.3f}"
        out[model] = pd.DataFrame(table).T.reindex(columns=cols).fillna("-").sort_index()
    return out


def severity_rows(sets: pd.DataFrame) -> pd.DataFrame:
    """Rows of sets on a severity axis (``<base>:<derivation>=<strength>``) with ``axis`` and ``strength``."""
    from genood.data.derived import severity

    found = []
    for name in sets["ood_dataset"].unique():
        try:
            sev = severity(str(name))
        except ValueError:
            sev = None
        if sev:
            found.append({"ood_dataset": name, "axis": sev[0], "strength": sev[1]})
    if not found:
        return pd.DataFrame(columns=list(sets.columns) + ["axis", "strength"])
    return sets.merge(pd.DataFrame(found), on="ood_dataset").sort_values(["model", "in_dataset", "axis", "detector", "strength"])


def severity_figure(rows: pd.DataFrame, detectors: Optional[List[str]] = None):
    """AUROC against strength, one panel per (model, in-distribution, axis), a line per detector."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(rows.groupby(["model", "in_dataset", "axis"], sort=True))
    cols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[f"{a}" for (m, i, a), _ in panels])
    for k, ((model, ind, axis), g) in enumerate(panels):
        for name, h in g.groupby("detector"):
            if detectors and name not in detectors:
                continue
            fig.add_trace(go.Scatter(x=h["strength"], y=h["auroc"], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=k == 0), row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(range=[0, 1.02], title_text="AUROC")
    fig.update_xaxes(title_text="strength")
    fig.update_layout(height=300 * nrows, width=380 * cols, template="plotly_white", title="AUROC against shift strength")
    return fig


def format_suite(frame: pd.DataFrame, select_on: Optional[List[str]] = None, width: int = 100,
                 run_dirs: Optional[List[Path]] = None, per_seed: Optional[pd.DataFrame] = None) -> str:
    """The suite's console view (empty without a suite): per model, detectors x (in-distribution, group) as
    ``mean/worst`` AUROC over the group's sets (the shift column apart: 0.5 is the wish there), then the detector
    selected on ``select_on`` (default: near and corruption) with its numbers on every other set and the
    model-free baseline beside it (``per_seed``: :func:`seed_view`'s table when the caller has it)."""
    if not has_suite(frame):
        return ""
    sets = per_set(frame)
    parts = ["\nOOD suite: AUROC mean/worst over each group's sets (label-free per-point detectors; (mf) = model-free baseline)"]
    groups = set_groups(frame, run_dirs or [])
    if len(groups):
        parts.append("\nGroups of the transformed sets (a shift keeps the meaning: the grouping classifier's accuracy "
                     "stays within the margin of its clean accuracy; otherwise a corruption):")
        parts.extend(textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False)
                     for line in set_group_lines(groups))
    for model, table in group_table(sets).items():
        parts.append(f"\n{model}")
        parts.extend(wrapped(table, width))
    tokens = select_on if select_on else default_selection(frame)
    if tokens:
        parts.append("\nSelection (chosen on the selection sets only, reported on the others):")
        parts.extend(textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False) for line in
                     selection_lines(selection(sets, tokens)))
        per_seed = seed_view(frame, tokens) if per_seed is None else per_seed
        if len(per_seed):
            parts.append(f"\n{SEED_HEADING} (each seed's runs alone; the selection above is on the seeds' mean AUROCs):")
            parts.extend(textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False)
                         for line in seed_selection_lines(per_seed))
    return "\n".join(parts)
