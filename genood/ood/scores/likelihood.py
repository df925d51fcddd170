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
    from genood.ood.figures import score_histogram
    from genood.runconfig import family_spec

    m = cfg["model"]
    model = "/".join(str(m[k]) for k in ("family", *family_spec(m["family"]).run_name))
    auc = metrics.get("log_likelihood", {}).get("auroc", float("nan"))
    return {"likelihood_histogram": score_histogram(
        table, "log_likelihood", title=f"Log-likelihood (nats) of a {model} model trained on "
                                       f"{cfg['data']['in_distribution']}; OOD: {cfg['data']['ood']} (AUROC {auc:.3f})")}


@register("log_likelihood", higher_is_in=True, unit="nats",
          description="log p(x) in nats of the dequantized data in [0,256)^D", needs=("log_prob",), figures=_histogram)
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
