"""Likelihood scores: log-likelihood in nats of the stored data, and bits per dimension."""
from __future__ import annotations

import torch

from genood.models.base import nats_to_bits_per_dim
from genood.ood.scores import register


def _log_prob(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    if "log_prob" not in cache:
        cache["log_prob"] = model.log_prob(x)
    return cache["log_prob"]


def _histogram(table, metrics, cfg):
    import math

    from genood.ood.figures import ood_title, score_histogram
    from genood.runconfig import family_spec

    m = cfg["model"]
    model = "/".join(str(m[k]) for k in ("family", *family_spec(m["family"]).run_name))
    auc = metrics.get("log_likelihood", {}).get("auroc", float("nan"))  # one OOD set: its AUROC; several: per set
    return {"likelihood_histogram": score_histogram(
        table, "log_likelihood", title=f"Log-likelihood (nats) of a {model} model trained on "
                                       f"{cfg['data']['in_distribution']}; OOD: {ood_title(cfg['data']['ood'])}"
                                       + (f" (AUROC {auc:.3f})" if math.isfinite(auc) else ""))}


def _scatter(table, column: str, title: str, seed: int = 0):
    import numpy as np
    import plotly.graph_objects as go

    from genood.ood.figures import add_left_out_note, split_groups
    from genood.reports.report import MAX_SCATTER

    fig = go.Figure()
    rng = np.random.default_rng(seed)
    groups = split_groups(table)
    for label, colour, rows in groups:
        if rows is None:
            continue
        part = rows[["log_likelihood", column]].dropna()
        part = part[np.isfinite(part.to_numpy(dtype=float)).all(axis=1)]
        if len(part) > MAX_SCATTER:
            part = part.iloc[np.sort(rng.choice(len(part), MAX_SCATTER, replace=False))]
        if len(part):
            fig.add_scatter(x=part["log_likelihood"], y=part[column], mode="markers", name=label,
                            marker=dict(color=colour, size=4, opacity=0.6))
    add_left_out_note(fig, groups)
    fig.update_layout(title=title, xaxis_title="log-likelihood (nats)", yaxis_title=column)
    return fig


def _report(directory, table, metrics, pair):
    from genood.reports.report import histogram

    figs = [histogram(table, "log_likelihood", f"log-likelihood per split ({pair})")]
    skip = {"split", "dataset", "index", "log_likelihood", "bits_per_dim"}
    return figs + [_scatter(table, column, f"{column} vs log-likelihood") for column in table.columns if column not in skip]


@register("log_likelihood", higher_is_in=True, unit="nats",
          description="log p(x) in nats of the dequantized data in [0,256)^D", needs=("log_prob",), figures=_histogram,
          report=_report)
def log_likelihood(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return _log_prob(model, x, cache)


@register("bits_per_dim", higher_is_in=False, unit="bits/dim",
          description="-log p(x) / (D ln 2); lower is likelier, so detection uses its negative", needs=("log_prob",))
def bits_per_dim(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return nats_to_bits_per_dim(_log_prob(model, x, cache), int(x[0].numel()))


@register("likelihood_nfe", higher_is_in=False, unit="function evaluations",
          description="the adaptive ODE solver's number of score evaluations for the batch holding x "
                      "(diffusions; ood.batch_size=1 makes it per sample); more evaluations = less in-distribution",
          needs=("likelihood_nfe",))
def likelihood_nfe(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    _log_prob(model, x, cache)
    return model.likelihood_nfe.to(x.device)
