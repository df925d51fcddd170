"""Seed 000's sampling experiments: the probability mass of a ball around x and the Gaussian-convolved
likelihood rho_r(x), estimated by Monte Carlo from the model's own samples x_1..x_N, against r.

In [0, 1] data units (stored data / 256), with D dimensions and r a log radius *per dimension*:

* ball mass  P(||X - x|| <= e^r sqrt(D)) ~ (1/N) #{i : ||x_i - x|| <= e^r sqrt(D)}   (the ball a Gaussian of
  scale e^r mostly fills: its noise has norm ~ e^r sqrt(D));
* convolution  rho_r(x) = E_X[N(x; X, e^{2r} I)] ~ (1/N) sum_i N(x; x_i, e^{2r} I)  (a kernel density estimate
  on the samples, computed with logsumexp).

Both are unbiased, and both fail in the way the seed shows: in hundreds of dimensions no sample lands near a
point at small r (the mass is 0, log rho_r collapses onto the nearest sample's distance), which is why the
linearised estimate (``fast_lidl``'s rho_r trend) is used instead; this stage draws the two side by side
when both ran. The stage scores the same seeded points as the LID stages (``lid.n_per_split``,
``lid.in_splits``, ``lid.ood_groups``); the per-point curves go to ``sampling_trend.parquet`` (split,
dataset, index, r, log_rho, log_mass). The score ``sampled_rho_r`` is log rho_r at ``sampling.r``.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch

from genood.ood.figures import config_title, run_title
from genood.ood.scores import StageContext, StageOutput, register_stage
from genood.ood.scores.lid import lid_splits

SCALE = 256.0  # stored data -> [0, 1] units


def squared_distances(x: torch.Tensor, samples: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """||x_j - x_i||^2 (Q, N) in float64, points x (Q, D) against samples (N, D)."""
    x, samples = x.double(), samples.double()
    out = [torch.cdist(x, samples[s:s + chunk]).pow(2) for s in range(0, samples.shape[0], chunk)]
    return torch.cat(out, dim=1)


def ball_log_mass(sq_dist: torch.Tensor, log_radii, dim: int) -> np.ndarray:
    """log of the fraction of samples within e^r sqrt(D) of each point (-inf where none): (Q, R); ``sq_dist``
    from :func:`squared_distances`."""
    radii_sq = torch.exp(2.0 * torch.as_tensor(np.asarray(log_radii, np.float64))) * float(dim)
    inside = (sq_dist[:, :, None] <= radii_sq[None, None, :]).double().mean(1)
    with np.errstate(divide="ignore"):
        return np.log(inside.numpy())


def kde_log_rho(sq_dist: torch.Tensor, log_radii, dim: int) -> np.ndarray:
    """log (1/N) sum_i N(x; x_i, e^{2r} I) for each point and r: (Q, R)."""
    r = torch.as_tensor(np.asarray(log_radii, np.float64))
    var = torch.exp(2.0 * r)
    logk = -0.5 * sq_dist[:, :, None] / var - 0.5 * dim * torch.log(2 * math.pi * var)
    return (torch.logsumexp(logk, dim=1) - math.log(sq_dist.shape[1])).numpy()


def _samples(ctx: StageContext) -> torch.Tensor:
    """The model's seeded samples in [0, 1] units (N, D), drawn in blocks that are cached and resumable."""
    from genood.ood.stages import fingerprint, model_digest, resumable_blocks

    scfg = ctx.cfg["sampling"]
    n, block = int(scfg["n_samples"]), int(scfg["batch_size"])

    def draw(idx: torch.Tensor, start: int) -> Dict[str, np.ndarray]:
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 41 + start)  # per block: resumes draw the same
        with torch.no_grad():
            x = ctx.model.sample(len(idx), generator=gen).detach().cpu()
        return {"samples": (x.reshape(len(idx), -1).double() / SCALE).numpy().astype(np.float32)}
    order = torch.arange(n)
    fp = fingerprint(model_digest(ctx.model), order, f"sampling {ctx.seed} {block}")
    cache = ctx.run_dir / "sampling" / "samples.npz" if ctx.run_dir else None
    shared = ctx.runs_root / "sampling_cache" / f"{fp[:40]}.npz" if ctx.runs_root else None
    from tqdm.auto import tqdm
    with tqdm(total=n, desc="sampling (model samples)", unit="img", dynamic_ncols=True, mininterval=1.0,
              disable=not ctx.cfg["training"].get("progress", True)) as bar:
        out = resumable_blocks(draw, order, block, cache, shared, fp, bar.update, ctx.log, "samples", stage="sampling")
    return torch.from_numpy(out["samples"]).double()


def _comparison_figure(trend, linear, title: str):
    """Mean log rho_r per split: sampled (solid) and, where the rho_r trend ran, linearised (dashed)."""
    import plotly.graph_objects as go

    from genood.ood.figures import add_left_out_note, split_groups

    fig = go.Figure()
    groups = split_groups(trend)
    lo_r, hi_r = float(trend["r"].min()), float(trend["r"].max())
    if linear is not None:  # on the sampling's radii only (the linearised trend spans a wider grid)
        linear = linear[(linear["r"] >= lo_r - 1e-9) & (linear["r"] <= hi_r + 1e-9)]
    means = {"sampled": [], "linearised": []}
    for label, colour, rows in groups:
        if rows is None:
            continue
        for frame, kind, dash in ((trend, "sampled", "solid"), (linear, "linearised", "dash")):
            part = frame[frame.split == rows["split"].iloc[0]] if frame is not None else None
            if part is None or part.empty:
                continue
            finite = part[np.isfinite(part["log_rho"])]
            mean = finite.groupby("r")["log_rho"].mean()
            means[kind].append(mean.to_numpy())
            fig.add_scatter(x=mean.index, y=mean.values, mode="lines", line=dict(color=colour, dash=dash),
                            name=f"{label}, {kind}")
    add_left_out_note(fig, groups)
    # the frame: the linearised curves (or the sampled ones' upper half of the radii) with room below; at small
    # r the kernel estimate collapses onto each point's nearest sample and falls by millions of nats, which would
    # flatten every other curve
    ref = np.concatenate(means["linearised"] or [m[len(m) // 2:] for m in means["sampled"]] or [np.zeros(1)])
    top = np.concatenate([ref] + [m for m in means["sampled"]])
    ref, top = ref[np.isfinite(ref)], top[np.isfinite(top)]
    if ref.size and top.size:
        span = max(float(top.max() - ref.min()), 1.0)
        fig.update_yaxes(range=[float(ref.min()) - 0.5 * span, float(top.max()) + 0.1 * span])
    fig.update_layout(title=f"{title}<br><sup>at small r the sampled estimate collapses onto each point's nearest "
                            "sample and leaves the frame</sup>", xaxis_title="r (log radius per dimension, [0,1] units)",
                      yaxis_title="log rho_r(x) (nats)",
                      template="plotly_white", legend=dict(orientation="h", y=-0.2), width=900, height=640)
    return fig


def _mass_figure(trend, title: str):
    import plotly.graph_objects as go

    from genood.ood.figures import add_left_out_note, split_groups

    fig = go.Figure()
    groups = split_groups(trend)
    for label, colour, part in groups:
        if part is not None:
            frac = part.assign(mass=np.exp(part["log_mass"])).groupby("r")["mass"].mean()
            fig.add_scatter(x=frac.index, y=frac.values, mode="lines+markers", line=dict(color=colour), name=label)
    add_left_out_note(fig, groups)
    fig.update_layout(title=title, xaxis_title="r (ball radius e^r sqrt(D), [0,1] units)", yaxis_title="ball mass (mean over points)",
                      yaxis_type="log", template="plotly_white", width=900, height=500)
    return fig


def _figures_for(directory, title: str):
    import pandas as pd

    path = directory / "sampling_trend.parquet"
    if not path.exists():
        return []
    trend = pd.read_parquet(path)
    linear = directory / "rho_r_trend.parquet"
    return [_comparison_figure(trend, pd.read_parquet(linear) if linear.exists() else None,
                               f"log rho_r by sampling vs linearised ({title})"),
            _mass_figure(trend, f"ball mass by sampling ({title})")]


@register_stage("sampled_rho_r", higher_is_in=True, unit="nats",
                description="log of the Gaussian-convolved likelihood at sampling.r, by Monte Carlo over the model's samples "
                            "(seed 000's sampling experiments; ball masses in the same table)",
                report=lambda directory, table, metrics, pair: _figures_for(directory, run_title(directory, pair)))
def sampled_rho_r(ctx: StageContext) -> StageOutput:
    import pandas as pd

    from genood.ood.lid_stage import point_positions

    scfg = ctx.cfg["sampling"]
    lo, hi, num = scfg["r_grid"]
    rs = np.linspace(float(lo), float(hi), int(num))
    r = float(scfg["r"])
    samples = _samples(ctx)
    dim = samples.shape[1]
    positions, values, rows = {}, {}, []
    for name, dataset, x, index in lid_splits(ctx):
        pos = point_positions(name, x.shape[0], int(ctx.cfg["lid"]["n_per_split"]), ctx.seed)
        pts = x[torch.from_numpy(pos)].reshape(len(pos), -1).double() / SCALE
        sq = squared_distances(pts, samples)
        log_rho = kde_log_rho(sq, np.append(rs, r), dim)
        mass = ball_log_mass(sq, rs, dim)
        positions[name], values[name] = pos, log_rho[:, -1]
        idx = np.asarray(index)[pos]
        rows.append(pd.DataFrame({"split": name, "dataset": dataset, "index": np.repeat(idx, rs.size),
                                  "r": np.tile(rs, len(idx)), "log_rho": log_rho[:, :-1].reshape(-1),
                                  "log_mass": mass.reshape(-1)}))
    trend = pd.concat(rows, ignore_index=True)
    ctx.log(f"sampled_rho_r: {samples.shape[0]} samples, {len(trend) // max(rs.size, 1)} points, {rs.size} radii")

    def figures(table, metrics: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
        import pandas as pd_

        linear = ctx.run_dir / "rho_r_trend.parquet" if ctx.run_dir else None
        lin = pd_.read_parquet(linear) if linear is not None and linear.exists() else None
        pair = config_title(cfg)
        return {"sampling_rho_r": _comparison_figure(trend, lin, f"log rho_r by sampling vs linearised ({pair})"),
                "sampling_ball_mass": _mass_figure(trend, f"ball mass by sampling ({pair})")}
    return StageOutput(positions, values, metric_info={"r": r, "n_samples": int(samples.shape[0])},
                       artifacts={"sampling_trend": trend}, figures=figures)
