"""The ``lid`` score: local intrinsic dimension at a calibrated threshold, computed by a split-level
stage over a seeded subset of each split (see :mod:`ood.lid_stage`). Its keys are ``lid.*``
(spec: ``lid.yaml`` beside this file). Together with ``log_likelihood`` it feeds the dual-threshold
detectors (:mod:`ood.detectors`)."""
from __future__ import annotations

from typing import Any, Dict

from genood.ood.scores import StageContext, StageOutput, register_stage
from genood.runconfig import ConfigError


def _dual_envelope_figure(directory, table, metrics, title: str):
    """The dual threshold's optimistic envelope (both thresholds swept with OOD labels) beside the ROC of its two
    inputs alone (the ``lid`` score's report figure)."""
    import numpy as np

    from genood.ood.detectors import dual_threshold_envelope
    from genood.reports.report import roc_figure

    has = table.dropna(subset=["lid"]) if {"lid", "log_likelihood"} <= set(table.columns) else table.iloc[:0]
    p, n = has[has.split == "in_test"], has[has.split == "ood"]
    if not (len(p) and len(n)):
        return None
    fig = roc_figure(directory, table, metrics, title, only={"lid", "log_likelihood", "dual_threshold_fixed"})
    g = dual_threshold_envelope(p["log_likelihood"], p["lid"], n["log_likelihood"], n["lid"])
    auc = metrics.get("dual_threshold", {}).get("auroc", float("nan"))
    fig.add_scatter(x=np.arange(g.size) / (g.size - 1), y=g, mode="lines", line=dict(shape="hv", dash="dash", color="black"),
                    name=f"dual-threshold envelope, optimistic ({auc:.3f})")
    return fig


def _lid_curves_figure(directory, title: str):
    import pandas as pd
    import plotly.graph_objects as go

    from genood.ood.figures import add_left_out_note, split_groups

    path = directory / "lid_curves.parquet"
    if not path.exists():
        return None
    curves = pd.read_parquet(path)
    knob = next(c for c in curves.columns if c not in ("split", "dataset", "index", "lid"))
    fig = go.Figure()
    groups = split_groups(curves)
    for label, colour, g in groups:
        if g is not None:
            mean = g.groupby(knob)["lid"].agg(["mean", "std"]).reset_index()
            fig.add_scatter(x=mean[knob], y=mean["mean"], mode="lines+markers", name=label, line=dict(color=colour),
                            error_y=dict(array=mean["std"].fillna(0), thickness=0.8))
    add_left_out_note(fig, groups)
    fig.update_layout(title=title, xaxis_title=knob, yaxis_title="LID (mean +- sd over points)")
    return fig


def lid_splits(ctx: StageContext) -> list:
    """The splits that get per-point LID work (``lid.in_splits`` and the OOD sets of ``lid.ood_groups``); other
    stages over the same decomposition (the rho_r trend) use the same ones, so they share its cache."""
    lcfg = ctx.cfg["lid"]
    wanted = set(lcfg.get("ood_groups") or [])  # OOD sets of other groups get no LID (it costs per point)
    if "transform" in wanted:  # transform sets are measured into shift or corruption (genood.ood.semantics)
        wanted |= {"shift", "corruption"}
    ins = set(lcfg.get("in_splits") or ["in_train", "in_val", "in_test", "generated"])
    return [sp for sp in ctx.splits if (ctx.groups[sp[0]] in wanted if sp[0] in ctx.groups else sp[0] in ins)]


def lid_caches(ctx: StageContext) -> Dict[str, Any]:
    """The run's resumable cache and the runs root's shared store of per-point LID work."""
    return {"cache_dir": ctx.run_dir / "lid_spectra" if ctx.run_dir else None,
            "shared_dir": ctx.runs_root / "lid_cache" if ctx.runs_root else None}


def _report(directory, table, metrics, pair):
    figs = [_dual_envelope_figure(directory, table, metrics, f"the dual threshold's envelope ({pair})")]
    from genood.ood.figures import run_title

    curves = _lid_curves_figure(directory, f"LID curves ({run_title(directory, pair)})")
    return [f for f in figs + [curves] if f is not None]


@register_stage("lid", higher_is_in=True, unit="dimensions",
                description="local intrinsic dimension at the chosen knob (flows: Jacobian; diffusions: FLIPD or the normal bundle; see ood.lid_stage)",
                needs=[("generator", "encode"), ("score", "sde")], report=_report)
def lid_score(ctx: StageContext) -> StageOutput:
    from genood.ood.lid_stage import run_lid_stage

    lcfg = ctx.cfg["lid"]
    if lcfg["calibration"] == "lpca" and "in_train" not in set(lcfg.get("in_splits") or ["in_train"]):
        raise ConfigError("lid.calibration lpca matches in_train's LID, so lid.in_splits must include in_train.")
    result = run_lid_stage(ctx.model, lid_splits(ctx), ctx.cfg, ctx.seed, ctx.log, **lid_caches(ctx))
    ctx.log(f"lid: {sum(len(v) for v in result.values.values())} points, {result.method}, "
            f"{result.knob} {result.log_tau:.3f} ({result.calibration['method']})")

    def figures(table, metrics: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        from genood.ood.figures import lid_curve_figure, lid_scatter, ood_title

        in_name, ood_name = cfg["data"]["in_distribution"], ood_title(cfg["data"]["ood"])
        figs = {"lid_curves": lid_curve_figure(result.curves, result.log_tau, knob=result.knob,
                                               title=f"LID curves ({result.method}), {cfg['model']['family']} trained on {in_name}; OOD: {ood_name}")}
        if "log_likelihood" in table:
            dual = metrics.get("dual_threshold", {}).get("auroc", float("nan"))
            figs["lid_vs_likelihood"] = lid_scatter(
                table, title=f"LID ({result.knob} = {result.log_tau:.2f}) vs log-likelihood; dual-threshold AUROC {dual:.3f} "
                             f"(likelihood alone {metrics.get('log_likelihood', {}).get('auroc', float('nan')):.3f})")
        return figs

    from genood.ood.metrics import lid_error_metrics

    errors = {}
    for split, truth in ctx.truth.items():  # synthetic manifolds: the estimator against the known LID
        if split not in result.values:
            continue
        errors[f"lid_error/{split}"] = dict(lid_error_metrics(result.values[split], truth[result.positions[split]]),
                                            method=result.method, **{result.knob: result.log_tau})
        ctx.log(f"lid error on {split}: MAE {errors[f'lid_error/{split}']['mae']:.3f}, "
                f"within +-1 {errors[f'lid_error/{split}']['within_1']:.3f}")
    info = {result.knob: result.log_tau}
    if result.knob != "log_tau":  # the Jacobian estimator's entries stay as they were before estimators existed
        info["lid_method"] = result.method
    return StageOutput(result.positions, result.values, metric_info=info,
                       artifacts={"lid_curves": result.curves}, figures=figures,
                       extra={"calibration": result.calibration}, metrics=errors)
