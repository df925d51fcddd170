"""Runs that other runs need, found by model identity or trained on demand: the likelihood ratio's background
models, ensemble members, the feature extractor of a flow on features.

:func:`find_trained` looks for a finished training run of a configuration's model identity anywhere under the
runs root (any sweep, any run name); :func:`find_or_train` trains it into ``<runs_root>/<folder>/<name>`` when
there is none, under a file lock so two agents never train the same one twice. :func:`resolve_run_keys` turns
model keys that name another run by preset (a family's ``run_keys``, e.g. ``model.features: hvae_tiny``) into
that run's checkpoint, trained on this run's data with this run's in_val held out. :func:`run_training` is the
training job behind ``train.py`` (run directory, dependencies, training, tracking): it sits here, above
:mod:`genood.models.training`, because a run's dependencies may need training first.
"""
from __future__ import annotations

import copy
import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["find_trained", "find_or_train", "resolve_run_keys", "run_training"]


@contextmanager
def _locked(path: Path):
    from genood.rundir import check_target
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_trained(cfg: Dict[str, Any], runs_root: Path):
    """The checkpoint of a finished run under ``runs_root`` (any sweep, any run name) whose model identity
    (architecture, training, data, seed) is ``cfg``'s, or None."""
    import json

    import yaml

    from genood import runconfig
    from genood.models.training import CHECKPOINT, CheckpointError, load_checkpoint

    key = lambda c: json.dumps(runconfig.model_identity(c), sort_keys=True, default=str)
    want = key(cfg)
    for cfg_path in sorted(Path(runs_root).glob("*/*/config.yaml")):
        ckpt = cfg_path.parent / CHECKPOINT
        try:
            if ckpt.exists() and key(yaml.safe_load(cfg_path.read_text())) == want and load_checkpoint(ckpt).get("finished"):
                return ckpt
        except (KeyError, TypeError, yaml.YAMLError, CheckpointError):  # another kind of run, an older config, a damaged file
            continue
    return None


def find_or_train(bg_cfg: Dict[str, Any], runs_root: Path, log, folder: str = "background",
                  what: str = "likelihood_ratio: background model") -> Tuple[Any, Path]:
    """The finished model of ``bg_cfg`` (a background model, an ensemble member): a finished training run of the
    same model identity anywhere under ``runs_root``, else trained (or resumed) now into ``runs_root/<folder>/<name>``."""
    from genood import runconfig
    from genood.data.registry import load_split
    from genood.data.transforms import match_shape
    from genood.models.training import CHECKPOINT, fit, load_checkpoint, load_trained

    name = runconfig.run_name(bg_cfg, "train")
    found = find_trained(bg_cfg, Path(runs_root))
    if found is not None:
        log(f"{what} {name} found in {found.parent}")
        return load_trained(found)[0], found.parent
    directory = Path(runs_root) / folder / name
    with _locked(Path(runs_root) / folder / f".{name}.lock"):  # another agent may be training it
        ckpt = directory / CHECKPOINT
        from genood.integrity import file_problem
        if ckpt.exists() and file_problem(ckpt) is None and load_checkpoint(ckpt).get("finished"):
            return load_trained(ckpt)[0], directory  # (a damaged one is moved aside by fit, which retrains)
        log(f"{what}: training {name} (seed {bg_cfg['run']['seed']}, mutation_rate {bg_cfg['training']['mutation_rate']}, "
            f"l2_penalty {bg_cfg['training']['l2_penalty']}) into {directory}")
        train_set = load_split(bg_cfg["data"]["in_distribution"], "train")
        shape = tuple(bg_cfg["data"]["shape"] or train_set.shape_chw)
        from genood import rundir
        rundir.write_text(directory / "config.yaml", runconfig.dump(bg_cfg))
        model, _ = fit(resolve_run_keys(bg_cfg, log), directory, match_shape(train_set.images, shape), log=log)
    return model, directory




def resolve_run_keys(cfg: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """``cfg`` with every model key its family declares as naming another run (``run_keys`` in the family's spec)
    given as a checkpoint path: a preset name there means that preset's model trained on this run's
    in-distribution data, seed and in_val holdout (found under the runs root or trained now); a path stays."""
    from genood import runconfig
    from genood.models.training import CHECKPOINT

    spec = runconfig.family_spec(cfg["model"]["family"])
    keys = [k for k in getattr(spec, "run_keys", ()) if cfg["model"].get(k)]
    presets = {p.stem for p in runconfig.PRESET_DIR.glob("*.yaml")}
    out = cfg
    for key in keys:
        value = str(cfg["model"][key])
        if value not in presets:
            continue
        dep = runconfig.resolve({"preset": value, "data": copy.deepcopy(cfg["data"]), "tracking": dict(cfg["tracking"], wandb=False),
                                 "run": dict(cfg["run"], name=None, sweep_id="dependencies",
                                             holdout_seed=runconfig.holdout_seed(cfg))})
        dep["training"]["progress"] = cfg["training"].get("progress", True)
        runs_root = Path(cfg["run"]["runs_root"])
        _, where = find_or_train(dep, runs_root, log, folder="dependencies", what=f"model.{key}: run")
        out = copy.deepcopy(out) if out is cfg else out
        out["model"][key] = str(Path(where) / CHECKPOINT)
        log(f"model.{key}: {value} -> {out['model'][key]}")
    return out


def run_training(cfg: Dict[str, Any], echo: bool = True,
                 callbacks: Optional[List[Callable[[int, float], None]]] = None) -> Path:
    """The training job behind ``train.py``: resolve the run directory, train, track. Returns the directory."""
    import sys

    from genood import rundir, runconfig
    from genood.data.registry import file_checksums, load_split
    from genood.data.transforms import match_shape
    from genood.models.training import CHECKPOINT, fit, ood_curves
    from genood.tracking import Tracker

    train_set = load_split(cfg["data"]["in_distribution"], "train")  # bad input fails before any folder is made
    shape = tuple(cfg["data"]["shape"] or train_set.shape_chw)
    name = runconfig.run_name(cfg, "train")
    directory = rundir.run_dir(cfg, name)
    with rundir.run_lock(directory):  # one writer per run directory
        logger = rundir.open_run_log(directory)

        def log(msg: str) -> None:
            logger.info(msg)
            if echo:
                print(msg, file=sys.stderr, flush=True)

        log(f"run directory: {directory}")
        rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))
        rundir.write_json(directory / "provenance.json", rundir.provenance(file_checksums(train_set.files)))
        tracker = Tracker(cfg, directory, name, job_type="train", warn=log)
        try:
            _, result = fit(resolve_run_keys(cfg, log), directory, match_shape(train_set.images, shape), log=log,
                            callbacks=[tracker.training_curve] + ood_curves(cfg, directory, shape, log, tracker)
                            + list(callbacks or []))
            tracker.summary({f"train/final_{runconfig.family_spec(cfg['model']['family']).loss}": result.final_loss, "train/images_per_second": result.images_per_second})
            from genood.models.ood_curves import curves_figure
            curves = curves_figure(directory, f"OOD curves during training ({name})")
            if curves is not None:
                from genood.ood.figures import write_figures
                write_figures({"ood_curves": curves}, directory / "figures", False, log)
            tracker.artifact(directory / CHECKPOINT, f"checkpoint-{name}", "model")
        finally:
            tracker.finish()
    return directory
