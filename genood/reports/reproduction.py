"""The reproduction table: each seed's headline number beside ours, measured on the zoo's reference models.

``zoo/reproductions.yaml`` declares the rows: the seed, the method, the pair, the published AUROC with its
source (and the bar the reproduction issue sets), the published bits/dim, the zoo models the row needs and the
OOD job that measures ours (an ordinary run configuration with ``ood.checkpoint: zoo:<name>``); a row marked
``headline: true`` is its models' headline number, written into their manifests. For a row whose
models are published, ``genood-reproduce`` runs that job (resumable, cached like every OOD run) and reads the
detector's AUROC and its bootstrap interval from metrics.json; for a row whose models are still training it shows
where the training stands: the step reached of the recipe's steps, the hours spent of the budget, and the last
point of the training's OOD curves (held-out bits/dim and the likelihood's AUROC), so the trend is visible before
the number exists. Results go to ``zoo/reproduction.json`` and ``zoo/REPRODUCTION.md`` (committed, so ``make
demo`` and the README show them without recomputing), and ``--figure`` writes the AUROC-vs-steps curves.

The recipes' full lengths are GPU runs: ``meta_configurations/reproduce/<seed>.yaml`` is one OOD sweep per seed
whose runs are the rows' jobs trained to the whole recipe (each row's ``config``, then its ``gpu`` overrides, e.g.
the seed's own number of importance samples, and ``ood.checkpoint: null`` so the run trains first). Rows that no
CPU model serves (``models: []``, e.g. the MNIST -> FashionMNIST direction) are measured there only.
``--sweep <runs_root>/<sweep-id>`` finds each row's run in such a sweep by its configuration (not its name) and
writes the same table, with the sweep's numbers, to ``<sweep folder>/REPRODUCTION.md``.

    genood-reproduce                 measure every row that can be measured, write the table
    genood-reproduce --show          print the committed table (no computation)
    genood-reproduce --rows lr_fmnist_mnist --threads 2
    genood-reproduce --sweep runs/local-1a2b3c4d      the table of a reproduction sweep (meta_configurations/reproduce/)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from genood import runconfig
from genood.paths import shown_path

__all__ = ["rows", "row_status", "measure_row", "reproduce", "gpu_job", "job_key", "sweep_results", "markdown",
           "curves_figure", "main"]


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
    if not row["models"]:  # measured by the GPU sweep of its seed only
        return {"ready": False, "models": [], "gpu_only": True}
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
        chosen = not select or row["id"] in select
        if not chosen and row["id"] in old:
            results.append(old[row["id"]])
            continue
        status = row_status(row)  # a row new to the table shows where its models stand even when not chosen
        measured = measure and chosen and status["ready"]
        ours = measure_row(row, threads, log) if measured else (old.get(row["id"], {}).get("ours")
                                                                if status["ready"] else None)
        if ours and row.get("headline"):  # the model's headline number (measured now or committed): its manifest
            for name in row["models"]:
                zoo.set_headline(name, {"row": row["id"], "detector": row["detector"], "pair": row.get("pair"),
                                        "auroc": ours["auroc"], "auroc_ci": ours.get("auroc_ci"),
                                        "published": (row.get("published") or {}).get("auroc")})
        results.append({k: row.get(k) for k in ("id", "seed", "method", "pair", "detector", "label_free", "published",
                                                 "bits_published")} | {"status": status, "ours": ours})
    rundir.write_json(zoo.zoo_dir() / "reproduction.json", {"rows": results})
    rundir.write_text(zoo.zoo_dir() / "REPRODUCTION.md", markdown(results))
    return results


def gpu_job(row: Dict[str, Any]) -> Dict[str, Any]:
    """The row's job at the recipe's full length (a GPU run): its config, its ``gpu`` overrides, and no checkpoint
    (the run trains its model first), resolved."""
    raw = runconfig.deep_merge(runconfig.copy_tree(row["config"]), runconfig.copy_tree(row.get("gpu") or {}))
    raw.setdefault("ood", {})["checkpoint"] = None
    return runconfig.resolve(raw)


def job_key(cfg: Dict[str, Any]) -> str:
    """What makes two OOD runs the same job, whatever they are named or where they ran: the run-name digest of the
    configuration with the name, the checkpoint and the run's place cleared."""
    cfg = runconfig.copy_tree(cfg)
    cfg["run"] = dict(cfg["run"], name=None)
    cfg["ood"] = dict(cfg["ood"], checkpoint=None)
    return runconfig.run_name(cfg, "ood")


def _sweep_bits(directory: Path) -> Optional[float]:
    """Mean bits/dim of the run's in-distribution test points (scores.parquet), when it has that column."""
    path = directory / "scores.parquet"
    if not path.exists():
        return None
    import pandas as pd
    table = pd.read_parquet(path)
    if "bits_per_dim" not in table or "split" not in table:
        return None
    part = table.loc[table["split"] == "in_test", "bits_per_dim"]
    return float(part.mean()) if len(part) else None


def sweep_results(sweep_dir: Path, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Every row, with ours read from the run of ``sweep_dir`` (a reproduction sweep's folder) doing its job; a row
    without such a run says so. Writes ``<sweep_dir>/reproduction.json`` and ``REPRODUCTION.md``."""
    from genood import rundir
    from genood.models.training import CHECKPOINT, load_checkpoint
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise runconfig.ConfigError(f"--sweep {shown_path(sweep_dir)} is not a folder; give <runs_root>/<sweep-id> of a "
                                    f"sweep created from meta_configurations/reproduce/.")
    runs: Dict[str, Path] = {}
    for path in sorted(sweep_dir.glob("*/config.yaml")):
        try:
            runs[job_key(runconfig.resolve(runconfig.load_yaml(path)))] = path.parent
        except (runconfig.ConfigError, KeyError, TypeError):
            log(f"skipping {shown_path(path)}: not a configuration of this version")
    results = []
    for row in rows():
        cfg = gpu_job(row)
        directory = runs.get(job_key(cfg))
        metrics_path = directory / "metrics.json" if directory else None
        ours, model = None, {"name": row["models"][0] if row["models"] else "(trained in the sweep)",
                             "state": "not in this sweep", "steps_done": 0,
                             "steps_recipe": int(cfg["training"]["steps"]), "hours": 0.0}
        if metrics_path is not None and metrics_path.exists():
            entry = json.loads(metrics_path.read_text()).get(row["detector"])
            if isinstance(entry, dict) and "auroc" in entry:
                ours = {"auroc": entry["auroc"], "auroc_ci": entry.get("auroc_ci"),
                        "optimistic": bool(entry.get("optimistic", False)), "run": shown_path(directory)}
            step = load_checkpoint(directory / CHECKPOINT)["step"] if (directory / CHECKPOINT).exists() else 0
            model.update(state="published", steps_done=int(step), bits_per_dim=_sweep_bits(directory))
        elif directory is not None:
            model["state"] = "running"
        log(f"{row['id']}: " + (f"AUROC {ours['auroc']:.4f} in {shown_path(directory)}" if ours else model["state"]))
        results.append({k: row.get(k) for k in ("id", "seed", "method", "pair", "detector", "label_free", "published",
                                                 "bits_published")} | {"status": {"ready": ours is not None,
                                                                                   "models": [model]}, "ours": ours})
    rundir.allow_writes(sweep_dir)  # the folder the user named
    rundir.write_json(sweep_dir / "reproduction.json", {"rows": results})
    rundir.write_text(sweep_dir / "REPRODUCTION.md", markdown(results, source=f"the runs of {shown_path(sweep_dir)}"))
    return results


def _committed() -> List[Dict[str, Any]]:
    path = _zoo().zoo_dir() / "reproduction.json"
    return json.loads(path.read_text()).get("rows", []) if path.exists() else []


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: a gap that rounds to 0 is not "-0.000"


def _steps(m: Dict[str, Any], named: bool) -> str:
    if m["state"] in ("GPU sweep only", "not in this sweep", "running"):
        return f"{m['state']} (meta_configurations/reproduce/)" if m["state"] == "GPU sweep only" else m["state"]
    out = f"{m['steps_done'] or 0:,} / {m['steps_recipe'] or 0:,}"
    if m["state"] != "published":
        out += f" ({m['state']}, {m['hours']:.2f} of {m.get('budget_hours', 0):.1f} h)"
    return f"{m['name']}: {out}" if named else out


def markdown(results: List[Dict[str, Any]], source: str = "the zoo's reference models") -> str:
    """The table as Markdown: published (source), ours with its 95% interval, the gap, steps of the recipe, bits/dim."""
    lines = ["# Reproduction of the seeds' headline numbers", "",
             f"Made by `genood-reproduce` from {source} (zoo/reproductions.yaml declares the rows). "
             "AUROC: in-distribution positive, every score oriented higher = more in-distribution. A row still "
             "training shows its last OOD-curve point instead of a result.", "",
             "| seed | method | pair | published (target) | ours [95% CI] | gap | steps of recipe | bits/dim ours / published |",
             "|---|---|---|---|---|---|---|---|"]
    sources = []
    for r in results:
        pub, ours, st = r.get("published") or {}, r.get("ours"), r["status"]
        if not st["models"]:  # a row only the GPU sweep measures
            st = dict(st, models=[{"name": "-", "state": "GPU sweep only", "steps_done": 0, "steps_recipe": 0,
                                   "hours": 0.0}])
        main = st["models"][0]
        steps = "; ".join(_steps(m, len(st["models"]) > 1) for m in st["models"])
        curve = main.get("curve") or {}
        bits = main.get("bits_per_dim", curve.get("bits_per_dim"))
        if ours:
            ci = ours.get("auroc_ci") or [None, None]
            got = f"{ours['auroc']:.3f} [{_fmt(ci[0])}, {_fmt(ci[1])}]" + (" (optimistic)" if ours.get("optimistic") else "")
            gap = _fmt(ours["auroc"] - pub["auroc"]) if pub.get("auroc") is not None else "-"
        else:
            last = (f"likelihood AUROC {_fmt(curve.get('likelihood_auroc'))} at step {curve['step']:,}"
                    if curve else "")
            if st.get("ready"):  # published but not measured yet: the curve is its training's, said so
                got = "not measured yet" + (f" (its training's last curve: {last})" if last else "")
            else:
                got = f"training: {last}" if last else "not measured yet"
            gap = "-"
        target = f" ({_fmt(pub.get('target'))})" if pub.get("target") is not None else ""
        pair = " -> ".join(r.get("pair") or [])
        bp = (r.get("bits_published") or {}).get("value") or "-"
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
    parser.add_argument("--sweep", help="a reproduction sweep's folder (<runs_root>/<sweep-id>): its table, not the zoo's")
    args = parser.parse_args(argv)

    def run():
        if args.sweep:
            print(markdown(sweep_results(Path(args.sweep), log=lambda m: print(m, file=sys.stderr, flush=True)),
                           source=f"the runs of {args.sweep}"))
            return
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
