"""Likelihood ratios (Ren et al. 2019): log p(x) - log p_bg(x), higher = more in-distribution.

The background model is the same family and configuration trained on perturbed inputs: every pixel
replaced by a uniformly drawn other value with probability mu (``training.mutation_rate``) and an
L2 penalty lambda on the weights (``training.l2_penalty``). Background models are ordinary training
runs: a finished run under ``run.runs_root`` with the same model identity (from ``train.py``, or a
sweep of ``meta_configurations/training/background_*.yaml``, whatever its run name) is used; when none
has finished, it is trained on demand into ``<runs_root>/background/<name>`` (a file lock keeps
two agents from training the same one twice).

Which (mu, lambda):
* ``likelihood_ratio.selection: none`` (the default, selection-free): the configured
  ``likelihood_ratio.mutation_rate`` / ``l2_penalty``;
* ``selection: validation_ood``: every (mu, lambda) of ``likelihood_ratio.grid``, the one whose ratio
  best separates ``in_val`` from ``likelihood_ratio.validation_ood`` (a dataset that must differ from
  the test OOD set) by AUROC, as seed 002 does. That choice saw OOD labels of another dataset: the
  entries say so (``label_free: false``, ``selected_on``), though never the test OOD's.

The stage ``background_log_likelihood`` writes log p_bg(x) for every split (resumable per batch);
the derived score ``likelihood_ratio`` is the difference of the two columns.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from genood.models.runs import find_trained  # noqa: F401  (re-exported: its old home)
from genood.models.zoo import find_or_train  # zoo models pair with zoo models (ood.checkpoint: zoo:<name>)
from genood.ood.scores import StageContext, StageOutput, register_derived, register_stage


def background_config(cfg: Dict[str, Any], mutation_rate: float, l2_penalty: float) -> Dict[str, Any]:
    """The training configuration of a background model: the foreground's, perturbed and penalised."""
    from genood import runconfig
    bg = copy.deepcopy(cfg)
    bg["training"]["mutation_rate"] = float(mutation_rate)
    bg["training"]["l2_penalty"] = float(l2_penalty)
    steps = cfg["likelihood_ratio"].get("steps")
    if steps:
        bg["training"]["steps"] = int(steps)
    bg["run"]["name"] = None
    bg["run"]["sweep_id"] = "background"
    bg["tracking"] = dict(bg["tracking"], wandb=False)
    runconfig.validate(bg)
    return bg


def _log_likelihoods(model, x: torch.Tensor, batch: int, cache: Path, log, label: str, desc: str = "background",
                     stage: str = "likelihood_ratio") -> np.ndarray:
    from genood.ood.stages import fingerprint, model_digest, resumable_blocks

    device = next(model.parameters()).device

    def compute(xb, _):
        with torch.no_grad():
            return {"ll": model.log_prob(xb.to(device)).double().cpu().numpy()}
    key = fingerprint(model_digest(model), x, "background log_prob")
    from tqdm.auto import tqdm
    with tqdm(total=x.shape[0], desc=desc, unit="img", leave=False, dynamic_ncols=True, mininterval=1.0) as bar:
        return resumable_blocks(compute, x, batch, cache, None, key, bar.update, log, label=label, stage=stage)["ll"]


def _validation_points(ctx: StageContext) -> torch.Tensor:
    from genood import runconfig
    from genood.data.registry import load_split
    from genood.data.transforms import eval_dequantization_noise, match_shape

    lcfg = ctx.cfg["likelihood_ratio"]
    name = lcfg.get("validation_ood")
    if not name:
        raise runconfig.ConfigError("likelihood_ratio.selection is validation_ood but likelihood_ratio.validation_ood is "
                                    "not set: name a dataset (not the test OOD set) to choose the background model on.")
    if str(name) in [n for n, _ in runconfig.ood_sets(ctx.cfg["data"]["ood"])]:
        raise runconfig.ConfigError(f"likelihood_ratio.validation_ood is '{name}', a test OOD set itself: choosing the "
                                    f"background model on it would be optimistic; name another dataset.")
    val_set = load_split(str(name), "test")
    x_in = next(x for split, _, x, _ in ctx.splits if split == "in_val")
    shape = tuple(x_in.shape[1:])
    n = min(int(lcfg["n_validation"]), len(val_set))
    idx = np.sort(np.random.default_rng([ctx.seed, 0x5E1]).choice(len(val_set), n, replace=False))
    images = match_shape(val_set.images[idx], shape)
    noise = eval_dequantization_noise(n, shape, ctx.seed, "validation_ood", ctx.cfg["data"]["eval_dequantization"])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() + noise


@register_stage("background_log_likelihood", higher_is_in=False, unit="nats",
                description="log p_bg(x) of the background model (Ren et al.): mutated inputs, L2 penalty",
                needs=("log_prob",))
def background_stage(ctx: StageContext) -> StageOutput:
    from genood.ood.metrics import auroc

    lcfg = ctx.cfg["likelihood_ratio"]
    batch = int(ctx.cfg["ood"]["batch_size"])
    runs_root = Path(ctx.runs_root) if ctx.runs_root is not None else Path(ctx.run_dir) / "background_models"
    cache_dir = Path(ctx.run_dir) / "background_blocks" if ctx.run_dir is not None else None
    cache = lambda tag, split: (cache_dir / tag / f"{split}.npz") if cache_dir is not None else None

    if lcfg["selection"] == "validation_ood":
        candidates: List[Tuple[float, float]] = [(float(m), float(lam)) for m, lam in lcfg["grid"]]
        x_val = _validation_points(ctx)
        x_in = next(x for split, _, x, _ in ctx.splits if split == "in_val")
        dev = next(ctx.model.parameters()).device

        def foreground(x):
            with torch.no_grad():
                return torch.cat([ctx.model.log_prob(x[s:s + batch].to(dev)).cpu() for s in range(0, len(x), batch)])
        have = ctx.table is not None and "log_likelihood" in ctx.table
        # in_val's foreground likelihoods are in the table already (diffusions: ODE solves, not worth repeating)
        fg_in = (ctx.table.loc[ctx.table["split"] == "in_val", "log_likelihood"].to_numpy(dtype=float)
                 if have else foreground(x_in).double().numpy())
        fg_val = foreground(x_val).double().numpy()
        table = {}
        for mu, lam in candidates:
            bg, _ = find_or_train(background_config(ctx.cfg, mu, lam), runs_root, ctx.log)
            tag = f"mu{mu:g}_l2{lam:g}"
            r_in = fg_in - _log_likelihoods(bg, x_in, batch, cache(tag, "in_val"), ctx.log, "in_val")
            r_val = fg_val - _log_likelihoods(bg, x_val, batch, cache(tag, "validation_ood"), ctx.log, "validation_ood")
            table[(mu, lam)] = auroc(r_in, r_val)
            ctx.log(f"likelihood_ratio: mu={mu:g}, lambda={lam:g}: AUROC {table[(mu, lam)]:.4f} on in_val vs "
                    f"{lcfg['validation_ood']} (validation OOD)")
        mu, lam = max(table, key=table.get)
        info = {"selection": f"validation_ood:{lcfg['validation_ood']}", "selected_on": str(lcfg["validation_ood"]),
                "validation_auroc": {f"mu={m:g},lambda={lam:g}": v for (m, lam), v in table.items()}, "label_free": False}
    else:
        mu, lam = float(lcfg["mutation_rate"]), float(lcfg["l2_penalty"])
        info = {"selection": "none"}
    bg, where = find_or_train(background_config(ctx.cfg, mu, lam), runs_root, ctx.log)
    info.update(mutation_rate=mu, l2_penalty=lam, background_run=where.name)
    tag = f"mu{mu:g}_l2{lam:g}"
    positions, values = {}, {}
    for split, _, x, _ in ctx.splits:
        positions[split] = np.arange(x.shape[0])
        values[split] = _log_likelihoods(bg, x, batch, cache(tag, split), ctx.log, split)
    return StageOutput(positions, values, metric_info=info)


@register_derived("likelihood_ratio", higher_is_in=True, unit="nats",
                  description="log p(x) - log p_bg(x) (Ren et al.), the background model trained on mutated inputs",
                  requires=("log_likelihood", "background_log_likelihood"))
def likelihood_ratio(table, cfg: Dict[str, Any], info: Dict[str, Any] = None):
    ratio = table["log_likelihood"].to_numpy(dtype=float) - table["background_log_likelihood"].to_numpy(dtype=float)
    return ratio, dict((info or {}).get("background_log_likelihood", {}))  # which background, chosen how
