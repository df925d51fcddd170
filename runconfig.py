"""Run configurations: defaults < preset < YAML file < ``dotted.key=value`` overrides.

A configuration is a nested mapping. Every key must exist in :data:`DEFAULTS` (so a typo
fails with its dotted path), and values keep the type of their default (ints may be given
for floats; ``null`` defaults accept anything). ``preset: <name>`` at the top level pulls in
``configurations/presets/<name>.yaml`` underneath the file's own keys.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent
PRESET_DIR = PROJECT_ROOT / "configurations" / "presets"


class ConfigError(ValueError):
    """A configuration problem, phrased as one sentence for the user."""


DEFAULTS: Dict[str, Any] = {
    "preset": None,
    "run": {
        "name": None,            # default: derived from the config, with a short hash
        "runs_root": "runs",
        "sweep_id": "single",
        "seed": 0,
        "device": "auto",        # auto: cuda if CUDA_VISIBLE_DEVICES exposes a GPU, else cpu
        "num_threads": None,     # torch CPU threads; null = torch's default
    },
    "data": {
        "in_distribution": "fmnist",
        "ood": "mnist",
        "shape": None,           # [C, H, W] the model works in; null = the in-distribution data's
        "train_subsample": None, # use only the first N (seeded shuffle) training images
        "eval_dequantization": "uniform",  # uniform (seeded per split) | midpoint
    },
    "model": {
        "family": "flow",
        "coupling": "rq_nsf",
        "levels": 2,
        "steps_per_level": 2,
        "hidden_channels": 32,
        "num_blocks": 1,
        "num_bins": 4,
        "tail_bound": 3.0,
        "actnorm": True,
        "one_by_one_conv": True,
        "logit_alpha": 0.05,
    },
    "training": {
        "steps": 700,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": "cosine",  # cosine | constant
        "warmup_steps": 50,
        "weight_decay": 0.0,
        "grad_clip": 5.0,
        "checkpoint_every": 100,
        "sample_grid": 64,        # images in the sample grid PNG (0: none)
        "progress": True,
    },
    "ood": {
        "scores": ["log_likelihood", "bits_per_dim"],
        "batch_size": 256,
        "n_in_train": 1000,       # subsample of the training split, scored for reference
        "n_in_test": None,        # null = the whole test split
        "n_ood": None,
        "n_generated": 1000,
        "checkpoint": None,       # a checkpoint.pt or a training run directory; null = this run's, training first
        "figures": True,
        "png": True,
    },
    "lid": {                      # used when ood.scores contains "lid" (flows only)
        "mode": "exact",          # exact (Jacobian + float64 eigendecomposition) | fast (stochastic Lanczos quadrature)
        "calibration": "fixed",   # fixed: use lid.log_tau | lpca: match in_train's mean LID to a local-PCA estimate
        "log_tau": -3.0,          # natural log of the singular-value threshold, data in [0, 1] units (the seeds' knob)
        "log_tau_grid": [-10.0, 4.0, 57],  # [min, max, points] of the LID-curve grid
        "n_per_split": 64,        # points per split that get an LID (seeded subset of the scored rows)
        "chunk_size": 128,        # (point, direction) rows per Jacobian pass: bounds memory; 64-128 was fastest on CPU (cache)
        "batch_points": 8,        # points decomposed together
        "probes": 8,              # fast mode: Rademacher probes per point
        "lanczos_steps": 30,      # fast mode: Lanczos steps per probe
        "lpca_k": 20,             # lpca calibration: neighbours
        "lpca_variance": 0.95,    # lpca calibration: explained-variance threshold
        "lpca_points": 2000,      # lpca calibration: training images used as the neighbour pool
        "keep": 0.95,             # honest dual threshold: LID quantile keeping this share of in_train
    },
    "tracking": {
        "wandb": True,
        "mode": "auto",           # auto: online if logged in, else offline | offline | online
        "project": "likelihood-paradox",
        "entity": None,
    },
}

CHOICES = {
    "model.family": ("flow", "tabular_flow"),
    "model.coupling": ("rq_nsf", "affine"),
    "training.lr_schedule": ("cosine", "constant"),
    "data.eval_dequantization": ("uniform", "midpoint"),
    "tracking.mode": ("auto", "offline", "online"),
    "lid.mode": ("exact", "fast"),
    "lid.calibration": ("fixed", "lpca"),
    "run.device": None,
}

# numeric keys with bounds: (lowest allowed, highest allowed, inclusive low?) -- None means unbounded
RANGES = {
    "lid.n_per_split": (1, None, True),
    "lid.chunk_size": (1, None, True),
    "lid.batch_points": (1, None, True),
    "lid.probes": (1, None, True),
    "lid.lanczos_steps": (1, None, True),
    "lid.lpca_k": (2, None, True),
    "lid.lpca_points": (3, None, True),
    "lid.lpca_variance": (0.0, 1.0, False),
    "lid.keep": (0.0, 1.0, False),
}


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
    if default is None or value is None:
        return True
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


def validate(cfg: Dict[str, Any], schema: Dict[str, Any] = DEFAULTS, prefix: str = "") -> None:
    """Check keys and types against the schema; raise ConfigError naming the dotted path."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(cfg).__name__}.")
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in schema:
            near = [k for k in schema if k.lower().startswith(str(key)[:3].lower())]
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ConfigError(f"Unknown config key '{path}'{hint}; known keys here: {', '.join(schema)}.")
        default = schema[key]
        if isinstance(default, dict):
            validate(value, default, path + ".")
        elif not _type_ok(default, value):
            raise ConfigError(f"Config key '{path}' must be {type(default).__name__}, got {value!r}.")
        choices = CHOICES.get(path)
        if choices and value not in choices:
            raise ConfigError(f"Config key '{path}' must be one of {', '.join(choices)}, got {value!r}.")
        bounds = RANGES.get(path)
        if bounds and value is not None:
            lo, hi, inclusive = bounds
            if (value < lo if inclusive else value <= lo) or (hi is not None and value > hi):
                want = f"{'>=' if inclusive else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
                raise ConfigError(f"Config key '{path}' must be {want}, got {value!r}.")
        if path == "lid.log_tau_grid" and not (
                isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
                and value[0] < value[1] and int(value[2]) == value[2] and value[2] >= 2):
            raise ConfigError(f"Config key 'lid.log_tau_grid' must be [min, max, points] with min < max and "
                              f"at least 2 points, got {value!r}.")


def parse_override(text: str) -> Dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like dotted.key=value.")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
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


def resolve(user: Dict[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Resolve a run configuration: defaults < preset < ``user`` < overrides, validated."""
    merged_user = copy_tree(user)
    for text in overrides:
        merged_user = deep_merge(merged_user, parse_override(text))
    _coerce_floats(merged_user, DEFAULTS)
    validate(merged_user)
    cfg = copy_tree(DEFAULTS)
    preset = merged_user.get("preset")
    if preset:
        preset_path = PRESET_DIR / f"{preset}.yaml"
        if not preset_path.exists():
            known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            raise ConfigError(f"Unknown preset '{preset}' (no {preset_path}); known presets: {known}.")
        preset_cfg = load_yaml(preset_path)
        _coerce_floats(preset_cfg, DEFAULTS)
        try:
            validate(preset_cfg)
        except ConfigError as exc:
            raise ConfigError(f"In preset {preset_path.name}: {exc}") from exc
        cfg = deep_merge(cfg, preset_cfg)
    cfg = deep_merge(cfg, merged_user)
    validate(cfg)
    return cfg


def load(path: Optional[str | Path], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Load and resolve a run configuration file (``path`` may be None: defaults only)."""
    user = load_yaml(path) if path else {}
    try:
        return resolve(user, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc


def model_identity(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What determines a trained model: architecture, training, in-distribution data, seed."""
    return {"model": cfg["model"], "training": {k: v for k, v in cfg["training"].items() if k not in ("progress", "sample_grid", "checkpoint_every")},
            "data": {k: cfg["data"][k] for k in ("in_distribution", "shape", "train_subsample")}, "seed": cfg["run"]["seed"]}


def run_name(cfg: Dict[str, Any], kind: str) -> str:
    """Readable run name with a hash of everything that determines the run's results."""
    if cfg["run"].get("name"):
        return str(cfg["run"]["name"])
    ident = model_identity(cfg)
    if kind == "ood":
        ident["ood"] = {k: v for k, v in cfg["ood"].items() if k not in ("figures", "png")}
        ident["ood_data"] = {"ood": cfg["data"]["ood"], "eval_dequantization": cfg["data"]["eval_dequantization"]}
        if "lid" in (cfg["ood"].get("scores") or []):  # chunk_size only trades memory for speed
            ident["lid"] = {k: v for k, v in cfg["lid"].items() if k != "chunk_size"}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    m = cfg["model"]
    ind = str(cfg["data"]["in_distribution"]).replace(":", "_").replace("/", "_")
    preset = cfg.get("preset") or "custom"
    if kind == "ood":
        ood = str(cfg["data"]["ood"]).replace(":", "_").replace("/", "_")
        return f"{m['family']}-{m['coupling']}-{preset}-{ind}-vs-{ood}-{digest}"
    return f"{m['family']}-{m['coupling']}-{preset}-{ind}-{digest}"


def dump(cfg: Dict[str, Any]) -> str:
    """The YAML text of a resolved configuration."""
    return yaml.safe_dump(cfg, sort_keys=False)
