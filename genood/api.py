"""The Python API: models, data, scores, metrics, figures and finished runs, from a notebook or a script.

Every function here calls what the command line calls (the score registry, the runner's scoring stages and
caches, the detectors, the report's figures): there is no second code path, and a score computed here equals the
runner's for the same configuration. Re-exported from :mod:`genood` (``genood.open_model`` and so on).

>>> import genood
>>> test = genood.load_dataset("fmnist", "test")
>>> test.images.shape, test.images.dtype.name
((10000, 28, 28, 1), 'uint8')
>>> m = genood.metrics([0.9, 0.8, 0.7, 0.6], [0.1, 0.65, 0.3], bootstrap=200)
>>> round(m["auroc"], 3), m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
(0.917, True)

Units and orientation as everywhere in genood: log-likelihoods in nats of the stored data [0, 256)^D, and every
detector oriented so that higher means more in-distribution (the in-distribution is the positive class).
"""
from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from genood import runconfig, rundir
from genood.data.registry import ImageSet, load_split
from genood.data.transforms import match_shape
from genood.models import zoo
from genood.ood import runner
from genood.paths import check_component

__all__ = ["Model", "Scores", "Run", "open_model", "load_dataset", "score", "metrics", "histogram", "open_run",
           "run_ood", "open_sweep", "zoo_models"]

IN_SPLITS = ("in_train", "in_val", "in_test")
_LOG = logging.getLogger("genood.api")
_LOG.addHandler(logging.NullHandler())  # the runner's console prints its own warnings; no second copy


@dataclass
class Model:
    """A trained model: ``module`` (the torch module, eval mode), the ``config`` it was trained with (resolved),
    where it came from (``source``: ``zoo:<name>`` or a checkpoint path), and its training ``step``."""
    module: torch.nn.Module
    config: Dict[str, Any]
    source: str
    step: int
    finished: bool

    @property
    def shape(self) -> tuple:
        """(C, H, W) of the images it models."""
        return tuple(self.module.shape)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` seeded samples as stored images, uint8 (N, H, W, C).

        >>> import genood
        >>> genood.open_model("zoo:pixelcnn_fmnist").sample(2, seed=1).shape  # doctest: +SKIP
        (2, 28, 28, 1)
        """
        from genood.models.sample_grid import samples_to_uint8
        with torch.no_grad():
            return samples_to_uint8(self.module.sample(int(n), generator=torch.Generator().manual_seed(int(seed))))

    def __repr__(self) -> str:
        label = runner._model_label(self.config)
        return (f"Model({label} on {self.config['data']['in_distribution']}, {self.source}, step {self.step:,}"
                f"{'' if self.finished else ', unfinished'})")


def zoo_models() -> pd.DataFrame:
    """The zoo's published models: name, family, preset, steps done of the recipe's, held-out bits/dim.

    >>> import genood
    >>> "pixelcnn_fmnist" in set(genood.zoo_models()["name"])
    True
    """
    rows = []
    for name in zoo.names():
        info = zoo.manifest(name)
        rows.append({"name": name, "seed": info.get("seed"), "family": info["family"], "preset": info.get("preset"),
                     "in_distribution": info["config"]["data"]["in_distribution"], "steps_done": info["steps_done"],
                     "steps_recipe": info["steps_recipe"], "heldout_bits_per_dim": info["heldout_bits_per_dim"]})
    return pd.DataFrame(rows)


def open_model(ref: Union[str, Path], device: str = "cpu") -> Model:
    """A trained model from ``zoo:<name>`` (or a zoo name), a run directory or a checkpoint file; only safetensors
    and tensor-only checkpoints are read (nothing is unpickled).

    >>> import genood
    >>> genood.open_model("zoo:pixelcnn_fmnist").shape
    (1, 28, 28)
    """
    text = str(ref)
    if not zoo.is_zoo_ref(text) and not Path(text).expanduser().exists() and text in zoo.names():
        text = zoo.ZOO_PREFIX + text
    source, (module, state) = runner.open_checkpoint(text, device)
    return Model(module.to(device).eval(), state["config"], str(source), int(state["step"]), bool(state.get("finished")))


def load_dataset(name: str, split: str = "test", model: Optional[Model] = None) -> ImageSet:
    """A dataset or suite set by name (``fmnist``, ``mnist``, ``fmnist:hflip``, ``fmnist:classes=0-4``,
    ``npz:<folder>``, ...): ``images`` uint8 (N, H, W, C), ``labels`` or None, the files it was read from.
    ``split``: ``train``, ``test``, or ``in_val`` / ``in_train``, the part of the train split held out from
    training (and the rest) by ``model``'s ``data.val_fraction`` and holdout seed (the defaults without one):
    fit and threshold on in_val, never on test or OOD data.

    >>> import genood
    >>> val = genood.load_dataset("fmnist", "in_val")
    >>> len(val), val.split
    (3000, 'in_val')
    """
    if split not in ("in_val", "in_train"):
        return load_split(name, split)
    from genood.data.splits import holdout
    cfg = model.config if model is not None else runconfig.resolve({})
    train = load_split(name, "train")
    kept, held = holdout(len(train), float(cfg["data"]["val_fraction"]), runconfig.holdout_seed(cfg))
    index = held if split == "in_val" else kept
    return ImageSet(train.name, split, train.images[index], None if train.labels is None else train.labels[index],
                    train.files)


@dataclass
class Scores:
    """Scores of a model on named splits: ``table`` has one row per point (``split``, ``dataset``, ``index``, one
    column per score), ``info`` each score's metric info, ``artifacts`` the stages' tables (LID curves, ...);
    :meth:`metrics` runs the detectors, :meth:`figures` draws the run's figures."""
    table: pd.DataFrame
    info: Dict[str, Dict[str, Any]]
    artifacts: Dict[str, pd.DataFrame]
    config: Dict[str, Any]
    columns: List[str]
    directory: Path
    oods: List[Any] = field(default_factory=list)
    stages: Dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, column: str) -> pd.Series:
        return self.table[column]

    def split(self, name: str, column: str) -> np.ndarray:
        """One score's values on one split (``in_test``, ``ood``, or an OOD set's dataset name)."""
        rows = self.table["split"] == name if name in (*IN_SPLITS, "ood", "generated") else self.table["dataset"] == name
        return self.table.loc[rows, column].to_numpy(dtype=float)

    def metrics(self) -> pd.DataFrame:
        """Every detector against every OOD split, as the runner's metrics.json holds them (one row each, with
        bootstrap intervals ``auroc_lo``/``auroc_hi`` from ``ood.bootstrap`` resamples); needs in_test and at
        least one OOD split, and in_val for whatever is fitted or thresholded."""
        if not self.oods or not (self.table["split"] == "in_test").any():
            raise runconfig.ConfigError("Scores.metrics needs an 'in_test' split and at least one OOD split: "
                                        "score them together, e.g. score(model, {'in_test': x, 'ood': y}, ...).")
        found = dict(self._entries)
        for out in self.stages.values():
            found.update(out.metrics)
        return metrics_frame(found)

    @functools.cached_property
    def _entries(self) -> Dict[str, Dict[str, Any]]:
        """The detectors' metrics.json entries over every OOD split, computed once (bootstraps are not free)."""
        return runner.evaluate_sets(self.table, self.columns, self.info, self.config, self.oods) if self.oods else {}

    def figures(self) -> Dict[str, Any]:
        """The run's figures (plotly) for these scores, as the runner draws them (histograms, ROC, stage figures)."""
        found = self._entries
        names = [c for c in self.columns if c in self.table]
        cfg = self.config if self.oods else dict(self.config, data=dict(self.config["data"], ood="-"))
        return runner.build_figures(self.table, names, found, cfg, None, self.stages, self.oods)


def metrics_frame(entries: Mapping[str, Dict[str, Any]]) -> pd.DataFrame:
    """metrics.json entries as a DataFrame: key, detector, OOD set and group, AUROC with its interval, AUPR-in,
    AUPR-out, FPR at 95% TPR, and whether the detector is label-free, optimistic or model-free."""
    rows = []
    for key, e in entries.items():
        if not isinstance(e, dict) or "auroc" not in e:
            continue
        ci = e.get("auroc_ci") or [None, None]
        rows.append({"key": key, "detector": key.split("::", 1)[-1], "ood_dataset": e.get("ood_dataset"),
                     "ood_group": e.get("ood_group"), "auroc": e["auroc"], "auroc_lo": ci[0], "auroc_hi": ci[1],
                     "aupr_in": e.get("aupr_in"), "aupr_out": e.get("aupr_out"), "fpr95": e.get("fpr95"),
                     "label_free": bool(e.get("label_free", not e.get("optimistic"))),
                     "optimistic": bool(e.get("optimistic", False)), "model_free": bool(e.get("model_free", False))})
    return pd.DataFrame(rows)


def _config(model: Model, scores: Sequence[str], config: Optional[Mapping[str, Any]], overrides: Iterable[str]):
    """The resolved run configuration: the model's training configuration, then ``config``, then the scores."""
    base = runconfig.copy_tree(model.config)
    base = runconfig.deep_merge(base, {"ood": {"n_generated": 0}})  # the model's own samples only when asked for
    merged = runconfig.deep_merge(base, runconfig.copy_tree(dict(config or {})))
    # ood.checkpoint as the runner has it for this model: a zoo model pairs with zoo models (background models)
    merged = runconfig.deep_merge(merged, {"ood": {"scores": list(scores), "checkpoint": model.source}})
    merged["model"] = runconfig.copy_tree(model.config["model"])  # the model is what it is, whatever config says
    merged.pop("preset", None)  # the model's configuration is resolved already: its preset stays applied
    return runconfig.resolve(merged, list(overrides))


def _splits(data, shape, cfg) -> tuple:
    """(SplitData list, OodSet list) for ``data``: an array (in_test), or a mapping of split names (in_train,
    in_val, in_test) and OOD sets (``ood``, or any dataset name) to uint8 images (N,H,W,C) or ImageSets."""
    items = {"in_test": data} if not isinstance(data, Mapping) else dict(data)
    ood_names = [k for k in items if k not in IN_SPLITS]
    splits, oods = [], []
    for key, value in items.items():
        images = value.images if isinstance(value, ImageSet) else value
        images = images.cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise runconfig.ConfigError(f"Split {key!r} must hold stored images, uint8 (N, H, W, C), got "
                                        f"{images.dtype.name} of shape {images.shape}: load them with "
                                        f"genood.load_dataset or convert with np.uint8.")
        images = match_shape(images, shape)
        index = np.arange(len(images))
        if key in IN_SPLITS:
            splits.append(runner.SplitData(key, cfg["data"]["in_distribution"], images, index))
            continue
        dataset = value.name if isinstance(value, ImageSet) else ("ood" if key == "ood" else key)
        split_key = "ood" if len(ood_names) == 1 else f"ood@{runner._slug(dataset)}"
        splits.append(runner.SplitData("ood", dataset, images, index, key=split_key))
        group = runconfig.ood_sets(dataset)[0][1] if key != "ood" else "real"
        oods.append(runner.OodSet(dataset, group, split_key, ImageSet(dataset, "test", images, None, [])))
    return splits, oods


def score(model: Model, data, scores: Sequence[str] = ("log_likelihood",), config: Optional[Mapping[str, Any]] = None,
          overrides: Iterable[str] = (), progress: bool = False) -> Scores:
    """Score ``data`` with the named scores (and what they require, plus ``ood.baselines``) as a run would.

    ``data``: uint8 images (N, H, W, C) (scored as ``in_test``), or a mapping from split names (``in_train``,
    ``in_val``, ``in_test``) and OOD sets (``ood``, or dataset names such as ``mnist``) to images or ImageSets.
    ``config`` and ``overrides`` (``"section.key=value"``) set anything else a run's configuration sets (the
    seed, ``lid.*``, ``ood.bootstrap``, ``ood.n_generated`` for a ``generated`` split of the model's own samples,
    0 here unless set, ...). Images get the run's seeded evaluation noise per split name,
    so the values equal the runner's for the same split, points, configuration and model. Finished batches and
    stages are cached under ``<runs root>/api/``.

    >>> import genood
    >>> model = genood.open_model("zoo:pixelcnn_fmnist")
    >>> x = genood.load_dataset("fmnist", "test").images[:4]
    >>> s = genood.score(model, x, ["log_likelihood"], config={"ood": {"baselines": []}})
    >>> list(s.table.columns), len(s.table)
    (['split', 'dataset', 'index', 'log_likelihood'], 4)
    >>> bool((s["log_likelihood"] < 0).all())   # nats of [0, 256)^784
    True
    """
    cfg = _config(model, scores, config, overrides)
    cfg["training"]["progress"] = bool(progress)
    splits, oods = _splits(data, model.shape, cfg)
    if oods:  # what the figures' titles and the detectors' entries call the OOD side
        cfg["data"]["ood"] = oods[0].name if len(oods) == 1 else [o.name for o in oods]
    names, columns = runner.checked_scores(cfg, images=True)
    directory = _cache_dir(model, cfg)
    console = runner._Console(_LOG, bool(progress))  # the runner's console: logged, echoed to stderr with progress
    got = runner.ScoredSplits.compute(model.module, splits, cfg, names, model.shape, directory, console,
                                      {o.key: o.group for o in oods})
    artifacts = {k: v for out in got.stages.values() for k, v in out.artifacts.items()}
    return Scores(got.table, got.info, artifacts, cfg, columns, directory, oods, got.stages)


def _cache_dir(model: Model, cfg: Dict[str, Any]) -> Path:
    """``<runs root>/api/<model>-<digest>``: one cache folder per model (the caches inside are keyed by the
    points, the scores and their settings)."""
    from genood.ood.stages import model_digest
    digest = hashlib.sha256(model_digest(model.module)).hexdigest()[:12]
    name = check_component(f"{runconfig._safe(runner._model_label(model.config))}-{digest}", "API cache folder")
    folder = rundir.runs_root(cfg) / "api" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def metrics(in_scores, ood_scores, bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> Dict[str, Any]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of in-distribution vs OOD scores (both oriented higher = more
    in-distribution; the in-distribution is the positive class), each with a ``<metric>_ci`` percentile interval
    from ``bootstrap`` resamples (0: none). NaNs are dropped."""
    from genood.ood.metrics import detection_metrics, with_intervals
    s_in, s_ood = np.asarray(in_scores, dtype=float), np.asarray(ood_scores, dtype=float)
    return with_intervals(detection_metrics(s_in, s_ood), s_in, s_ood, int(bootstrap), float(level), int(seed))


def histogram(scores: Union[Scores, pd.DataFrame], column: str = "log_likelihood", title: str = ""):
    """The report's histogram (plotly) of one score, one trace per split and OOD set."""
    from genood.reports.report import histogram as report_histogram
    table = scores.table if isinstance(scores, Scores) else scores
    return report_histogram(table, column, title or column)


@dataclass
class Run:
    """A finished run directory: its ``config``, ``scores`` (per point), ``metrics`` (per detector, DataFrame),
    and :meth:`figures`, the report's figures of it."""
    directory: Path
    config: Dict[str, Any]
    scores: pd.DataFrame
    metrics: pd.DataFrame

    def figures(self) -> Dict[str, Any]:
        from genood.reports.report import run_figures
        return run_figures(self.directory)


def open_run(directory: Union[str, Path]) -> Run:
    """A finished OOD run directory (config.yaml, scores.parquet, metrics.json) as DataFrames; nothing in it is
    executed or unpickled (YAML, parquet and JSON only)."""
    import json

    import yaml
    folder = Path(directory).expanduser()
    missing = [f for f in ("config.yaml", "metrics.json") if not (folder / f).is_file()]
    if missing:
        raise runconfig.ConfigError(f"{folder} is not a finished run directory (no {missing[0]}); give a folder "
                                    f"written by main_ood.py or a sweep agent.")
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    table = pd.read_parquet(folder / "scores.parquet") if (folder / "scores.parquet").exists() else pd.DataFrame()
    return Run(folder, cfg, table, metrics_frame(json.loads((folder / "metrics.json").read_text())))


def run_ood(config: Mapping[str, Any], overrides: Iterable[str] = (), echo: bool = False) -> Run:
    """Run one OOD job exactly as ``main_ood.py`` does (train the model or load ``ood.checkpoint``, score every
    set of ``data.ood`` with every detector, write the run directory; resumable and cached) and open the result.
    ``config``: a run configuration as a mapping (``preset``, ``data``, ``ood``, ...), ``overrides`` as on the
    command line."""
    cfg = runconfig.resolve(runconfig.copy_tree(dict(config)), list(overrides))
    return open_run(runner.run_ood(cfg, echo=echo))


def open_sweep(sweep: Union[str, Path], runs_root: Optional[Union[str, Path]] = None,
               store: Optional[str] = None) -> pd.DataFrame:
    """Every finished run of a sweep as the table ``sweep.py aggregate`` prints and writes (one row per run and
    detector): a sweep id (``local-...`` from its store under ``runs_root``, default the configuration's runs root;
    ``entity/project/id`` from W&B) or a folder of run directories."""
    from genood.integrity import split_intact
    from genood.orchestration.sweep_runs import sweep_run_dirs
    from genood.reports.collect import collect_runs, run_dirs_under
    folder = Path(sweep).expanduser()
    if folder.is_dir():
        dirs = run_dirs_under([folder])
    else:
        from genood.paths import check_sweep_ref
        root = Path(runs_root).expanduser() if runs_root else rundir.runs_root(runconfig.resolve({}))
        try:
            dirs = sweep_run_dirs(rundir.allow_writes(root), check_sweep_ref(str(sweep)), store)[0]
        except KeyError as exc:
            raise runconfig.ConfigError(str(exc).strip("'\"")) from None
    import warnings
    dirs, _ = split_intact(dirs, say=lambda sentence: warnings.warn(sentence, stacklevel=3))  # as the command line
    frame, _ = collect_runs(dirs)
    return frame
