"""The reproduction table: each seed's headline number beside ours, measured on the zoo's reference models.

``zoo/reproductions.yaml`` declares the rows: the seed, the method, the pair, the published AUROC with its
source (and the bar the reproduction issue sets), the published bits/dim, the zoo models the row needs and the
OOD job that measures ours (an ordinary run configuration with ``ood.checkpoint: zoo:<name>``). For a row whose
models are published, ``genood-reproduce`` runs that job (resumable, cached like every OOD run) and reads the
detector's AUROC and its bootstrap interval from metrics.json; for a row whose models are still training it shows
where the training stands: the step reached of the recipe's steps, the hours spent of the budget, and the last
point of the training's OOD curves (held-out bits/dim and the likelihood's AUROC), so the trend is visible before
the number exists. Results go to ``zoo/reproduction.json`` and ``zoo/REPRODUCTION.md`` (committed, so ``make
demo`` and the README show them without recomputing), and ``--figure`` writes the AUROC-vs-steps curves.

    genood-reproduce                 measure every row that can be measured, write the table
    genood-reproduce --show          print the committed table (no computation)
    genood-reproduce --rows lr_fmnist_mnist --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from genood import runconfig
from genood.paths import shown_path

__all__ = ["rows", "row_status", "measure_row", "reproduce", "markdown", "curves_figure", "main"]


def _zoo():
    from genood.models import zoo
    return zoo


def rows() -> List[Dict[str, Any]]:
    """The declared rows of zoo/reproductions.yaml."""
    path = _zoo().zoo_dir() / "reproductions.yaml"
    raw = runconfig.load_yaml(path).get("rows") if path.exists() else None
    if not isinstance(raw, list) or not all(isinstance(r, dict) and {"id", "seed", "models", "config", "detector"} <= set(r)
                                            for r in raw):
        raise runconfig.ConfigError(f"{path}: 'rows' must be a list of rows with id, seed, models, config and detector.")
    return raw


def row_status(row: Dict[str, Any]) -> Dict[str, Any]:
    """Where the row's models stand: published (steps done of the recipe) or training (ledger and last curve)."""
    zoo = _zoo()
    published, entries = set(zoo.names()), zoo.reference_entries()
    models = []
    for name in row["models"]:
        if name in published:
            m = zoo.manifest(name)
            models.append({"name": name, "state": "published", "steps_done": m["steps_done"],
                           "steps_recipe": m["steps_recipe"], "hours": m["wall_seconds"] / 3600.0,
                           "bits_per_dim": m["heldout_bits_per_dim"], "curve": _last_curve(m.get("curves") or [])})
            continue
        ledger = zoo.Ledger(name)
        entry = entries.get(name, {})
        steps_recipe = int(zoo.reference_config(name)["training"]["steps"]) if entry else None
        models.append({"name": name, "state": "not started" if ledger.step is None else "training",
                       "steps_done": ledger.step or 0, "steps_recipe": steps_recipe,
                       "hours": ledger.seconds / 3600.0, "budget_hours": float(entry.get("budget_hours", 3.0)),
                       "curve": _last_curve(_resume_curves(name))})
    return {"ready": all(m["state"] == "published" for m in models), "models": models}


def _resume_curves(name: str) -> List[Dict[str, Any]]:
    path = _zoo().zoo_dir() / "resume" / f"{name}.curves.parquet"
    if not path.exists():
        return []
    import pandas as pd
    return json.loads(pd.read_parquet(path).to_json(orient="records"))


def _last_curve(curves: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The last evaluation of a training's OOD curves: step, in-distribution bits/dim, the likelihood's AUROC."""
    if not curves:
        return None
    step = max(r["step"] for r in curves)
    last = [r for r in curves if r["step"] == step]
    ood = [r for r in last if r.get("auroc") is not None]
    ind = [r for r in last if r.get("auroc") is None]
    return {"step": step, "bits_per_dim": ind[0]["bits_per_dim"] if ind else None,
            "likelihood_auroc": ood[0]["auroc"] if ood else None}


def measure_row(row: Dict[str, Any], threads: int = 1, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the row's OOD job on its zoo models; the detector's AUROC and interval from metrics.json."""
    from genood.ood.runner import run_ood
    cfg = runconfig.resolve(runconfig.copy_tree(row["config"]),
                            ["run.sweep_id=reproduce", f"run.num_threads={int(threads)}", "tracking.wandb=false"])
    directory = run_ood(cfg, echo=True)
    metrics = json.loads((Path(directory) / "metrics.json").read_text())
    entry = metrics.get(row["detector"])
    if not isinstance(entry, dict) or "auroc" not in entry:
        raise runconfig.ConfigError(f"Reproduction row {row['id']!r}: detector {row['detector']!r} is not in "
                                    f"{directory}/metrics.json; name one of {', '.join(sorted(metrics))}.")
    log(f"{row['id']}: AUROC {entry['auroc']:.4f} ({row['detector']}) in {directory}")
    return {"auroc": entry["auroc"], "auroc_ci": entry.get("auroc_ci"), "optimistic": bool(entry.get("optimistic", False)),
            "run": shown_path(Path(directory))}


def reproduce(select: Optional[List[str]] = None, threads: int = 1, measure: bool = True,
              log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Every row (or those named): its status, and ours where its models are published. Writes the results."""
    from genood import rundir
    zoo = _zoo()
    old = {r["id"]: r for r in _committed()}
    results = []
    for row in rows():
        if select and row["id"] not in select:
            if row["id"] in old:
                results.append(old[row["id"]])
            continue
        status = row_status(row)
        ours = measure_row(row, threads, log) if (measure and status["ready"]) else (old.get(row["id"], {}).get("ours")
                                                                                     if status["ready"] else None)
        results.append({k: row.get(k) for k in ("id", "seed", "method", "pair", "detector", "label_free", "published",
                                                 "bits_published")} | {"status": status, "ours": ours})
    rundir.write_json(zoo.zoo_dir() / "reproduction.json", {"rows": results})
    rundir.write_text(zoo.zoo_dir() / "REPRODUCTION.md", markdown(results))
    return results


def _committed() -> List[Dict[str, Any]]:
    path = _zoo().zoo_dir() / "reproduction.json"
    return json.loads(path.read_text()).get("rows", []) if path.exists() else []


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _steps(m: Dict[str, Any], named: bool) -> str:
    out = f"{m['steps_done'] or 0:,} / {m['steps_recipe'] or 0:,}"
    if m["state"] != "published":
        out += f" ({m['state']}, {m['hours']:.2f} of {m.get('budget_hours', 0):.1f} h)"
    return f"{m['name']}: {out}" if named else out


def markdown(results: List[Dict[str, Any]]) -> str:
    """The table as Markdown: published (source), ours with its 95% interval, the gap, steps of the recipe, bits/dim."""
    lines = ["# Reproduction of the seeds' headline numbers", "",
             "Made by `genood-reproduce` from the zoo's reference models (zoo/reproductions.yaml declares the rows). "
             "AUROC: in-distribution positive, every score oriented higher = more in-distribution. A row still "
             "training shows its last OOD-curve point instead of a result.", "",
             "| seed | method | pair | published (target) | ours [95% CI] | gap | steps of recipe | bits/dim ours / published |",
             "|---|---|---|---|---|---|---|---|"]
    sources = []
    for r in results:
        pub, ours, st = r.get("published") or {}, r.get("ours"), r["status"]
        main = st["models"][0]
        steps = "; ".join(_steps(m, len(st["models"]) > 1) for m in st["models"])
        curve = main.get("curve") or {}
        bits = main.get("bits_per_dim", curve.get("bits_per_dim"))
        if ours:
            ci = ours.get("auroc_ci") or [None, None]
            got = f"{ours['auroc']:.3f} [{_fmt(ci[0])}, {_fmt(ci[1])}]" + (" (optimistic)" if ours.get("optimistic") else "")
            gap = _fmt(ours["auroc"] - pub["auroc"]) if pub.get("auroc") is not None else "-"
        else:
            got = (f"training: likelihood AUROC {_fmt(curve.get('likelihood_auroc'))} at step {curve['step']:,}"
                   if curve else "not measured yet")
            gap = "-"
        target = f" ({_fmt(pub.get('target'))})" if pub.get("target") is not None else ""
        pair = " -> ".join(r.get("pair") or [])
        bp = (r.get("bits_published") or {}).get("value", "-")
        lines.append(f"| {r['seed']} | {r.get('method', r['detector'])} | {pair} | {_fmt(pub.get('auroc'))}{target} | "
                     f"{got} | {gap} | {steps} | {_fmt(bits, 4)} / {bp} |")
        if pub.get("source"):
            sources.append(f"- {r['id']}: {pub['source']}")
    return "\n".join(lines + ["", "Sources of the published numbers:", *sources, ""])


def curves_figure(results: List[Dict[str, Any]]):
    """AUROC (the likelihood's, from the OOD curves) and held-out bits/dim against the training step, per model."""
    from plotly.subplots import make_subplots
    zoo = _zoo()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out bits/dim", "likelihood AUROC (in_test vs OOD)"))
    seen = set()
    for r in results:
        for m in r["status"]["models"]:
            if m["name"] in seen:
                continue
            seen.add(m["name"])
            curves = (zoo.manifest(m["name"]).get("curves") if m["state"] == "published" else _resume_curves(m["name"])) or []
            ind = [c for c in curves if c.get("auroc") is None]
            ood = [c for c in curves if c.get("auroc") is not None]
            fig.add_scatter(x=[c["step"] for c in ind], y=[c["bits_per_dim"] for c in ind], name=m["name"], row=1, col=1)
            fig.add_scatter(x=[c["step"] for c in ood], y=[c["auroc"] for c in ood], name=m["name"], showlegend=False,
                            row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_layout(title="Reference models while they train", template="plotly_white", width=1100, height=460)
    return fig


def main(argv=None) -> int:
    from genood import entrypoint
    parser = argparse.ArgumentParser(prog="genood-reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="row ids to measure (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print the committed table, compute nothing")
    parser.add_argument("--no-measure", action="store_true", help="refresh the training status only (no OOD jobs)")
    parser.add_argument("--figure", help="write the curves figure to this .html file")
    args = parser.parse_args(argv)

    def run():
        if args.show:
            results = _committed() or reproduce(measure=False)
        else:
            results = reproduce(args.rows, args.threads, measure=not args.no_measure,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        print(markdown(results))
        if args.figure:
            curves_figure(results).write_html(args.figure)
    return entrypoint.guarded(run)


if __name__ == "__main__":
    sys.exit(main())
