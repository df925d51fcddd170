"""Run configurations: defaults < preset < YAML file < ``dotted.key=value`` overrides.

A configuration is a nested mapping. Every key must exist in the schema (so a typo fails with
its dotted path), and values keep the type of their default (ints may be given for floats;
``null`` defaults accept anything). ``preset: <name>`` at the top level pulls in
``genood/presets/<name>.yaml`` underneath the file's own keys.

The schema is assembled, without importing torch, from the core sections below and from spec
files that live beside the code that reads them: ``models/<module>.yaml`` declares model families
(their ``model.*`` keys, allowed values, bounds and builder) and ``ood/scores/<score>.yaml`` the
sections a score owns (``lid.*`` ...). A new family or score adds its module and its spec file;
nothing here changes.
"""
from __future__ import annotations

import copy
import math
import hashlib
import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import yaml

from genood.errors import ConfigError
from genood.paths import PACKAGE_DIR

__all__ = ["PRESET_DIR", "ConfigError", "CORE_DEFAULTS", "CORE_CHOICES", "CORE_RANGES", "OOD_GROUPS", "GROUP_ORDER", "HAND_GROUPS", "ood_sets",
           "IN_SPLITS", "CHECKS", "FREE_TYPED", "FamilySpec", "SectionSpec", "SPEC_GLOBS", "family_spec",
           "schema_for", "copy_tree", "deep_merge", "validate", "parse_override", "load_yaml", "resolve", "load",
           "model_identity", "used_sections", "run_name", "dump"]

PRESET_DIR = PACKAGE_DIR / "presets"


CORE_DEFAULTS: Dict[str, Any] = {
    "preset": None,
    "run": {
        "name": None,            # default: derived from the config, with a short hash
        "runs_root": "runs",
        "sweep_id": "single",
        "seed": 0,
        "holdout_seed": None,    # the seed of the in_val holdout; null = run.seed (ensemble members share their ensemble's)
        "device": "auto",        # auto: cuda if CUDA_VISIBLE_DEVICES exposes a GPU, else cpu
        "num_threads": None,     # torch CPU threads; null = torch's default
    },
    "data": {
        "in_distribution": "fmnist",
        "ood": "mnist",          # one OOD set, a list of sets, or {group: [sets]} (near/transform/far/real): one run scores them all
        "shape": None,           # [C, H, W] the model works in; null = the in-distribution data's
        "train_subsample": None, # use only the first N (seeded shuffle) training images
        "val_fraction": 0.05,    # seeded fraction of the training split held out as in_val (never trained on)
        "eval_dequantization": "uniform",  # uniform (seeded per split) | midpoint
    },
    "model": {"family": "flow"},  # the family's own keys come from its spec (models/<module>.yaml)
    "training": {
        "steps": 700,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": "cosine",  # cosine | constant | exponential (lr * lr_decay**step, seed 002's schedule)
        "lr_decay": 1.0,          # exponential: the per-step factor (seed 002: 0.999995)
        "optimizer": "adam",      # adam | adamw (seed 000's flows: decoupled weight decay) | rmsprop (seed 003's Glow)
        "adam_betas": [0.9, 0.999],  # Adam's and AdamW's (beta1, beta2) (seed 002: [0.95, 0.9995])
        "warmup_steps": 50,
        "weight_decay": 0.0,
        "mutation_rate": 0.0,     # Ren et al.'s background models: replace each pixel with another value at this rate
        "l2_penalty": 0.0,        # Ren et al.'s L2 weight lambda (on the per-image NLL in nats; 0 = none)
        "negative_ood": None,     # seed 003's negative training: a dataset whose likelihood training pushes down (never an evaluation set)
        "negative_val": -30000.0, # ... down to this log-likelihood floor (nats per image; the seed's -30000 for FashionMNIST / MNIST)
        "negative_weight": 1.0,   # ... with this weight on max(0, log p(x_ood) - floor) in bits/dim
        "grad_clip": 5.0,
        "precision": "auto",      # fp32 | bf16 | fp16 (CUDA) | auto: bf16 where the hardware has it natively (genood.precision)
        "channels_last": False,   # convolutional families: weights and batches in channels-last memory layout
        "compile": False,         # torch.compile the training objective (its compile time is logged)
        "checkpoint_every": 100,
        "sample_grid": 64,        # images in the sample grid PNG (0: none)
        "ood_curve_every": 0,     # > 0: every N steps, bits/dim and AUROC of in_test and every data.ood set (models.ood_curves)
        "ood_curve_points": 500,  # images per set in those curves
        "progress": True,
    },
    "ood": {
        "scores": ["log_likelihood", "bits_per_dim"],
        "batch_size": 256,
        "precision": "fp32",      # per-batch scores' network precision: fp32 (exact, the default) | bf16 (measured in RESULTS.md)
        "n_in_train": 1000,       # subsample of the training split, scored for reference; null = all of it
        "n_in_val": 1000,         # subsample of in_val (data.val_fraction of the training split); null = all of it
        "n_in_test": None,        # null = the whole test split
        "n_ood": None,
        "n_generated": 1000,
        "checkpoint": None,       # a checkpoint.pt or a training run directory; null = this run's, training first
        "bootstrap": 1000,        # stratified bootstrap resamples for metric intervals (0: no intervals)
        "confidence": 0.95,       # level of those intervals
        "figures": True,
        "png": True,
        # model-free reference baselines scored in every image run beside ood.scores (ood/baselines.py)
        "baselines": ["codec_bits_per_dim", "intensity_mean", "intensity_std", "saturation"],
    },
    "tracking": {
        "wandb": True,
        "mode": "auto",           # auto: online if logged in, else offline | offline | online
        "project": "likelihood-paradox",
        "entity": None,
        "chart_points": 2000,     # rows per split in the W&B custom charts (a seeded subsample; building them is slow)
    },
}

CORE_CHOICES = {
    "training.lr_schedule": ("cosine", "constant", "exponential"),
    "training.optimizer": ("adam", "adamw", "rmsprop"),
    "training.precision": ("fp32", "bf16", "fp16", "auto"),
    "ood.precision": ("fp32", "bf16"),
    "data.eval_dequantization": ("uniform", "midpoint"),
    "tracking.mode": ("auto", "offline", "online"),
}

# numeric keys with bounds: (lowest allowed, highest allowed, inclusive low?) -- None means unbounded
CORE_RANGES: Dict[str, tuple] = {
    "run.seed": (0, 2**31 - 1, True),
    "run.holdout_seed": (0, 2**31 - 1, True),
    "run.num_threads": (1, 4096, True),
    "training.steps": (1, 10**9, True),
    "training.batch_size": (1, 65536, True),
    "training.lr": (0.0, 1000.0, False),
    "training.warmup_steps": (0, 10**9, True),
    "training.weight_decay": (0.0, 1000.0, True),
    "training.grad_clip": (0.0, 1000000000.0, True),
    "training.checkpoint_every": (1, 10**9, True),
    "training.sample_grid": (0, 4096, True),
    "training.negative_weight": (0.0, 1000000.0, True),
    "data.train_subsample": (1, 10**8, True),
    "ood.batch_size": (1, 65536, True),
    "ood.n_in_train": (1, 10**8, True),
    "ood.n_in_test": (1, 10**8, True),
    "ood.n_ood": (1, 10**8, True),
    "ood.n_generated": (0, 10**8, True),
    "data.val_fraction": (0.0, 0.9, True),
    "training.mutation_rate": (0.0, 1.0, True),
    "training.lr_decay": (0.0, 1.0, False),
    "training.l2_penalty": (0.0, 1000000.0, True),
    "ood.n_in_val": (1, 10**8, True),
    "ood.bootstrap": (0, 10**6, True),
    "ood.confidence": (0.0, 1.0, False),
    "tracking.chart_points": (1, 10**6, True),
    "training.ood_curve_every": (0, 10**9, True),
    "training.ood_curve_points": (1, 10**8, True),
}


# keys whose default (null) says nothing of their type: what a value must be when it is not null
CORE_TYPES: Dict[str, str] = {
    "run.holdout_seed": "int", "run.num_threads": "int", "data.shape": "shape", "data.train_subsample": "int",
    "training.negative_ood": "str", "ood.n_in_test": "int", "ood.n_ood": "int", "ood.checkpoint": "str",
    "tracking.entity": "str", "run.name": "str",
}
TYPE_TESTS: Dict[str, Tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "int_list": ("a non-empty list of integers", lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v)),
    "shape": ("[C, H, W] (or [D]) of positive integers", lambda v: isinstance(v, list) and len(v) in (1, 3) and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 4096 for x in v)),
}


def _check_log_tau_grid(path: str, value: Any) -> None:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
            and value[0] < value[1] and int(value[2]) == value[2] and value[2] >= 2):
        raise ConfigError(f"Config key '{path}' must be [min, max, points] with min < max and "
                          f"at least 2 points, got {value!r}.")


# the suite's groups: near (class splits), shift (the meaning kept: to be accepted), corruption (the meaning lost),
# far (synthetic), real (another dataset); ``transform`` is a set to be measured into shift or corruption at run
# time (genood.ood.semantics), the default of every transform; shift and corruption given in data.ood are by hand
OOD_GROUPS = ("near", "transform", "shift", "corruption", "far", "real")
GROUP_ORDER = ("near", "corruption", "far", "real", "transform", "shift")  # how tables and figures order the groups
HAND_GROUPS = ("shift", "corruption")  # groups that only a hand sets (measurement gives them to 'transform' sets)


def ood_sets(value: Any, path: str = "data.ood") -> List[Tuple[str, str]]:
    """``data.ood`` as [(dataset, group)]: a name, a list of names (each in its derivation's default group:
    class splits near, transforms and blends transform, synthetic sets far, real datasets real), or a mapping
    ``{group: [names]}`` that groups them explicitly (``transform``: measured into shift or corruption at run
    time; ``shift`` / ``corruption``: set by hand). Raises ConfigError in one sentence when malformed."""
    def names(v, where):
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items or not all(isinstance(n, str) and n for n in items):
            raise ConfigError(f"Config key '{where}' must be a dataset name or a non-empty list of dataset names, got {v!r}.")
        return items
    if isinstance(value, dict):
        bad = [g for g in value if g not in OOD_GROUPS]
        if bad or not value:
            raise ConfigError(f"Config key '{path}' groups OOD sets by {', '.join(OOD_GROUPS)}; "
                              f"{'unknown group ' + repr(bad[0]) if bad else 'it is empty'}: rename or drop it.")
        out = [(n, g) for g, v in value.items() for n in names(v, f"{path}.{g}")]
    else:
        from genood.data.derived import group_of
        out = []
        for n in names(value, path):
            try:
                out.append((n, group_of(n)))
            except ValueError as exc:
                raise ConfigError(f"Config key '{path}': {exc}") from None
    seen = [n for n, _ in out]
    dup = next((n for n in seen if seen.count(n) > 1), None)
    if dup:
        raise ConfigError(f"Config key '{path}' lists the OOD set {dup!r} twice; list each set once.")
    return out


def _check_ood_sets(path: str, value: Any) -> None:
    ood_sets(value, path)


def _check_ood_groups(path: str, value: Any) -> None:
    if not isinstance(value, list) or any(g not in OOD_GROUPS for g in value):
        raise ConfigError(f"Config key '{path}' must be a list of OOD groups from {', '.join(OOD_GROUPS)}, got {value!r}.")


IN_SPLITS = ("in_train", "in_val", "in_test", "generated")


def _check_in_splits(path: str, value: Any) -> None:
    if not isinstance(value, list) or not value or any(s not in IN_SPLITS for s in value):
        raise ConfigError(f"Config key '{path}' must be a non-empty list of splits from {', '.join(IN_SPLITS)}, "
                          f"got {value!r}.")


def _check_name(path: str, value: Any) -> None:
    if value is None:
        return
    from genood.paths import name_problem, shown_name
    problem = name_problem(value)
    if problem:
        raise ConfigError(f"Config key '{path}' must be {problem}, got {shown_name(value)!r}.")


def _check_betas(path: str, value: Any) -> None:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and 0.0 <= v < 1.0 for v in value)):
        raise ConfigError(f"Config key '{path}' must be [beta1, beta2], each in [0, 1), got {value!r}.")


# named checks a spec may attach to a key (``checks: {section.key: <name>}``)
CHECKS: Dict[str, Callable[[str, Any], None]] = {"grid": _check_log_tau_grid, "ood_sets": _check_ood_sets,
                                                 "ood_groups": _check_ood_groups, "in_splits": _check_in_splits,
                                                 "betas": _check_betas, "name": _check_name}
FREE_TYPED = {"data.ood"}  # keys whose check alone says what they may hold
NULL_MEANS_DEFAULT = {"run.sweep_id"}  # keys whose null is read as their default (a run outside any sweep: single)
NULL_MEANS_ALL = {"ood.n_in_train", "ood.n_in_val"}  # subsample sizes with a default whose null scores every point
NULL_ACCEPTED = frozenset(NULL_MEANS_DEFAULT | NULL_MEANS_ALL)  # keys with a non-null default that may still be null


@dataclass(frozen=True)
class FamilySpec:
    """A model family as its spec file declares it (read without importing torch)."""
    name: str
    builder: str                 # "module:function" building the model from (shape, model_cfg)
    model_class: str             # "module:Class" of the built model (its capabilities are checked before training)
    keys: Dict[str, Any]         # model.* keys and their defaults (``family`` excluded)
    choices: Dict[str, tuple]    # full dotted paths
    ranges: Dict[str, tuple]
    run_name: Tuple[str, ...]    # model keys that go into the readable run name
    loss: str                    # what training_loss measures (logged as train/<loss>)
    sections: Tuple[str, ...]    # extra top-level sections this family reads (hashed into OOD run names)
    source: str
    run_keys: Tuple[str, ...] = ()  # model keys naming another run (a path, or a preset trained on this run's data)
    auto_precision: str = "bf16"  # what training.precision 'auto' means where bf16 is native: bf16, or fp32 where it hurts
    auto_precision_reason: str = ""  # why a family keeps fp32 under auto (measured; printed in the training log)
    identity_defaults: Dict[str, Any] = field(default_factory=dict)  # model keys added late: at this value not in the identity
    config_checks: Tuple[str, ...] = ()  # rules across model keys (genood.models.config_checks.MODEL_CHECKS)


@dataclass(frozen=True)
class SectionSpec:
    """A top-level configuration section owned by a score, a family or a detector."""
    name: str
    defaults: Dict[str, Any]
    owner_kind: str              # "score", "family" or "detector" (read by every OOD run)
    owners: Tuple[str, ...]      # the scores / families whose use makes the section part of a run's identity
    not_identity: Tuple[str, ...]  # keys that only trade speed for memory (not hashed)
    source: str


SPEC_GLOBS = ("models/*.yaml", "ood/scores/*.yaml", "ood/*.yaml")


def _rules(raw: Dict[str, Any], prefix: str = "") -> Tuple[Dict[str, tuple], Dict[str, tuple], Dict[str, str]]:
    choices = {prefix + k: tuple(v) for k, v in (raw.get("choices") or {}).items()}
    ranges = {}
    for k, v in (raw.get("ranges") or {}).items():
        lo, hi = v[0], v[1]
        ranges[prefix + k] = (lo, hi, bool(v[2]) if len(v) > 2 else True)
    checks = {prefix + k: v for k, v in (raw.get("checks") or {}).items()}
    for k, v in (raw.get("types") or {}).items():
        if v not in TYPE_TESTS:
            raise RuntimeError(f"Spec type {v!r} of '{prefix + k}' is none of {', '.join(TYPE_TESTS)}.")
        TYPES[prefix + k] = v
    return choices, ranges, checks


TYPES: Dict[str, str] = dict(CORE_TYPES)  # every declared type, the spec files' ``types:`` included


def _load_specs():
    """Read every spec file (``models/*.yaml`` for families, ``ood/scores/*.yaml`` for scores)."""
    families: Dict[str, FamilySpec] = {}
    sections: Dict[str, SectionSpec] = {}
    choices, ranges, checks = dict(CORE_CHOICES), dict(CORE_RANGES), {}
    for pattern in SPEC_GLOBS:
        for path in sorted(PACKAGE_DIR.glob(pattern)):
            raw = yaml.safe_load(path.read_text()) or {}
            rel = str(path.relative_to(PACKAGE_DIR.parent))
            for name, fam in (raw.get("families") or {}).items():
                if name in families:
                    raise RuntimeError(f"Model family '{name}' is declared twice: in {families[name].source} and in "
                                       f"{rel}; rename one of them.")
                c, r, k = _rules(fam, "model.")
                families[name] = FamilySpec(name, fam["builder"], fam["model_class"], dict(fam.get("keys") or {}), c, r,
                                            tuple(fam.get("run_name") or ()), fam.get("loss", "loss"),
                                            tuple(fam.get("sections") or ()), rel, tuple(fam.get("run_keys") or ()),
                                            str(fam.get("auto_precision", "bf16")), str(fam.get("auto_precision_reason", "")),
                                            dict(fam.get("identity_defaults") or {}), tuple(fam.get("config_checks") or ()))
                if families[name].auto_precision not in ("bf16", "fp32"):
                    raise RuntimeError(f"Model family '{name}' ({rel}): auto_precision must be bf16 or fp32.")
                checks.update(k)
            for name, sec in (raw.get("sections") or {}).items():
                if name in CORE_DEFAULTS or name in sections:
                    first = sections[name].source if name in sections else "the core defaults (runconfig.py)"
                    raise RuntimeError(f"Config section '{name}' is declared twice: in {first} and in {rel}; rename one.")
                sections[name] = SectionSpec(name, dict(sec.get("keys") or {}), sec.get("owner_kind", "score"),
                                             tuple(sec.get("owners") or ()), tuple(sec.get("not_identity") or ()), rel)
                c, r, k = _rules(sec, name + ".")
                choices.update(c)
                ranges.update(r)
                checks.update(k)
    return families, sections, choices, ranges, checks


FAMILIES, SECTIONS, CHOICES, RANGES, KEY_CHECKS = _load_specs()
KEY_CHECKS["data.ood"] = "ood_sets"
KEY_CHECKS["training.adam_betas"] = "betas"
KEY_CHECKS["run.name"] = KEY_CHECKS["run.sweep_id"] = "name"  # names become path components
CHOICES["model.family"] = tuple(sorted(FAMILIES))


def family_spec(name: str) -> FamilySpec:
    """The spec of model family ``name``; a ConfigError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"Config key 'model.family' must be one of {', '.join(sorted(FAMILIES))}, got {name!r}.")
    return FAMILIES[name]


def schema_for(family: str) -> Dict[str, Any]:
    """The full defaults tree for a model family: core sections, the family's model keys, every spec section."""
    spec = family_spec(family)
    tree = copy_tree(CORE_DEFAULTS)
    tree["model"] = {"family": family, **copy_tree(spec.keys)}
    for name, sec in SECTIONS.items():
        tree[name] = copy_tree(sec.defaults)
    return tree


def _family_of(*trees: Dict[str, Any]) -> str:
    """The model family named by the last tree that names one (later trees win), else the default."""
    family = CORE_DEFAULTS["model"]["family"]
    for tree in trees:
        model = (tree or {}).get("model")
        if isinstance(model, dict) and model.get("family") is not None:
            family = model["family"]
    if not isinstance(family, str):
        raise ConfigError(f"Config key 'model.family' must be a string, got {family!r}.")
    family_spec(family)
    return family


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}``; a list leaf as its JSON text (comparable, hashable)."""
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True, default=str) if isinstance(tree, list) else tree}


def copy_tree(obj: Any) -> Any:
    """A copy of a YAML/JSON-like tree (dicts, lists, scalars); much faster than copy.deepcopy."""
    if isinstance(obj, dict):
        return {k: copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_tree(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return copy.deepcopy(obj)


def deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Return a new tree: ``base`` updated recursively by ``update`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy_tree(value)
    for key, value in out.items():
        if key not in (update or {}):
            out[key] = copy_tree(value)
    return out


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` has the type of the schema's ``default``; null only where the default is null (a key that
    means something when unset), never for a key that always holds a value."""
    if default is None:
        return True
    if value is None:
        return False
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _type_phrase(default: Any) -> str:
    """What a value of ``default``'s type is called in a sentence (never null: see _type_ok)."""
    kinds = {bool: "true or false", float: "a number", int: "an integer", list: "a list", str: "a string"}
    return next((text for kind, text in kinds.items() if isinstance(default, kind)), type(default).__name__)


def _coerce_floats(cfg: Dict[str, Any], schema: Dict[str, Any]) -> None:
    """YAML 1.1 reads ``3e-4`` as a string; turn such strings into floats where a float is expected."""
    for key, value in cfg.items():
        default = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(default, dict) and isinstance(value, dict):
            _coerce_floats(value, default)
        elif isinstance(default, float) and isinstance(value, str):
            try:
                cfg[key] = float(value)
            except ValueError:
                pass


def validate(cfg: Dict[str, Any], schema: Optional[Dict[str, Any]] = None, prefix: str = "") -> None:
    """Check keys and types against the schema; raise ConfigError naming the dotted path.

    ``schema`` defaults to the schema of the model family ``cfg`` names (the default family if none)."""
    if schema is None:
        schema = schema_for(_family_of(cfg if isinstance(cfg, dict) else {}))
    family_rules = FAMILIES.get(schema.get("model", {}).get("family")) if prefix == "" and isinstance(schema.get("model"), dict) else None
    _validate(cfg, schema, prefix, family_rules)


def _validate(cfg: Any, schema: Dict[str, Any], prefix: str, family: Optional[FamilySpec]) -> None:
    if not isinstance(cfg, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(cfg).__name__}.")
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in schema:
            near = [k for k in schema if k.lower().startswith(str(key)[:3].lower())]
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            owner = f" for model.family '{family.name}'" if family and prefix == "model." else ""
            raise ConfigError(f"Unknown config key '{path}'{hint}{owner}; known keys here: {', '.join(schema)}.")
        default = schema[key]
        if isinstance(default, dict):
            _validate(value, default, path + ".", family)
            continue
        if path not in FREE_TYPED and not _type_ok(default, value) and not (value is None and path in NULL_ACCEPTED):
            raise ConfigError(f"Config key '{path}' must be {_type_phrase(default)}, got {value!r}.")
        declared = TYPES.get(path)
        if declared and value is not None and not TYPE_TESTS[declared][1](value):
            raise ConfigError(f"Config key '{path}' must be {TYPE_TESTS[declared][0]} or null, got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"Config key '{path}' must be a finite number, got {value!r}.")
        choices = CHOICES.get(path) or (family.choices.get(path) if family else None)
        if choices and value not in choices:
            raise ConfigError(f"Config key '{path}' must be one of {', '.join(map(str, choices))}, got {value!r}.")
        bounds = RANGES.get(path) or (family.ranges.get(path) if family else None)
        if bounds and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"Config key '{path}' must be a number, got {value!r}.")
        if bounds and value is not None:
            lo, hi, inclusive = bounds
            if (lo is not None and (value < lo if inclusive else value <= lo)) or (hi is not None and value > hi):
                want = " and ".join(filter(None, [f"{'>=' if inclusive else '>'} {lo}" if lo is not None else "",
                                                  f"<= {hi}" if hi is not None else ""]))
                raise ConfigError(f"Config key '{path}' must be {want}, got {value!r}.")
        check = KEY_CHECKS.get(path)
        if check:
            CHECKS[check](path, value)


def parse_override(text: str) -> Dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like dotted.key=value.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        why = str(getattr(exc, "problem", None) or type(exc).__name__)
        raise ConfigError(f"Config key '{key.strip()}': the override's value {raw[:60]!r} is not valid YAML ({why}); "
                          f"quote it, e.g. {key.strip()}='\"...\"'.") from None
    node: Dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist; see configurations/ for examples.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
    return data


def _preset(name: str, chain: tuple = ()) -> Dict[str, Any]:
    """A preset's keys; a preset may build on another (``preset: <base>`` inside it), its own keys on top."""
    from genood.paths import name_problem, shown_name
    problem = name_problem(name)  # a name, never a path: '../x' or a 10,000-character string is no preset
    preset_path = None if problem else PRESET_DIR / f"{name}.yaml"
    if preset_path is None or not preset_path.exists():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        what = (f"must be a preset name ({problem}), got {shown_name(name)!r}" if problem
                else f"names an unknown preset '{name}' (no {preset_path})")
        raise ConfigError(f"Config key 'preset' {what}; known presets: {known}.")
    if name in chain:
        raise ConfigError(f"Presets build on each other in a cycle: {' -> '.join(chain + (name,))}; fix 'preset:' in {preset_path}.")
    data = load_yaml(preset_path)
    base = data.pop("preset", None)
    return deep_merge(_preset(str(base), chain + (name,)), data) if base else data


def resolve(user: Dict[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Resolve a run configuration: defaults < preset < ``user`` < overrides, validated.

    The model family (``model.family``: the user's, else the preset's, else ``flow``) picks the schema
    of the ``model`` section; every other section's keys come from the core and the spec files."""
    merged_user = copy_tree(user)
    for text in overrides:
        merged_user = deep_merge(merged_user, parse_override(text))
    preset = merged_user.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"Config key 'preset' must be a preset name, got {preset!r}.")
    preset_cfg = _preset(preset) if preset else {}
    family = _family_of(preset_cfg, merged_user)
    schema = schema_for(family)
    if preset:
        _coerce_floats(preset_cfg, schema)
        try:
            validate(dict(preset_cfg, model=dict(preset_cfg.get("model") or {}, family=family)), schema)
        except ConfigError as exc:
            raise ConfigError(f"In preset {preset}.yaml: {exc}") from exc
    _coerce_floats(merged_user, schema)
    validate(merged_user, schema)
    cfg = deep_merge(deep_merge(schema, preset_cfg), merged_user)
    cfg["model"]["family"] = family
    if cfg["run"].get("sweep_id") in (None, ""):
        cfg["run"]["sweep_id"] = "single"  # a run outside any sweep (null would name a folder 'None')
    validate(cfg, schema)
    if FAMILIES[family].config_checks:
        from genood.models.config_checks import MODEL_CHECKS
        for rule in FAMILIES[family].config_checks:
            MODEL_CHECKS[rule](cfg["model"])
    return cfg


def load(path: Optional[str | Path], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Load and resolve a run configuration file (``path`` may be None: defaults only)."""
    user = load_yaml(path) if path else {}
    try:
        return resolve(user, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc


# training keys that only trade speed (or what is shown) for nothing the model learns: never in the identity
SPEED_ONLY_TRAINING = ("progress", "sample_grid", "checkpoint_every", "ood_curve_every", "ood_curve_points",
                       "channels_last", "compile")
# keys added after runs existed: at this value they leave the identity, so earlier runs keep their names
# (a family declares its own under ``identity_defaults`` in its spec)
IDENTITY_DEFAULTS = {"training.optimizer": "adam", "training.precision": "auto", "training.lr_decay": 1.0,
                     "training.adam_betas": [0.9, 0.999]}


def model_identity(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What determines a trained model: architecture, training, in-distribution data, seed."""
    negative = cfg["training"].get("negative_ood") is not None
    late = dict(IDENTITY_DEFAULTS)
    spec = FAMILIES.get(cfg["model"].get("family"))
    late.update({f"model.{k}": v for k, v in (spec.identity_defaults if spec else {}).items()})
    keep = lambda section, k, v: f"{section}.{k}" not in late or late[f"{section}.{k}"] != v
    training = {k: v for k, v in cfg["training"].items() if k not in SPEED_ONLY_TRAINING and keep("training", k, v)
                and (negative or not k.startswith("negative_"))}
    model = {k: v for k, v in cfg["model"].items() if keep("model", k, v)}
    return {"model": model, "training": training,
            "data": {k: cfg["data"][k] for k in ("in_distribution", "shape", "train_subsample", "val_fraction")}, "seed": cfg["run"]["seed"],
            **({"holdout_seed": cfg["run"]["holdout_seed"]} if cfg["run"].get("holdout_seed") is not None else {})}


def holdout_seed(cfg: Dict[str, Any]) -> int:
    """The seed of the in_val holdout: ``run.holdout_seed``, else ``run.seed``."""
    value = cfg["run"].get("holdout_seed")
    return int(cfg["run"]["seed"] if value is None else value)


def used_sections(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The spec sections an OOD run reads: those of its scores and of its model family, less speed-only keys."""
    scores = set(cfg["ood"].get("scores") or ())
    family = cfg["model"]["family"]
    out = {}
    for name, sec in SECTIONS.items():
        if sec.owner_kind == "detector":  # detectors read their section in every run
            used = True
        else:
            used = (scores & set(sec.owners)) if sec.owner_kind == "score" else (family in sec.owners)
        if used and name in cfg:
            out[name] = {k: v for k, v in cfg[name].items() if k not in sec.not_identity}
    return out


def _safe(dataset: Any) -> str:
    """A dataset name as a path component (``npz:/a/b.npz``, ``manifold:sphere:d=2,dim=5`` ...): characters
    outside [A-Za-z0-9_.+-] become '_', no '..', no leading '.' or '-', at most 100 characters (the run name's
    hash tells runs apart)."""
    out = "".join(ch if (ch.isascii() and (ch.isalnum() or ch in "_.+-")) else "_" for ch in str(dataset))
    while ".." in out:
        out = out.replace("..", "_")
    out = out.lstrip(".-") or "_"
    return out if len(out) <= 100 else out[:100]


def run_name(cfg: Dict[str, Any], kind: str) -> str:
    """Readable run name with a hash of everything that determines the run's results."""
    if cfg["run"].get("name"):
        return str(cfg["run"]["name"])
    ident = model_identity(cfg)
    if kind == "ood":
        ident["ood"] = {k: v for k, v in cfg["ood"].items() if k not in ("figures", "png")
                        and not (k == "precision" and v == "fp32")}
        ident["ood_data"] = {"ood": cfg["data"]["ood"], "eval_dequantization": cfg["data"]["eval_dequantization"]}
        ident.update(used_sections(cfg))
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    m = cfg["model"]
    label = "-".join([m["family"]] + [str(m[k]) for k in family_spec(m["family"]).run_name])
    ind = _safe(cfg["data"]["in_distribution"])
    preset = cfg.get("preset") or "custom"
    if kind == "ood":
        sets = ood_sets(cfg["data"]["ood"])
        ood = _safe(sets[0][0]) if len(sets) == 1 else f"suite{len(sets)}"
        return f"{label}-{preset}-{ind}-vs-{ood}-{digest}"
    return f"{label}-{preset}-{ind}-{digest}"


def dump(cfg: Dict[str, Any]) -> str:
    """The YAML text of a resolved configuration."""
    return yaml.safe_dump(cfg, sort_keys=False)
