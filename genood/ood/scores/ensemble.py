"""Likelihood ensembles (Choi et al. 2018): several independently trained models of one configuration.

The members are this run's model and ``ensemble.members - 1`` others that differ only in ``run.seed``
(``ensemble.seeds``, default run.seed + 1, + 2, ...): the runs of a ``run.seed`` sweep. Each is a finished
training run of that model identity found anywhere under ``run.runs_root`` (any sweep, any run name), else
trained on demand into ``<runs_root>/ensemble/<name>`` (a file lock keeps two agents from training one
twice), exactly as the likelihood ratio's background model. Every member holds out this run's in_val
(``run.holdout_seed``), so none has trained on the points a combined detector is fitted on.

With log p_1(x) .. log p_M(x) the members' log-likelihoods (nats):

* ``waic``              = mean_m log p_m(x) - var_m log p_m(x)   (WAIC; higher = more in-distribution)
* ``ensemble_variance`` = var_m log p_m(x)                        (disagreement alone; higher = more OOD)

(variance with M - 1 in the denominator). Both are label-free; they share the members' per-split
log-likelihoods, cached per batch block in ``<run>/ensemble_blocks`` (resumable), so the second costs nothing.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from genood.ood.scores import StageContext, StageOutput, register_stage


def member_seeds(cfg: Dict[str, Any]) -> List[int]:
    """run.seed of every member, this run's first."""
    ecfg, seed = cfg["ensemble"], int(cfg["run"]["seed"])
    others = [int(s) for s in ecfg["seeds"]] if ecfg.get("seeds") else [seed + k for k in range(1, int(ecfg["members"]))]
    if seed in others or len(set(others)) != len(others):
        from genood.runconfig import ConfigError

        raise ConfigError(f"ensemble.seeds {others} must be distinct and differ from run.seed {seed}: an ensemble member "
                         f"is another training of the same configuration.")
    return [seed] + others


def member_config(cfg: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The training configuration of the member with ``run.seed = seed``: this run's model, its in_val held out."""
    from genood import runconfig

    member = copy.deepcopy(cfg)
    member["run"]["holdout_seed"] = runconfig.holdout_seed(cfg)
    member["run"]["seed"] = int(seed)
    if cfg["ensemble"].get("steps"):
        member["training"]["steps"] = int(cfg["ensemble"]["steps"])
    member["run"]["name"] = None
    member["run"]["sweep_id"] = "ensemble"
    member["tracking"] = dict(member["tracking"], wandb=False)
    runconfig.validate(member)
    return member


def member_log_likelihoods(ctx: StageContext) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """(member run names, split -> (M, N) log-likelihoods in nats), this run's model in row 0."""
    from genood import runconfig
    from genood.ood.scores.likelihood_ratio import _log_likelihoods, find_or_train

    batch = int(ctx.cfg["ood"]["batch_size"])
    runs_root = Path(ctx.runs_root) if ctx.runs_root is not None else Path(ctx.run_dir) / "ensemble_models"
    blocks = Path(ctx.run_dir) / "ensemble_blocks" if ctx.run_dir is not None else None
    seeds = member_seeds(ctx.cfg)
    models = [(ctx.model, runconfig.run_name(ctx.cfg, "train"))]
    for seed in seeds[1:]:
        model, where = find_or_train(member_config(ctx.cfg, seed), runs_root, ctx.log, folder="ensemble",
                                     what="ensemble: member")
        models.append((model, where.name))
    values: Dict[str, List[np.ndarray]] = {split: [] for split, _, _, _ in ctx.splits}
    for k, (model, name) in enumerate(models):
        for split, _, x, _ in ctx.splits:
            cache = blocks / f"member{k}_{name}" / f"{split}.npz" if blocks is not None else None
            values[split].append(_log_likelihoods(model, x, batch, cache, ctx.log, split, desc=f"ensemble member {k}",
                                                  stage="ensemble"))
    return [n for _, n in models], {split: np.stack(v) for split, v in values.items()}


def _stage(ctx: StageContext, statistic) -> StageOutput:
    names, lls = member_log_likelihoods(ctx)
    positions = {split: np.arange(v.shape[1]) for split, v in lls.items()}
    values = {split: statistic(v) for split, v in lls.items()}
    return StageOutput(positions, values, metric_info={"members": names, "seeds": member_seeds(ctx.cfg), "label_free": True})


@register_stage("waic", higher_is_in=True, unit="nats",
                description="WAIC over an ensemble of independent trainings (Choi et al.): mean - variance of the members' "
                            "log-likelihoods", needs=("log_prob",))
def waic(ctx: StageContext) -> StageOutput:
    return _stage(ctx, lambda v: v.mean(0) - v.var(0, ddof=1))


@register_stage("ensemble_variance", higher_is_in=False, unit="nats^2",
                description="variance of the ensemble members' log-likelihoods (their disagreement; higher = more OOD)",
                needs=("log_prob",))
def ensemble_variance(ctx: StageContext) -> StageOutput:
    return _stage(ctx, lambda v: v.var(0, ddof=1))
