"""The rho_r trend of a flow (seed 000's Fast-LIDL): log rho_r(x), the flow's density convolved with
N(0, e^{2r} I) under the local linearisation of its generator, and its slope in r, for r over a grid
(``rho_r.r_grid``; the seed uses 120 points in [-20, 5]); the score ``fast_lidl`` is the LIDL estimate of
LID, D + d log rho_r / dr, at ``rho_r.r``. The formulas are in :func:`ood.lid.log_rho_r`.

It needs nothing the Jacobian LID stage has not computed: the same seeded points of the same splits
(``lid.n_per_split``, ``lid.in_splits``, ``lid.ood_groups``) and the same cached decomposition
(``lid_spectra/<split>.npz``: the spectrum and the latent's squared coordinates in its eigenbasis), so
with ``lid`` in ``ood.scores`` the trend costs a few array operations. The per-point curves are written
as ``rho_r_trend.parquet`` (split, dataset, index, r, log_rho, lid) and drawn as the seed's trend plots.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from genood.ood.scores import ScoreUnavailable, StageContext, StageOutput, register_stage
from genood.ood.scores.lid import lid_caches, lid_splits


def trend_figure(trend, r: float, title: str = ""):
    """Mean (and spread) over points of log rho_r and of the LIDL estimate D + d log rho_r / dr against r,
    one colour per split (the seed's rho_r trend plots)."""
    from plotly.subplots import make_subplots

    from genood.ood.figures import add_left_out_note, split_groups, trace_name

    fig = make_subplots(rows=1, cols=2, subplot_titles=("log rho_r(x) (nats, [0,1] units)", "D + d log rho_r / dr (LIDL)"))
    groups = split_groups(trend)
    for label, colour, part in groups:
        if part is None:
            continue
        for col, column in enumerate(("log_rho", "lid"), start=1):
            stats = part.groupby("r")[column].agg(["mean", "std"]).reset_index()
            fig.add_scatter(x=stats["r"], y=stats["mean"], mode="lines", line=dict(color=colour, width=2.5),
                            name=trace_name(label, part, f"{part['index'].nunique()} points"),
                            showlegend=col == 1, row=1, col=col)
            fig.add_scatter(x=np.r_[stats["r"], stats["r"][::-1]],
                            y=np.r_[stats["mean"] + stats["std"].fillna(0), (stats["mean"] - stats["std"].fillna(0))[::-1]],
                            fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0), showlegend=False,
                            hoverinfo="skip", row=1, col=col)
    add_left_out_note(fig, groups)
    fig.add_vline(x=r, line_dash="dash", line_color="black")
    fig.update_xaxes(title_text="r (log radius)")
    fig.update_layout(title=title, template="plotly_white", legend=dict(orientation="h", y=-0.2), width=1100, height=520)
    return fig


def _report(directory, table, metrics, pair):
    import pandas as pd

    path = directory / "rho_r_trend.parquet"
    if not path.exists():
        return []
    from genood.ood.figures import run_title

    return [trend_figure(pd.read_parquet(path), float(metrics.get("fast_lidl", {}).get("r", float("nan"))),
                         f"rho_r trend ({run_title(directory, pair)})")]


@register_stage("fast_lidl", higher_is_in=True, unit="dimensions",
                description="LIDL estimate D + d log rho_r / dr of the flow's linearised Gaussian-convolved density at rho_r.r "
                            "(seed 000's rho_r trend; reuses the Jacobian LID stage's decomposition)",
                needs=("generator", "encode"), report=_report)
def fast_lidl(ctx: StageContext) -> StageOutput:
    import pandas as pd

    from genood.ood import lid as lidlib
    from genood.ood.lid_stage import ESTIMATORS, raw_results

    if ctx.cfg["lid"]["mode"] != "exact":
        raise ScoreUnavailable("fast_lidl needs each point's eigendecomposition: set lid.mode: exact (fast mode keeps "
                               "only a Lanczos quadrature of the spectrum).")
    lo, hi, num = ctx.cfg["rho_r"]["r_grid"]
    rs = np.linspace(float(lo), float(hi), int(num))
    r = float(ctx.cfg["rho_r"]["r"])
    splits = lid_splits(ctx)
    _, positions, raws = raw_results(ctx.model, splits, ctx.cfg, ctx.seed, ctx.log, est=ESTIMATORS["jacobian"],
                                     **lid_caches(ctx))
    values, rows = {}, []
    for name, dataset, _, index in splits:
        raw = raws[name]
        log_rho, slope = lidlib.log_rho_r(raw["spectra"], raw["latent_proj_sq"], np.append(rs, r))
        dim = raw["spectra"].shape[1] if raw["spectra"].ndim == 2 else 0
        lid_r = dim + slope
        values[name] = lid_r[:, -1]
        idx = np.asarray(index)[positions[name]]
        rows.append(pd.DataFrame({"split": name, "dataset": dataset, "index": np.repeat(idx, rs.size),
                                  "r": np.tile(rs, len(idx)), "log_rho": log_rho[:, :-1].reshape(-1),
                                  "lid": lid_r[:, :-1].reshape(-1)}))
    trend = pd.concat(rows, ignore_index=True)
    ctx.log(f"fast_lidl: rho_r trend over {rs.size} radii for {sum(len(v) for v in values.values())} points; "
            f"score at r = {r:.2f}")

    def figures(table, metrics: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        from genood.ood.figures import ood_title

        return {"rho_r_trend": trend_figure(trend, r, f"rho_r trend, {cfg['model']['family']} trained on "
                                                      f"{cfg['data']['in_distribution']}; OOD: {ood_title(cfg['data']['ood'])}")}
    return StageOutput(positions, values, metric_info={"r": r}, artifacts={"rho_r_trend": trend}, figures=figures)
