"""The OOD job: configuration -> run directory (config.yaml, checkpoint.pt, scores.parquet,
metrics.json, figures/, run.log).

Splits scored: ``in_train`` (a seeded subsample of the training split), ``in_test`` (the
in-distribution test split), ``ood`` (the OOD dataset's test split, converted to the model's
shape) and ``generated`` (samples from the model). Models are trained on the train split only.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import runconfig
import rundir
from data.registry import file_checksums, load_split
from data.transforms import eval_dequantization_noise, match_shape
from models.training import CHECKPOINT, CheckpointError, fit, load_trained, pick_device
from ood import scores as score_registry
from ood.metrics import detection_metrics, roc_curve_points

SPLIT_ORDER = ("in_train", "in_test", "ood", "generated")


@dataclass
class SplitData:
    name: str
    dataset: str
    images: np.ndarray  # uint8 (N,H,W,C) in the model's shape; None for generated
    index: np.ndarray   # index into the source split


class _Console:
    """Log to run.log and (optionally) stderr, keeping progress bars readable."""

    def __init__(self, logger, echo: bool):
        self.logger, self.echo = logger, echo

    def __call__(self, msg: str) -> None:
        self.logger.info(msg)
        if self.echo:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        self.logger.warning(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _subsample(n_total: int, n: Optional[int], seed: int, salt: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng([seed, salt]).choice(n_total, size=int(n), replace=False))


@torch.no_grad()
def score_images(model, x_all: torch.Tensor, names: List[str], batch_size: int, device: torch.device,
                 desc: str = "score", progress: bool = True) -> Dict[str, np.ndarray]:
    """Score float images (N,C,H,W) in data space with every named score, in batches."""
    out: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    fns = [score_registry.get(n) for n in names]
    starts = range(0, x_all.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)
    for s in starts:
        x = x_all[s:s + batch_size].to(device)
        cache: dict = {}
        for score in fns:
            out[score.name].append(score.fn(model, x, cache).detach().double().cpu().numpy())
    return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in out.items()}


def load_checkpoint_path(value: str) -> Path:
    """``ood.checkpoint`` as an existing checkpoint file (a run directory means its checkpoint.pt)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = rundir.PROJECT_ROOT / path
    if path.is_dir() or not path.suffix:
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} (ood.checkpoint) does not exist; train it with "
                              f"`python train.py --config <yaml>` or leave ood.checkpoint unset so main_ood.py trains first.")
    return path


def _resolve_model(cfg, directory: Path, train_images: np.ndarray, console: _Console, tracker, callbacks=None):
    ckpt = cfg["ood"]["checkpoint"]
    device = pick_device(cfg["run"]["device"])
    if ckpt:
        path = load_checkpoint_path(ckpt)
        model, state = load_trained(path, map_location=device)
        if not state.get("finished", False):
            console.warn(f"checkpoint {path} is from step {state['step']} of an unfinished training run.")
        n, h, w, c = train_images.shape
        if tuple(state["shape"]) != (c, h, w):
            raise runconfig.ConfigError(f"ood.checkpoint {path} was trained on shape {tuple(state['shape'])}, "
                                        f"but data.shape resolves to {(c, h, w)}; set data.shape to match.")
        console(f"loaded checkpoint {path} (step {state['step']})")
        return model.to(device)
    model, result = fit(cfg, directory, train_images, log=console,
                        callbacks=[tracker.training_curve]
                        + list(callbacks or []))
    return model


def run_ood(cfg: Dict[str, Any], echo: bool = True, callbacks=None) -> Path:
    """Run one OOD job end to end and return its run directory.

    ``callbacks`` get ``(step, bits_per_dim)`` during training (sweep agents use them for early termination).
    """
    seed = int(cfg["run"]["seed"])
    ocfg = cfg["ood"]
    names = list(ocfg["scores"])
    for n in names:
        score_registry.get(n)

    # everything that can fail on bad input is checked before the run directory is made
    in_name, ood_name = cfg["data"]["in_distribution"], cfg["data"]["ood"]
    train_set = load_split(in_name, "train")  # models train on the train split only
    test_set = load_split(in_name, "test")
    ood_set = load_split(ood_name, "test")
    if ocfg["checkpoint"]:
        load_checkpoint_path(ocfg["checkpoint"])
    shape = tuple(cfg["data"]["shape"] or train_set.shape_chw)
    train_images = match_shape(train_set.images, shape)
    checksums = file_checksums(train_set.files + test_set.files + ood_set.files)

    name = runconfig.run_name(cfg, "ood")
    directory = rundir.run_dir(cfg, name)
    console = _Console(rundir.open_run_log(directory), echo)
    console(f"run directory: {directory}")
    rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))

    from tracking import Tracker
    tracker = Tracker(cfg, directory, name, job_type="ood", warn=console.warn)
    try:
        model = _resolve_model(cfg, directory, train_images, console, tracker, callbacks)
        device = next(model.parameters()).device
        model.eval()

        i_tr = _subsample(len(train_set), ocfg["n_in_train"], seed, 1)
        i_te = _subsample(len(test_set), ocfg["n_in_test"], seed, 2)
        i_od = _subsample(len(ood_set), ocfg["n_ood"], seed, 3)
        splits = [SplitData("in_train", train_set.name, train_images[i_tr], i_tr),
                  SplitData("in_test", test_set.name, match_shape(test_set.images[i_te], shape), i_te),
                  SplitData("ood", ood_set.name, match_shape(ood_set.images[i_od], shape), i_od)]
        import pandas as pd
        batch_names = [n for n in names if score_registry.get(n).per_batch]
        scored = []  # (split, dataset, x in data space, index) for every split, kept for the LID stage
        t0 = time.perf_counter()
        for sp in splits:
            noise = eval_dequantization_noise(len(sp.index), shape, seed, sp.name, cfg["data"]["eval_dequantization"])
            scored.append((sp.name, sp.dataset, torch.from_numpy(sp.images).permute(0, 3, 1, 2).float() + noise, sp.index))
        n_gen = int(ocfg["n_generated"] or 0)
        if n_gen:
            gen = torch.Generator().manual_seed(seed + 29)
            xs = torch.cat([model.sample(min(256, n_gen - s), generator=gen).cpu() for s in range(0, n_gen, 256)])
            scored.append(("generated", f"generated:{in_name}", xs, np.arange(n_gen)))
        frames = []
        for split, dataset, x, index in scored:
            cols = score_images(model, x, batch_names, int(ocfg["batch_size"]), device, desc=split)
            frames.append(pd.DataFrame({"split": split, "dataset": dataset, "index": index, **cols}))
        console(f"scored {sum(len(f) for f in frames)} samples in {time.perf_counter() - t0:.1f}s")
        lid_result = None
        if "lid" in names:
            from ood.lid_stage import run_lid_stage
            t0 = time.perf_counter()
            lid_result = run_lid_stage(model, scored, cfg, seed, console, cache_dir=directory / "lid_spectra",
                                       shared_dir=rundir.runs_root(cfg) / "lid_cache")
            for frame, (split, _, _, _) in zip(frames, scored):
                column = np.full(len(frame), np.nan)
                column[lid_result.positions[split]] = lid_result.values[split]
                frame["lid"] = column
            rundir.atomic_write(directory / "lid_curves.parquet", lambda p: lid_result.curves.to_parquet(p, index=False))
            console(f"lid: {sum(len(v) for v in lid_result.values.values())} points in {time.perf_counter() - t0:.1f}s, "
                    f"log tau {lid_result.log_tau:.3f} ({lid_result.calibration['method']})")
        table = pd.concat(frames, ignore_index=True)
        rundir.atomic_write(directory / "scores.parquet", lambda p: table.to_parquet(p, index=False))

        metrics = compute_metrics(table, names, lid_calibration=lid_result.calibration if lid_result else None,
                                  keep=float(cfg["lid"]["keep"]))
        rundir.write_json(directory / "metrics.json", metrics)
        rundir.write_json(directory / "provenance.json", rundir.provenance(checksums))
        if ocfg["figures"]:
            _figures(table, names, metrics, cfg, directory, console, lid_result)
        tracker.summary({f"{k}/{m}": v for k, d in metrics.items() for m, v in d.items()})
        tracker.table("scores", table)
        tracker.artifact(directory / CHECKPOINT, f"checkpoint-{name}", "model")
        for key in names:
            if key in metrics:
                console(f"{key}: AUROC {metrics[key]['auroc']:.4f} ({in_name} in-distribution vs {ood_name} OOD)")
    finally:
        tracker.finish()
    return directory


def compute_metrics(table, names: List[str], lid_calibration: Optional[dict] = None,
                    keep: float = 0.95) -> Dict[str, Dict[str, float]]:
    """metrics.json content: ``<score>`` (in_test vs ood) and ``generated_vs_ood/<score>``; with LID and
    likelihood also ``dual_threshold`` (optimistic envelope) and ``dual_threshold_fixed`` (LID threshold
    from in_train alone). Rows without a value for a score (LID is computed on a subset) are left out."""
    from ood.detectors import dual_threshold_metrics

    out: Dict[str, Dict[str, float]] = {}
    s = {split: table.loc[table["split"] == split] for split in SPLIT_ORDER}
    tasks = [("", "in_test")] + ([("generated_vs_ood/", "generated")] if not s["generated"].empty else [])
    for prefix, positive in tasks:
        for name in names:
            pos = s[positive][name].to_numpy(dtype=float)
            neg = s["ood"][name].to_numpy(dtype=float)
            pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
            if pos.size and neg.size:
                out[f"{prefix}{name}"] = detection_metrics(score_registry.oriented(name, pos), score_registry.oriented(name, neg))
                if name == "lid" and lid_calibration:
                    out[f"{prefix}{name}"]["log_tau"] = lid_calibration["log_tau"]
        if "lid" in names and "log_likelihood" in names:
            pick = lambda f: f.dropna(subset=["lid"])
            p, n, tr = pick(s[positive]), pick(s["ood"]), pick(s["in_train"])
            if len(p) and len(n) and len(tr):
                dual = dual_threshold_metrics(p["log_likelihood"], p["lid"], n["log_likelihood"], n["lid"], tr["lid"], keep)
                envelope = dict(dual["envelope"], aupr_in=None, aupr_out=None, log_tau=lid_calibration["log_tau"])
                out[f"{prefix}dual_threshold"] = envelope
                out[f"{prefix}dual_threshold_fixed"] = dict(dual["fixed"], log_tau=lid_calibration["log_tau"], keep=keep)
    return out


def _figures(table, names, metrics, cfg, directory: Path, console: _Console, lid_result=None) -> None:
    from ood.figures import lid_curve_figure, lid_scatter, roc_figure, score_histogram, write_figures

    in_name, ood_name = cfg["data"]["in_distribution"], cfg["data"]["ood"]
    figs = {}
    if "log_likelihood" in names:
        auc = metrics.get("log_likelihood", {}).get("auroc", float("nan"))
        figs["likelihood_histogram"] = score_histogram(
            table, "log_likelihood",
            title=f"Log-likelihood (nats) of a {cfg['model']['coupling']} flow trained on {in_name}; OOD: {ood_name} (AUROC {auc:.3f})")
    curves = {}
    for name in names:
        if name in metrics:
            pos = table.loc[table["split"] == "in_test", name].to_numpy(dtype=float)
            neg = table.loc[table["split"] == "ood", name].to_numpy(dtype=float)
            pos, neg = score_registry.oriented(name, pos[~np.isnan(pos)]), score_registry.oriented(name, neg[~np.isnan(neg)])
            fpr, tpr = roc_curve_points(pos, neg)
            curves[name] = (fpr, tpr, metrics[name]["auroc"])
    if curves:
        figs["roc"] = roc_figure(curves, title=f"{in_name} (in) vs {ood_name} (OOD)")
    if lid_result is not None:
        figs["lid_curves"] = lid_curve_figure(lid_result.curves, lid_result.log_tau,
                                              title=f"LID curves, flow trained on {in_name}; OOD: {ood_name}")
        if "log_likelihood" in names:
            dual = metrics.get("dual_threshold", {}).get("auroc", float("nan"))
            figs["lid_vs_likelihood"] = lid_scatter(
                table, title=f"LID (log tau = {lid_result.log_tau:.2f}) vs log-likelihood; dual-threshold AUROC {dual:.3f} "
                             f"(likelihood alone {metrics.get('log_likelihood', {}).get('auroc', float('nan')):.3f})")
    write_figures(figs, directory / "figures", bool(cfg["ood"]["png"]), console.warn)
