"""The OOD job: configuration -> run directory (config.yaml, checkpoint.pt, scores.parquet,
metrics.json, figures/, run.log).

Splits scored: ``in_train`` (a seeded subsample of the points the model trained on), ``in_val`` (a
seeded subsample of ``data.val_fraction`` of the training split, held out from training: everything
fitted or thresholded without OOD labels uses it), ``in_test`` (the
in-distribution test split), ``ood`` (the OOD dataset's test split, converted to the model's
shape) and ``generated`` (samples from the model). Models are trained on the train split only.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from genood import precision, runconfig
from genood import rundir
from genood.data.registry import file_checksums, load_split
from genood.data.transforms import eval_dequantization_noise, match_shape
from genood.models import zoo
from genood.models.training import CHECKPOINT, CheckpointError, fit, load_trained, pick_device
from genood.ood import scores as score_registry
from genood.ood.metrics import roc_curve_points
from genood.ood.stages import fingerprint, model_digest, resumable_blocks

from genood.ood.detectors import evaluate

__all__ = ["SplitData", "ScoredSplits", "score_images", "load_checkpoint_path", "OodSet", "evaluate_sets", "run_ood",
           "open_checkpoint", "build_figures", "checked_scores"]


@dataclass
class SplitData:
    name: str
    dataset: str
    images: np.ndarray  # uint8 (N,H,W,C) in the model's shape, or float (N,D) vectors
    index: np.ndarray   # index into the source split
    true_lid: Optional[np.ndarray] = None  # known LID of each point (synthetic manifolds)
    key: str = ""       # the split's key for stages and caches (an OOD set's own key when a run has several)

    def __post_init__(self):
        self.key = self.key or self.name

    def data_space(self, shape, seed: int, dequantization: str) -> torch.Tensor:
        """Float points as the model sees them: images (N,C,H,W) with the seeded evaluation noise; vectors as is."""
        if self.images.ndim == 2:
            return torch.from_numpy(np.ascontiguousarray(self.images)).float()
        noise = eval_dequantization_noise(len(self.index), shape, seed, self.name, dequantization)
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() + noise


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


def score_images(model, x_all: torch.Tensor, names: List[str], batch_size: int, device: torch.device,
                 desc: str = "score", progress: bool = True, cache: Optional[Path] = None,
                 digest: Optional[bytes] = None, log=lambda m: None, cfg: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """Score float images (N,C,H,W) in data space with every named per-batch score, in batches.

    With ``cache`` (a file), finished batches are saved after each batch, keyed by the model, the
    points and the score names, so a killed run resumes mid-split (diffusion likelihoods take
    seconds per image on a CPU)."""
    fns = [score_registry.get(n) for n in names]
    columns = {f.name: f.column_names(cfg or {}) for f in fns}
    if not fns or x_all.shape[0] == 0:
        return {c: np.zeros(0) for n in names for c in columns[n]}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=x_all.shape[0], desc=desc, unit="img", leave=False, dynamic_ncols=True, mininterval=1.0)

    # ood.precision: fp32 (exact, the default: no autocast at all) or bf16 networks (their log-terms stay fp32)
    dtype = precision.resolve(((cfg or {}).get("ood") or {}).get("precision") or "fp32", device)

    def compute(x: torch.Tensor, start: int) -> Dict[str, np.ndarray]:
        x = x.to(device)
        shared: dict = {"cfg": cfg or {}}  # per-batch cache shared by the scores; their settings under "cfg"
        with torch.no_grad(), precision.autocast(device, dtype):  # a score that needs gradients enables them itself
            out = {}
            for score in fns:
                values = score.fn(model, x, shared).detach().double().cpu().numpy()
                if score.columns:  # a vector score: (B, K) -> one column per component
                    out.update({c: values[:, i] for i, c in enumerate(columns[score.name])})
                else:
                    out[score.name] = values
            return out
    settings = runconfig.used_sections(cfg) if cfg else {}
    key = fingerprint(digest, x_all, "batch " + " ".join(names) + repr(sorted(settings.items()))) if cache is not None else ""
    out = resumable_blocks(compute, x_all, batch_size, cache, None, key,
                           (bar.update if bar is not None else (lambda n: None)), log, label=desc, stage="scores")
    if bar is not None:
        bar.close()
    return {c: out[c] for n in names for c in columns[n]}


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


def open_checkpoint(value: str, device="cpu"):
    """``ood.checkpoint`` -> (what to call it, (model, state)): a zoo model (``zoo:<name>``) or a checkpoint file."""
    if zoo.is_zoo_ref(value):
        return value, zoo.open_zoo_model(value, device)
    path = load_checkpoint_path(value)
    return path, load_trained(path, map_location=device)


def _resolve_model(cfg, directory: Path, train_images: np.ndarray, console: _Console, tracker, callbacks=None):
    from genood.threads import apply_threads
    apply_threads(cfg, console)  # a run that only scores shares the cores with the other agents too
    ckpt = cfg["ood"]["checkpoint"]
    device = pick_device(cfg["run"]["device"])
    if ckpt:
        path, (model, state) = open_checkpoint(ckpt, device)
        if not state.get("finished", False):
            console.warn(f"checkpoint {path} is from step {state['step']} of an unfinished training run.")
        have = tuple(train_images.shape[1:]) if train_images.ndim == 2 else (train_images.shape[3], *train_images.shape[1:3])
        if tuple(state["shape"]) != have:
            raise runconfig.ConfigError(f"ood.checkpoint {path} was trained on shape {tuple(state['shape'])}, "
                                        f"but data.shape resolves to {have}; set data.shape to match.")
        console(f"loaded checkpoint {path} (step {state['step']})")
        model = model.to(device)
    else:
        from genood.models.training import ood_curves

        shape = tuple(train_images.shape[1:]) if train_images.ndim == 2 else (train_images.shape[3], *train_images.shape[1:3])
        from genood.models.runs import resolve_run_keys
        model, result = fit(resolve_run_keys(cfg, console), directory, train_images, log=console,
                            callbacks=[tracker.training_curve] + ood_curves(cfg, directory, shape, console, tracker)
                            + list(callbacks or []))
    if hasattr(model, "configure"):  # families with evaluation settings of their own (diffusions: ode.*)
        model.configure(cfg)
    return model


def _model_label(cfg: Dict[str, Any]) -> str:
    m = cfg["model"]
    return "/".join(str(m[k]) for k in ("family", *runconfig.family_spec(m["family"]).run_name))


@dataclass
class OodSet:
    """One OOD set of a run: its dataset name, suite group and stage key (``ood`` when the run has one set);
    ``group_source`` says who set the group: ``declared`` (its derivation's or the mapping's group), ``hand``
    (shift or corruption in data.ood), ``measured`` (genood.ood.semantics; ``semantics`` holds the row)."""
    name: str
    group: str
    key: str
    images: Any = None   # ImageSet of its test split
    group_source: str = "declared"
    semantics: Optional[Dict[str, Any]] = None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _score_names(cfg: Dict[str, Any], images: bool) -> List[str]:
    """``ood.scores`` plus what they require, plus the model-free baselines (``ood.baselines``) for image data."""
    extra = list(cfg["ood"].get("baselines") or []) if images else []
    for n in extra:
        if not score_registry.get(n).model_free:
            raise runconfig.ConfigError(f"ood.baselines entry {n!r} is not a model-free score; use some of "
                                        f"{', '.join(k for k, v in score_registry.REGISTRY.items() if v.model_free)}.")
    return score_registry.with_requirements(list(dict.fromkeys(list(cfg["ood"]["scores"]) + extra)))


def checked_scores(cfg: Dict[str, Any], images: bool):
    """(score names with what they require, table columns), after checking that the family can provide every
    score and that every combined set names computed columns: these fail before anything is trained."""
    from genood.models.registry import model_class

    names = _score_names(cfg, images)  # derived scores bring what they need
    for n in names:
        score_registry.check_needs(n, model_class(cfg["model"]["family"]), cfg["model"]["family"])
    columns = score_registry.expand_columns(names, cfg)  # a vector score's components <name>@<label>
    _check_combined_sets(cfg, names, columns)
    return names, columns


def _metric_info(model, stages) -> Dict[str, Dict[str, Any]]:
    """Each score's metric info: its stage's, plus how the model computed it (e.g. an HVAE bound's S, its unit)."""
    info = {k: v.metric_info for k, v in stages.items()}
    for key, extra in (model.metric_info() if hasattr(model, "metric_info") else {}).items():
        info.setdefault(key, {}).update(extra)
    return info


def _check_combined_sets(cfg: Dict[str, Any], names: List[str], columns: List[str]) -> None:
    for members in cfg.get("combined", {}).get("sets", []) or []:
        flat = [m for member in (members if isinstance(members, list) else [members])
                for m in (member if isinstance(member, list) and member else [member])]  # [[a, b], c]: a nested density
        missing = [str(m) for m in flat if isinstance(m, (list, dict)) or (str(m) not in names and str(m) not in columns)]
        if not isinstance(members, list) or not members or missing:  # a score, a whole vector score, or one component
            raise runconfig.ConfigError(
                f"combined.sets entry {members!r} must be a list of scores from ood.scores or components of vector "
                f"scores (a member may be a list of them: their density as one statistic); {', '.join(missing) or 'it'} "
                f"is not among ood.scores ({', '.join(names)}) or their columns: add it there or drop it from the set.")


def _load_ood_sets(cfg: Dict[str, Any]) -> List[OodSet]:
    """Every OOD set of ``data.ood`` with its test split loaded (bad names fail here, in one sentence)."""
    sets = runconfig.ood_sets(cfg["data"]["ood"])
    out = [OodSet(name, group, "ood" if len(sets) == 1 else f"ood@{_slug(name)}", load_split(name, "test"),
                  "hand" if group in runconfig.HAND_GROUPS else "declared") for name, group in sets]
    todo = [o for o in out if o.group == "transform"]
    if todo:  # does the transform keep the meaning? measured by a classifier of the in-distribution (cached)
        from genood.ood import semantics
        try:
            found = semantics.measure(cfg["data"]["in_distribution"], [o.name for o in todo],
                                      float(cfg["data"]["val_fraction"]), runconfig.holdout_seed(cfg),
                                      log=lambda line: print(line, file=sys.stderr))
        except ValueError as exc:
            raise runconfig.ConfigError(str(exc)) from None
        for o, m in zip(todo, found):
            o.group, o.group_source, o.semantics = m.group, m.source, m.row()
    return out


def _build_splits(cfg, train_set, test_set, oods: List[OodSet], train_images, shape, seed: int,
                  log=lambda m: None) -> List[SplitData]:
    """The scored splits: seeded subsamples of in_train, in_val, in_test, and of every OOD set (a split smaller
    than its ``ood.n_*`` is scored whole, and ``log`` says so)."""
    from genood.data.splits import holdout

    ocfg = cfg["ood"]
    trained_on, held_out = holdout(len(train_set), float(cfg["data"]["val_fraction"]), runconfig.holdout_seed(cfg))
    val_part = f"data.val_fraction {cfg['data']['val_fraction']} of its training split"
    sizes = [("in_train", "n_in_train", trained_on.size, train_set.name, "the training part"),
             ("in_val", "n_in_val", held_out.size, train_set.name, val_part),
             ("in_test", "n_in_test", len(test_set), test_set.name, "its test split")]
    sizes += [(f"ood {o.name}", "n_ood", len(o.images), o.name, "its test split") for o in oods]
    for split, key, size, dataset, part in sizes:
        if ocfg[key] is not None and int(ocfg[key]) > size:
            log(f"{split}: ood.{key} asks for {int(ocfg[key]):,} points; {dataset} holds {size:,} in {part}, "
                f"so all {size:,} are scored")
    i_tr = trained_on[_subsample(trained_on.size, ocfg["n_in_train"], seed, 1)]
    i_va = held_out[_subsample(held_out.size, ocfg["n_in_val"], seed, 4)]
    i_te = _subsample(len(test_set), ocfg["n_in_test"], seed, 2)
    truth = lambda s, i: s.true_lid[i] if s.true_lid is not None else None
    splits = [SplitData("in_train", train_set.name, train_images[i_tr], i_tr, truth(train_set, i_tr)),
              SplitData("in_val", train_set.name, train_images[i_va], i_va, truth(train_set, i_va)),
              SplitData("in_test", test_set.name, match_shape(test_set.images[i_te], shape), i_te, truth(test_set, i_te))]
    for o in oods:  # every set's subsample is drawn as if it were the run's only OOD set
        i_od = _subsample(len(o.images), ocfg["n_ood"], seed, 3)
        splits.append(SplitData("ood", o.images.name, match_shape(o.images.images[i_od], shape), i_od,
                                truth(o.images, i_od), key=o.key))
    return splits


def _generated(model, n_gen: int, seed: int, cache: Optional[Path], log) -> torch.Tensor:
    """The model's ``n_gen`` seeded samples, drawn in chunks of 256 (saved to ``cache`` once drawn, so that a
    resumed run does not draw them again: ancestral sampling costs a PixelCNN++ one network evaluation per
    pixel, minutes on a CPU)."""
    from genood.ood.stages import _load_matching, _save
    key = fingerprint(model_digest(model), torch.zeros(0), f"generated n={n_gen} seed={seed + 29}")
    if cache is not None and cache.exists():
        got = _load_matching(cache, key, log, "generated")
        if "images" in got:
            log(f"generated: reusing {n_gen} samples saved in {cache}")
            return torch.from_numpy(got["images"])
    log(f"generated: sampling {n_gen} images from the model")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 29)
    xs = torch.cat([model.sample(min(256, n_gen - s), generator=gen).cpu() for s in range(0, n_gen, 256)])
    log(f"generated: {n_gen} samples in {time.perf_counter() - t0:.1f}s")
    if cache is not None:
        _save(cache, key, {"images": xs.numpy()})
    return xs


def _model_inputs(model, splits: List[SplitData], cfg, shape, seed: int, cache: Optional[Path] = None,
                  log=lambda m: None):
    """(key, dataset, x in data space, index) for every split plus the model's seeded samples (``generated``),
    and each key's split name."""
    scored = [(sp.key, sp.dataset, sp.data_space(shape, seed, cfg["data"]["eval_dequantization"]), sp.index)
              for sp in splits]
    split_of = {sp.key: sp.name for sp in splits}
    n_gen = int(cfg["ood"]["n_generated"] or 0)
    if n_gen:
        xs = _generated(model, n_gen, seed, cache, log)
        scored.append(("generated", f"generated:{cfg['data']['in_distribution']}", xs, np.arange(n_gen)))
        split_of["generated"] = "generated"
    return scored, split_of


def _per_batch_frames(model, scored, split_of, names, cfg, directory: Path, console, device):
    """One DataFrame per scored split with every per-batch score (finished batches cached per split)."""
    import pandas as pd

    digest = model_digest(model)
    frames = []
    for key, dataset, x, index in scored:
        cols = score_images(model, x, names, int(cfg["ood"]["batch_size"]), device, desc=key,
                            cache=directory / "score_blocks" / f"{key}.npz", digest=digest, log=console, cfg=cfg)
        frames.append(pd.DataFrame({"split": split_of[key], "dataset": dataset, "index": index, **cols}))
    return frames


def _run_stages(model, scored, frames, stage_names, cfg, seed, console, directory, truth, groups=None):
    """Run every stage score over all scored splits; fills its column in ``frames``; returns the outputs."""
    import pandas as pd

    stages: Dict[str, score_registry.StageOutput] = {}
    for stage_name in stage_names:
        t0 = time.perf_counter()
        ctx = score_registry.StageContext(model, scored, cfg, seed, console, directory, rundir.runs_root(cfg),
                                          truth=truth, table=pd.concat(frames, ignore_index=True), groups=dict(groups or {}))
        out = stages[stage_name] = score_registry.get(stage_name).stage(ctx)
        for frame, (key, _, _, _) in zip(frames, scored):
            column = np.full(len(frame), np.nan)
            if key in out.positions:
                column[out.positions[key]] = out.values[key]
            frame[stage_name] = column
        for art, frame_ in out.artifacts.items():
            rundir.atomic_write(directory / f"{art}.parquet", lambda p, f=frame_: f.to_parquet(p, index=False))
        console(f"{stage_name}: stage finished in {time.perf_counter() - t0:.1f}s")
    return stages


def _derive(table, derived_names, cfg, info) -> None:
    """Add every derived score's column (fitted on in_val rows only) and its metric info."""
    for derived_name in derived_names:
        result = score_registry.get(derived_name).derived(table, cfg, info)
        values, extra = result if isinstance(result, tuple) else (result, {})
        table[derived_name] = np.asarray(values, dtype=float)
        info[derived_name] = dict(extra)


def evaluate_sets(table, columns: List[str], info, cfg, oods: List[OodSet], values: Optional[Dict[str, Any]] = None):
    """metrics.json content over every OOD set: the detectors see the in-distribution rows and one set's rows
    at a time. One set: keys as :func:`ood.detectors.evaluate` writes them; several: ``<set>::<key>``. Every
    entry says its ``ood_dataset`` and ``ood_group``."""
    in_rows = table["split"] != "ood"
    metrics: Dict[str, Dict[str, Any]] = {}
    for o in oods:
        sub = table[in_rows | ((table["split"] == "ood") & (table["dataset"] == o.images.name))]
        got: Dict[str, Any] = {}
        entries = evaluate(sub, columns, info, cfg, got)
        prefix = "" if len(oods) == 1 else f"{o.name}::"
        for key, entry in entries.items():
            metrics[prefix + key] = dict(entry, ood_dataset=o.name, ood_group=o.group, group_source=o.group_source)
        if values is not None:
            values.update({prefix + k: v for k, v in got.items()})
    return metrics


def _write_detector_values(directory: Path, detector_values: Dict[str, Any]) -> None:
    import pandas as pd

    if detector_values:  # every detector's oriented values on its positive and negative points (ROC curves)
        dv = pd.concat([pd.DataFrame({"detector": k, "side": side, "value": np.asarray(v, dtype=float)})
                        for k, (pos, neg) in detector_values.items() for side, v in (("in", pos), ("ood", neg))],
                       ignore_index=True)
        rundir.atomic_write(directory / "detector_values.parquet", lambda p: dv.to_parquet(p, index=False))


def _summaries(metrics: Dict[str, Dict[str, Any]], several: bool) -> Dict[str, Any]:
    """W&B summary values: ``<detector>/<metric>``, or with several OOD sets ``ood/<group>/<set>/<detector>/<metric>``."""
    out = {}
    for k, d in metrics.items():
        base = k.split("::", 1)[1] if several and "::" in k else k
        head = f"ood/{d['ood_group']}/{d['ood_dataset']}/{base}" if several and "ood_dataset" in d else k
        out.update({f"{head}/{m}": v for m, v in d.items()})
    return out


@dataclass
class _Inputs:
    """What a run reads before it makes its directory (checked there, so bad input fails first)."""
    train_set: Any
    test_set: Any
    oods: List[OodSet]
    names: List[str]
    columns: Dict[str, List[str]]
    shape: tuple
    train_images: np.ndarray
    checksums: Dict[str, str]


def _check_inputs(cfg: Dict[str, Any]) -> _Inputs:
    """Load the data and check scores and checkpoint: everything that can fail on bad input, before any folder."""
    in_name = cfg["data"]["in_distribution"]
    train_set = load_split(in_name, "train")  # models train on the train split only
    test_set = load_split(in_name, "test")
    oods = _load_ood_sets(cfg)
    names, columns = checked_scores(cfg, images=train_set.images.ndim == 4)
    if zoo.is_zoo_ref(cfg["ood"]["checkpoint"]):
        zoo.manifest(cfg["ood"]["checkpoint"][len(zoo.ZOO_PREFIX):])
    elif cfg["ood"]["checkpoint"]:
        load_checkpoint_path(cfg["ood"]["checkpoint"])
    _check_negative_training(cfg, oods)
    shape = tuple(cfg["data"]["shape"] or train_set.shape_chw)
    files = train_set.files + test_set.files + [f for o in oods for f in o.images.files]
    return _Inputs(train_set, test_set, oods, names, columns, shape, match_shape(train_set.images, shape),
                   file_checksums(list(dict.fromkeys(files))))


def negative_training_set(cfg: Dict[str, Any]) -> Optional[str]:
    """The OOD set the evaluated model was trained to push down (``training.negative_ood`` of this configuration,
    or of the checkpoint's when ``ood.checkpoint`` is set), or None."""
    if zoo.is_zoo_ref(cfg["ood"]["checkpoint"]):
        return (zoo.zoo_config(cfg["ood"]["checkpoint"]).get("training") or {}).get("negative_ood")
    if cfg["ood"]["checkpoint"]:
        from genood.models.training import load_checkpoint

        trained = load_checkpoint(load_checkpoint_path(cfg["ood"]["checkpoint"])).get("config") or {}
        return (trained.get("training") or {}).get("negative_ood")
    return cfg["training"].get("negative_ood")


def _check_negative_training(cfg: Dict[str, Any], oods: List["OodSet"]) -> None:
    """A model trained to push a set's likelihood down is never evaluated on that set (one sentence otherwise)."""
    from genood.data.registry import canonical_name

    neg = negative_training_set(cfg)
    if neg and canonical_name(neg) in {canonical_name(o.name) for o in oods}:
        raise runconfig.ConfigError(f"data.ood includes '{neg}', the set the model's negative training pushed down "
                                    f"(training.negative_ood): evaluating on it would be optimistic; drop it from "
                                    f"data.ood or train with another training.negative_ood.")


def run_ood(cfg: Dict[str, Any], echo: bool = True, callbacks=None) -> Path:
    """Run one OOD job end to end and return its run directory. Steps: check inputs, resolve the model, per-batch
    scores (resumable), stages, derived scores, detectors per OOD set, write, figures. The model and its
    in-distribution work serve every set of ``data.ood``; nothing here knows a score by name. ``callbacks`` get
    ``(step, loss)`` during training (sweep agents use them for early termination). One process at a time
    writes a run directory (``rundir.run_lock``)."""
    inputs = _check_inputs(cfg)
    name = runconfig.run_name(cfg, "ood")
    directory = rundir.run_dir(cfg, name)
    with rundir.run_lock(directory):
        _score_run(cfg, inputs, name, directory, echo, callbacks)
    return directory


def _score_run(cfg: Dict[str, Any], inputs: _Inputs, name: str, directory: Path, echo: bool, callbacks) -> None:
    seed, names, oods = int(cfg["run"]["seed"]), inputs.names, inputs.oods
    console = _Console(rundir.open_run_log(directory), echo)
    console(f"run directory: {directory}")
    rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))

    from genood.tracking import Tracker
    tracker = Tracker(cfg, directory, name, job_type="ood", warn=console.warn)
    try:
        model = _resolve_model(cfg, directory, inputs.train_images, console, tracker, callbacks)
        splits = _build_splits(cfg, inputs.train_set, inputs.test_set, oods, inputs.train_images, inputs.shape, seed,
                               console)
        scored = ScoredSplits.compute(model, splits, cfg, names, inputs.shape, directory, console,
                                      {o.key: o.group for o in oods})
        table, info, stages = scored.table, scored.info, scored.stages
        from genood.models.views import write_model_views
        write_model_views(model, scored.inputs, directory)  # families with internals to show (coupling flows)
        rundir.atomic_write(directory / "scores.parquet", lambda p: table.to_parquet(p, index=False))

        metrics = _evaluate_and_write(table, inputs.columns, info, cfg, oods, stages, directory, inputs.checksums)
        if cfg["ood"]["figures"]:
            _figures(table, inputs.columns, metrics, cfg, directory, console, stages, oods)
        tracker.summary(_summaries(metrics, len(oods) > 1))
        tracker.table("scores", table)
        tracker.charts(table, max_points=int(cfg["tracking"]["chart_points"]), seed=seed)
        tracker.artifact(directory / CHECKPOINT, f"checkpoint-{name}", "model")
        _report_console(metrics, inputs.columns, cfg["data"]["in_distribution"], oods, console)
    finally:
        tracker.finish()


@dataclass
class ScoredSplits:
    """Every score of ``names`` over the scored splits: the per-point table (``split``, ``dataset``, ``index`` and
    one column per score), each score's metric info, the stages' outputs and the model's inputs (key, dataset, x,
    index). The runner and :mod:`genood.api` both score through :meth:`compute`."""
    table: Any
    info: Dict[str, Dict[str, Any]]
    stages: Dict[str, Any]
    inputs: List[tuple]

    @classmethod
    def compute(cls, model, splits: List[SplitData], cfg: Dict[str, Any], names: List[str], shape, directory: Path,
                console, groups: Optional[Dict[str, str]] = None) -> "ScoredSplits":
        """Per-batch scores (cached per split under ``directory``), then the stages, then the derived scores
        (fitted on the in_val rows); ``generated`` joins the splits when ``ood.n_generated`` asks for samples."""
        import pandas as pd

        seed = int(cfg["run"]["seed"])
        device = next(model.parameters()).device
        model.eval()
        for n in names:
            score_registry.check_needs(n, model, cfg["model"]["family"])
        t0 = time.perf_counter()
        scored, split_of = _model_inputs(model, splits, cfg, shape, seed,
                                         directory / "score_blocks" / "generated_images.npz", console)
        batch_names = [n for n in names if score_registry.get(n).per_batch]
        frames = _per_batch_frames(model, scored, split_of, batch_names, cfg, directory, console, device)
        console(f"scored {sum(len(f) for f in frames)} samples in {time.perf_counter() - t0:.1f}s")
        stages = _run_stages(model, scored, frames, [n for n in names if score_registry.get(n).stage is not None],
                             cfg, seed, console, directory, {sp.key: sp.true_lid for sp in splits if sp.true_lid is not None},
                             groups)
        table = pd.concat(frames, ignore_index=True)
        info = _metric_info(model, stages)
        _derive(table, [n for n in names if score_registry.get(n).derived is not None], cfg, info)
        return cls(table, info, stages, scored)


def _evaluate_and_write(table, columns, info, cfg, oods, stages, directory: Path, checksums) -> Dict[str, Any]:
    """Every detector over every OOD set, plus the stages' own entries: metrics.json, detector_values.parquet
    and provenance.json written (atomically); returns the metrics."""
    detector_values: Dict[str, Any] = {}
    metrics = evaluate_sets(table, columns, info, cfg, oods, detector_values)
    if negative_training_set(cfg):  # the results say which set the model was trained to push down
        metrics["negative_training"] = {"negative_ood": negative_training_set(cfg), "label_free": False}
    _write_detector_values(directory, detector_values)
    for out in stages.values():
        metrics.update(out.metrics)
    measured = [o.semantics for o in oods if o.semantics is not None]
    if measured:  # the accuracies behind each measured group, beside the suite (genood.ood.semantics)
        rundir.write_json(directory / "semantics.json", {"in_dataset": cfg["data"]["in_distribution"], "sets": measured})
    rundir.write_json(directory / "metrics.json", metrics)
    rundir.write_json(directory / "provenance.json", rundir.provenance(checksums))
    return metrics


def _report_console(metrics, columns, in_name: str, oods: List[OodSet], console) -> None:
    for o in oods:
        prefix = "" if len(oods) == 1 else f"{o.name}::"
        for key in (columns if len(oods) == 1 else columns[:1]):
            if prefix + key in metrics:
                console(f"{key}: AUROC {metrics[prefix + key]['auroc']:.4f} ({in_name} in-distribution vs {o.name} OOD"
                        + (f", {o.group})" if len(oods) > 1 else ")"))


def _figures(table, names, metrics, cfg, directory: Path, console: _Console, stages=None, oods=None) -> None:
    """The run's figures (:func:`build_figures`) written to ``figures/``."""
    from genood.ood.figures import write_figures
    write_figures(build_figures(table, names, metrics, cfg, directory, stages, oods), directory / "figures",
                  bool(cfg["ood"]["png"]), console.warn)


def build_figures(table, names, metrics, cfg, directory: Optional[Path] = None, stages=None, oods=None) -> Dict[str, Any]:
    """The run's figures as plotly figures by name: each score's own (histograms, LID curves, ...), ``roc`` and
    the stages' figures; with several OOD sets the single-set figures for the first set and ``suite_auroc`` (every
    label-free per-point detector against every set); with a ``directory`` also its training-time figures."""
    from genood.ood.figures import roc_figure, suite_heatmap

    figs = {}
    if oods and len(oods) > 1:
        first = oods[0]
        prefix = f"{first.name}::"
        figs["suite_auroc"] = suite_heatmap(metrics, [(o.name, o.group) for o in oods],
                                            title=f"AUROC per OOD set, {_model_label(cfg)} trained on {cfg['data']['in_distribution']}")
        table = table[(table["split"] != "ood") | (table["dataset"] == first.images.name)]
        metrics = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
        cfg = dict(cfg, data=dict(cfg["data"], ood=first.name))
    in_name, ood_name = cfg["data"]["in_distribution"], cfg["data"]["ood"]
    for name in dict.fromkeys(n.split("@", 1)[0] for n in names):  # the figures a score's registration brings
        spec = score_registry.get(name)
        if spec.figures is not None and name in table:
            figs.update(spec.figures(table, metrics, cfg))
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
    for out in (stages or {}).values():
        if out.figures is not None:
            figs.update(out.figures(table, metrics, cfg))
    if directory is None:
        return figs
    from genood.models.ood_curves import curves_figure
    curves = curves_figure(directory, f"OOD curves during training, {_model_label(cfg)} on {in_name}")
    if curves is not None:
        figs["ood_curves"] = curves
    from genood.models.views import views_figure
    views = views_figure(directory, f"{_model_label(cfg)}: coupling layers and latents, {in_name} (in) and {ood_name} (OOD)")
    if views is not None:
        figs["model_views"] = views
    return figs
