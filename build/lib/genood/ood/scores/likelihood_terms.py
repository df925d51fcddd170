"""The log-likelihood's additive terms as a vector score (DoSE's per-sample model statistics, Morningstar et al. 2021).

A family that can split ``log_prob`` into named terms offers ``log_prob_terms(x) -> {label: (B,)}`` and the
class method ``likelihood_term_labels(model_cfg) -> [label, ...]`` (the column labels, known before a model
exists). Flows: the preprocessing log-Jacobian, and per level the log-Jacobian of its steps and the latent
log-density of what it factors out (the terms sum to log p(x)). HVAEs: the reconstruction term and minus each
layer's KL at one posterior sample (they sum to the single-sample ELBO). Diffusions: the prior's log-density
of where the probability-flow ODE carries the point and the divergence integral (the same solve as the
likelihood's, shared within a batch; they sum to log p(x) less the constant scaling Jacobian).

Each term is a column ``likelihood_terms@<label>`` in nats. Alone a term is a detector like any score; a
term has no meaningful direction (a larger log-Jacobian is not "more in-distribution"), so the columns are
registered with ``tails: both``: Fisher's and Tippett's combinations take two-sided p-values against in_val,
and the density detectors (``combined.sets: [[likelihood_terms]]`` is DoSE with a GMM or KDE) need no
direction at all. Single-term AUROCs use the log-density orientation (higher = more in-distribution) and
may well sit below 0.5; they are reported as they are.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from genood.ood.scores import ScoreUnavailable, register


def _labels(cfg: Dict[str, Any]) -> List[str]:
    from genood.models.registry import model_class

    mcfg = cfg.get("model", {})
    cls = model_class(mcfg.get("family", "flow"))
    if not hasattr(cls, "likelihood_term_labels"):
        raise ScoreUnavailable(f"Score 'likelihood_terms' (ood.scores) needs a model that splits its log-likelihood "
                               f"into terms; model.family '{mcfg.get('family')}' does not: drop 'likelihood_terms' "
                               "from ood.scores or use a flow, an hvae or a diffusion.")
    return list(cls.likelihood_term_labels(mcfg))


@register("likelihood_terms", higher_is_in=True, unit="nats",
          description="the log-likelihood's additive terms (flows: preprocessing Jacobian, per-level Jacobian and "
                      "latent density; HVAEs: reconstruction and -KL per layer; diffusions: prior and divergence "
                      "integral of the ODE), one column each; no direction: "
                      "p-value combinations test both tails", needs=("log_prob_terms",), columns=_labels,
          tails="both")
def likelihood_terms(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    labels = _labels(cache.get("cfg", {}))
    terms = model.log_prob_terms(x)
    if list(terms) != labels:
        raise RuntimeError(f"likelihood_terms: the model returned terms {list(terms)} but its labels are {labels}")
    return torch.stack([terms[k] for k in labels], dim=1)
