"""OOD scores, registered by name. A new score is one module in this package (found automatically)
that calls :func:`register` or :func:`register_stage`, plus a spec file ``<module>.yaml`` beside it if it
owns configuration keys; nothing else changes.

Two kinds:

* per batch: ``fn(model, x, cache) -> Tensor[B]`` over one batch ``x`` (B,C,H,W) in data space
  [0,256); ``cache`` is a per-batch dict so scores can share work (log_prob once per batch), holding the
  run configuration under ``cache["cfg"]`` (a score's own section, e.g. ``cfg["complexity"]``). The
  runner saves finished batches, so a killed run resumes mid-split (expensive likelihoods).
* stage: ``stage(ctx) -> StageOutput`` over whole splits (a seeded subset, cached and resumable:
  Jacobian LID, FLIPD); see :class:`StageContext`.
* derived: ``fn(table, cfg, info) -> values`` or ``(values, info)``, a column computed from other columns of
  the scores table once they exist (``requires``), with anything it fits taken from the ``in_val``
  rows only (typicality's entropy); ``info`` holds the metric info of the scores computed so far (e.g. which
  background model a ratio used). ``requires`` are computed even when not listed in ``ood.scores``.

``higher_is_in`` says how to orient the stored column for detection: metrics use ``column`` if True
and ``-column`` if False. ``tails`` says which tail of in_val's distribution is unusual when a
combination turns the score into a p-value: ``"lower"`` (the oriented score is low: the default) or
``"both"`` for statistics with no meaningful direction (a likelihood's terms: either tail is unusual). ``needs`` lists alternatives of model capabilities (method or attribute
names, see :mod:`models.base`): the score runs if the model has every name of at least one alternative.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from genood.registry import Registry

__all__ = ["ScoreUnavailable", "StageContext", "StageOutput", "Score", "REGISTRY", "register", "expand_columns",
           "register_stage", "register_derived", "with_requirements", "get", "has_capabilities", "check_needs",
           "model_free", "two_sided", "oriented"]


class ScoreUnavailable(ValueError):
    """The configured model cannot provide what a score needs (one sentence for the user)."""


@dataclass
class StageContext:
    """What a stage score gets: the model, every scored split, the configuration and where to cache."""
    model: Any
    splits: List[tuple]            # (split name, dataset, x (N,C,H,W) float data in [0,256), index (N,))
    cfg: Dict[str, Any]
    seed: int
    log: Callable[[str], None]
    run_dir: Optional[Path]        # the run directory (per-run caches, artifacts); None in unit tests
    runs_root: Optional[Path]      # for caches shared between runs
    truth: Dict[str, np.ndarray] = field(default_factory=dict)  # split -> known LID of every row (synthetic manifolds)
    table: Any = None              # the per-batch scores so far (DataFrame, rows in split order), when the runner has them
    groups: Dict[str, str] = field(default_factory=dict)  # OOD split key -> its suite group (near/shift/corruption/...)

    def __post_init__(self):
        # the caller chose these folders (the runner: rundir.run_dir and rundir.runs_root, which confine names);
        # a stage's caches and artifacts may be written under them
        from genood import rundir
        for folder in (self.run_dir, self.runs_root):
            if folder is not None:
                rundir.allow_writes(Path(folder))


@dataclass
class StageOutput:
    """A stage's result: values for a subset of each split's rows, plus what goes with them."""
    positions: Dict[str, np.ndarray]          # split -> row positions (within the split) that have a value (a split
                                              # left out has no entry: its column stays empty)
    values: Dict[str, np.ndarray]             # split -> the score at those rows
    metric_info: Dict[str, Any] = field(default_factory=dict)   # copied into this score's metrics.json entries
    artifacts: Dict[str, Any] = field(default_factory=dict)     # name -> DataFrame, written as <name>.parquet
    figures: Optional[Callable[[Any, Dict[str, Any], Dict[str, Any]], Dict[str, Any]]] = None  # (table, metrics, cfg) -> figures
    extra: Dict[str, Any] = field(default_factory=dict)          # anything else (e.g. calibration details)
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # extra metrics.json entries (e.g. lid_error/<split>)


@dataclass(frozen=True)
class Score:
    name: str
    fn: Optional[Callable[[object, torch.Tensor, dict], torch.Tensor]]
    higher_is_in: bool
    unit: str
    description: str
    stage: Optional[Callable[[StageContext], StageOutput]] = None
    needs: Tuple[Tuple[str, ...], ...] = ()
    derived: Optional[Callable[[Any, Dict[str, Any]], Any]] = None
    requires: Tuple[str, ...] = ()
    columns: Optional[Callable[[Dict[str, Any]], List[str]]] = None  # vector scores: cfg -> column labels
    tails: str = "lower"  # which tail of in_val is unusual for p-value combinations: lower | both
    model_free: bool = False  # a statistic of the stored image alone (no model): a reference baseline
    figures: Optional[Callable[[Any, Dict[str, Any], Dict[str, Any]], Dict[str, Any]]] = None  # (table, metrics, cfg)
    report: Optional[Callable[..., List[Any]]] = None  # (run directory, table, metrics, pair) -> report.html figures

    def column_names(self, cfg: Dict[str, Any]) -> List[str]:
        """The table columns this score fills: its name, or ``<name>@<label>`` per component of a vector score."""
        return [f"{self.name}@{label}" for label in self.columns(cfg)] if self.columns else [self.name]

    @property
    def per_batch(self) -> bool:
        return self.stage is None and self.derived is None


REGISTRY: Registry[Score] = Registry("OOD score", packages=(__name__,))


def _alternatives(needs) -> Tuple[Tuple[str, ...], ...]:
    """``needs`` as alternatives (any one tuple of capabilities suffices), each name declared by the protocol."""
    from genood.models.base import undeclared

    if not needs:
        return ()
    alts = (tuple(needs),) if isinstance(needs[0], str) else tuple(tuple(n) for n in needs)
    bad = undeclared([n for alt in alts for n in alt])
    if bad:
        raise ValueError(f"needs {bad} are not model capabilities the protocol declares (genood.models.base)")
    return alts


def register(name: str, higher_is_in: bool, unit: str, description: str, needs=(), columns=None, tails: str = "lower",
             model_free: bool = False, figures=None, report=None):
    """Decorator registering a per-batch score function ``(model, x, cache) -> Tensor[B]``; with ``columns``
    (``cfg -> labels``) a vector score ``-> Tensor[B, K]`` whose components become the columns
    ``<name>@<label>``, each oriented and reported like a score of its own (combined sets may name the
    whole vector by ``<name>`` or one component by ``<name>@<label>``). ``tails``: see the module docstring.
    ``model_free``: the score reads the stored image only (no model); such scores are the reference
    baselines every learned detector is read against (``ood.baselines``, :mod:`ood.baselines`). ``figures``:
    ``(table, metrics, cfg) -> {name: figure}``, the run figures that belong to this score; ``report``:
    ``(run directory, table, metrics, pair) -> [figure]``, its figures in report.html's run sections."""
    if tails not in ("lower", "both"):
        raise ValueError(f"score {name!r}: tails must be 'lower' or 'both', got {tails!r}")

    def wrap(fn):
        if model_free and needs:
            raise ValueError(f"score {name!r}: a model-free score needs no model capability, got needs={needs!r}")
        REGISTRY.add(name, Score(name, fn, higher_is_in, unit, description, needs=_alternatives(needs), columns=columns,
                                 tails=tails, model_free=model_free, figures=figures, report=report),
                     fn.__module__)
        return fn
    return wrap


def expand_columns(names, cfg: Dict[str, Any]) -> List[str]:
    """Score names -> table column names (vector scores become their components)."""
    return [c for n in names for c in get(n).column_names(cfg)]


def register_stage(name: str, higher_is_in: bool, unit: str, description: str, needs=(), report=None):
    """Decorator registering a split-level stage ``(StageContext) -> StageOutput``."""
    def wrap(fn):
        REGISTRY.add(name, Score(name, None, higher_is_in, unit, description, stage=fn, needs=_alternatives(needs),
                                 report=report), fn.__module__)
        return fn
    return wrap


def register_derived(name: str, higher_is_in: bool, unit: str, description: str, requires=(), needs=()):
    """Decorator registering a derived score ``(table, cfg, info) -> values | (values, info)`` over the whole table."""
    def wrap(fn):
        REGISTRY.add(name, Score(name, None, higher_is_in, unit, description, needs=_alternatives(needs), derived=fn,
                                 requires=tuple(requires)), fn.__module__)
        return fn
    return wrap


def with_requirements(names) -> list:
    """``names`` plus every score they require (recursively), each required score before its users."""
    out: list = []

    def add(name, chain=()):
        if name in chain:
            raise ValueError(f"scores require each other in a cycle: {' -> '.join(chain + (name,))}")
        if name in out:
            return
        for req in get(name).requires:
            add(req, chain + (name,))
        out.append(name)
    for n in names:
        add(n)
    return out


def get(name: str) -> Score:
    if "@" in name and name not in REGISTRY and name.split("@", 1)[0] in REGISTRY:
        return REGISTRY[name.split("@", 1)[0]]  # a component of a vector score
    if name not in REGISTRY:
        raise KeyError(f"Unknown OOD score '{name}' in ood.scores: use one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def has_capabilities(model, names) -> bool:
    return all(hasattr(model, n) for n in names)


def check_needs(name: str, model, family: str) -> None:
    """Raise :class:`ScoreUnavailable` if ``model`` lacks every alternative of what score ``name`` needs."""
    score = get(name)
    if score.needs and not any(has_capabilities(model, alt) for alt in score.needs):
        want = " or ".join("+".join(alt) for alt in score.needs)
        raise ScoreUnavailable(f"Score '{name}' (ood.scores) needs a model with {want}; model.family '{family}' "
                               f"has none of these: drop '{name}' from ood.scores or use a family that provides it.")


def model_free(name: str) -> bool:
    """Whether score (or component) ``name`` is a statistic of the stored image alone."""
    return get(name).model_free


def two_sided(name: str) -> bool:
    """Whether a p-value of score (or component) ``name`` counts both tails of in_val as unusual."""
    return get(name).tails == "both"


def oriented(name: str, column):
    """The column oriented so that higher = more in-distribution."""
    return column if get(name).higher_is_in else -column
