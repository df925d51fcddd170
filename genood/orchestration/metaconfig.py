"""dysweep-format meta-configurations -> a deterministic grid of run configurations.

Grammar (dysweep's, implemented here from its documented rules):
* a mapping with ``sweep: true`` and ``values: [...]`` is one grid axis; a value may be a
  scalar or a whole sub-tree. At an ordinary key the chosen value *replaces* what the base
  holds there.
* ``sweep_identifier`` names the axis (the flat parameter key on W&B); without it the key is
  the shortest unique suffix of the axis' path (``model.coupling`` -> ``coupling``).
* ``sweep_alias`` names each value (used in run names and on W&B instead of the sub-tree).
* ``dy__upsert: [...]`` under a node lists sub-trees deep-*merged* into that node after its
  ordinary keys, in list order; an entry may itself be an axis whose values are sub-trees.
* any other mapping recurses; any other value overrides the base at that path.
Ours, beyond dysweep: a file may start from another with ``extends: <file>`` (relative to its folder): its
``base_config`` is deep-merged into the other's and its other top-level keys replace the other's, so a sweep
known under another name (the seeds' file names) is a few lines over ours.
The run's config is the base config with all of that applied. Axes are enumerated in
document order, the last axis varying fastest. ``dy__eval`` (code in YAML) is refused.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from genood import runconfig
from genood.runconfig import ConfigError, copy_tree, deep_merge

META_KEYS = {"project", "entity", "sweep_name", "description", "method", "metric", "early_terminate", "run_cap",
             "job", "base_config", "sweep_configuration", "count", "max_attempts"}
METHODS = ("grid", "random", "bayes")
AXIS_KEYS = {"sweep", "values", "sweep_alias", "sweep_identifier", "distribution", "min", "max"}


@dataclass
class Axis:
    identifier: str
    path: Tuple[str, ...]         # where the axis sits in sweep_configuration (for messages)
    values: List[Any]
    aliases: List[str]

    def alias_index(self, alias: Any) -> int:
        for i, a in enumerate(self.aliases):
            if a == alias or str(a) == str(alias):
                return i
        raise ConfigError(f"Axis '{self.identifier}' has no value '{alias}' (known: {', '.join(map(str, self.aliases))}).")


@dataclass
class MetaConfig:
    source: str
    job: str
    project: str
    entity: Optional[str]
    method: str
    base_config: Dict[str, Any]
    sweep_configuration: Dict[str, Any]
    axes: List[Axis]
    raw: Dict[str, Any]
    metric: Optional[Dict[str, Any]] = None
    max_attempts: int = 3
    _axis_at: Dict[Tuple[str, ...], Axis] = field(default_factory=dict)

    @property
    def size(self) -> int:
        n = 1
        for a in self.axes:
            n *= len(a.values)
        return n


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def _is_axis(node: Any) -> bool:
    return isinstance(node, dict) and node.get("sweep") is True


def _collect_axes(node: Any, path: Tuple[str, ...], found: List[Tuple[Tuple[str, ...], dict]]) -> None:
    if isinstance(node, dict):
        if "dy__eval" in node:
            raise ConfigError(f"'{_dotted(path + ('dy__eval',))}': code in YAML is not executed; use a named resolver instead.")
        if _is_axis(node):
            unknown = set(node) - AXIS_KEYS
            if unknown:
                raise ConfigError(f"'{_dotted(path)}' is an axis (sweep: true) with unknown key(s) {', '.join(sorted(unknown))}.")
            if not isinstance(node.get("values"), list) or not node["values"]:
                raise ConfigError(f"'{_dotted(path + ('values',))}' must be a non-empty list of the axis' values, "
                                  f"got {node.get('values')!r}.")
            found.append((path, node))
            for i, v in enumerate(node["values"]):
                _collect_axes(v, path + (f"values[{i}]",), found)  # nested axes inside values are refused below
            return
        for key, value in node.items():
            if key == "dy__upsert":
                if not isinstance(value, list):
                    raise ConfigError(f"'{_dotted(path + ('dy__upsert',))}' must be a list of sub-trees.")
                for i, entry in enumerate(value):
                    _collect_axes(entry, path + (f"dy__upsert[{i}]",), found)
            else:
                _collect_axes(value, path + (str(key),), found)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if _is_axis(v):
                raise ConfigError(f"'{_dotted(path)}[{i}]': axes inside lists are not supported; sweep the whole list instead.")


def _default_identifiers(paths: List[Tuple[str, ...]]) -> List[str]:
    clean = [tuple(p for p in path if not p.startswith("dy__upsert[")) or path for path in paths]
    out = []
    for i, path in enumerate(clean):
        for k in range(1, len(path) + 1):
            suffix = path[-k:]
            if all(other[-k:] != suffix for j, other in enumerate(clean) if j != i):
                out.append(_dotted(suffix))
                break
        else:
            out.append(_dotted(paths[i]))
    return out


def _alias_for(value: Any, index: int) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return str(value)
    return f"v{index}"


def parse(raw: Dict[str, Any], source: str = "<meta>") -> MetaConfig:
    """Validate a meta-configuration mapping and discover its axes (no run configs yet)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping at the top level.")
    unknown = set(raw) - META_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(META_KEYS))}.")
    for key in ("base_config", "sweep_configuration"):
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping.")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"{source}: 'method' must be one of {', '.join(METHODS)}, got {method!r}.")
    job = raw.get("job") or ("train" if "/training/" in source.replace("\\", "/") else "ood")
    from genood.orchestration.jobs import JOBS
    if job not in JOBS:
        raise ConfigError(f"{source}: 'job' must be one of {', '.join(sorted(JOBS))}, got {job!r}.")
    found: List[Tuple[Tuple[str, ...], dict]] = []
    _collect_axes(raw["sweep_configuration"], ("sweep_configuration",), found)
    paths = [p for p, _ in found]
    nested = [p for p in paths if any(q != p and p[:len(q)] == q for q in paths)]
    if nested:
        raise ConfigError(f"{source}: axis '{_dotted(nested[0])}' sits inside another axis' values; flatten it into that axis.")
    defaults = _default_identifiers([p[1:] for p in paths])
    axes, seen = [], {}
    for (path, node), default_id in zip(found, defaults):
        values = node.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: '{_dotted(path + ('values',))}' must be a non-empty list.")
        ident = node.get("sweep_identifier") or default_id
        if not isinstance(ident, str):
            raise ConfigError(f"{source}: '{_dotted(path + ('sweep_identifier',))}' must be a string.")
        if ident in seen:
            raise ConfigError(f"{source}: axis identifier '{ident}' is used twice ('{_dotted(seen[ident])}' and '{_dotted(path)}'); set sweep_identifier.")
        seen[ident] = path
        aliases = node.get("sweep_alias")
        if aliases is None:
            aliases = [_alias_for(v, i) for i, v in enumerate(values)]
        elif not isinstance(aliases, list) or len(aliases) != len(values):
            raise ConfigError(f"{source}: '{_dotted(path + ('sweep_alias',))}' must list one name per value ({len(values)}).")
        if len(set(map(str, aliases))) != len(aliases):
            raise ConfigError(f"{source}: '{_dotted(path + ('sweep_alias',))}' names must be distinct.")
        axes.append(Axis(ident, path, values, [str(a) for a in aliases]))
    meta = MetaConfig(source=source, job=job, project=raw.get("project", "likelihood-paradox"), entity=raw.get("entity"),
                      method=method, base_config=raw["base_config"], sweep_configuration=raw["sweep_configuration"],
                      axes=axes, raw=raw, metric=raw.get("metric"), max_attempts=int(raw.get("max_attempts", 3)))
    meta._axis_at = {a.path: a for a in axes}
    return meta


def describe_axes(meta: MetaConfig, shown: int = 4) -> str:
    """One line naming each axis and its values' names (the first ``shown`` of each), so a user sees at ``create``
    which grid a file (and what it ``extends``) expands to: ``seed: 3, 4 x in_distribution: fmnist, fmnist_0_4``."""
    if not meta.axes:
        return "no axes (one run)"
    parts = []
    for axis in meta.axes:
        names = ", ".join(axis.aliases[:shown]) + (f", ... ({len(axis.aliases)} values)" if len(axis.aliases) > shown else "")
        parts.append(f"{axis.identifier}: {names}")
    return " x ".join(parts)


def _load_raw(path: Path, chain: Tuple[Path, ...] = ()) -> Any:
    """The file's mapping with ``extends: <file>`` applied: the named meta-configuration (a path relative to this
    file's folder, itself possibly extending another) is the starting point; this file's ``base_config`` is
    deep-merged into its base_config and every other top-level key of this file replaces the parent's."""
    raw = runconfig.load_yaml(path)
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    raw = dict(raw)
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: 'extends' must name a meta-configuration file (relative to {path.parent}).")
    parent_path = (path.parent / parent).resolve()
    if parent_path in chain + (path.resolve(),):
        names = " -> ".join(str(p) for p in chain + (path.resolve(), parent_path))
        raise ConfigError(f"{path}: 'extends' makes a cycle ({names}); one of these files must stop extending.")
    if not parent_path.is_file():
        raise ConfigError(f"{path}: 'extends: {parent}' names {parent_path}, which does not exist; give a path relative "
                          f"to {path.parent}.")
    base = _load_raw(parent_path, chain + (path.resolve(),))
    if not isinstance(base, dict):
        raise ConfigError(f"{parent_path} (extended by {path}) must hold a mapping at the top level.")
    merged = dict(base)
    for key, value in raw.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = deep_merge(base[key], value) if key == "base_config" and both else value
    return merged


def load(path: str | Path) -> MetaConfig:
    """Read and validate a meta-configuration YAML file (with ``extends`` applied, see :func:`_load_raw`)."""
    return parse(_load_raw(Path(path)), str(path))


def _resolve_node(meta: MetaConfig, node: Any, path: Tuple[str, ...], choice: Dict[str, int]) -> Any:
    """The overlay a sweep_configuration node contributes, with axes replaced by chosen values."""
    axis = meta._axis_at.get(path)
    if axis is not None:
        return copy_tree(axis.values[choice[axis.identifier]])
    if not isinstance(node, dict):
        return copy_tree(node)
    out: Dict[str, Any] = {}
    for key, value in node.items():
        if key != "dy__upsert":
            out[key] = _resolve_node(meta, value, path + (str(key),), choice)
    for i, entry in enumerate(node.get("dy__upsert") or []):
        resolved = _resolve_node(meta, entry, path + (f"dy__upsert[{i}]",), choice)
        if not isinstance(resolved, dict):
            raise ConfigError(f"'{_dotted(path)}.dy__upsert[{i}]' must resolve to a mapping to merge, got {resolved!r}.")
        out = deep_merge(out, resolved)
    return out


def _apply(base: Dict[str, Any], overlay: Dict[str, Any], replaced: set, path: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Merge overlay into base, except at axis locations whose chosen value replaces the base."""
    out = copy_tree(base)
    for key, value in overlay.items():
        here = path + (str(key),)
        if here in replaced or not (isinstance(value, dict) and isinstance(out.get(key), dict)):
            out[key] = copy_tree(value)
        else:
            out[key] = _apply(out[key], value, replaced, here)
    return out


def config_for(meta: MetaConfig, choice: Dict[str, int]) -> Dict[str, Any]:
    """The (unresolved) run config for one choice ``{axis identifier: value index}``."""
    overlay = _resolve_node(meta, meta.sweep_configuration, ("sweep_configuration",), choice)
    replaced = {a.path[1:] for a in meta.axes if not any(p.startswith("dy__upsert[") for p in a.path)}
    return _apply(meta.base_config, overlay, replaced)


def choices(meta: MetaConfig):
    """Every grid point, in deterministic order (last axis fastest)."""
    for combo in itertools.product(*[range(len(a.values)) for a in meta.axes]):
        yield {a.identifier: i for a, i in zip(meta.axes, combo)}


def config_digest(cfg: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_name_for(meta: MetaConfig, choice: Dict[str, int], cfg: Dict[str, Any], digest: Optional[str] = None) -> str:
    """Readable run name: the chosen aliases, then a hash of the resolved config."""
    from genood.runconfig import _safe
    parts = [meta.axes[i].aliases[choice[a.identifier]] for i, a in enumerate(meta.axes)]
    stem = _safe("-".join(parts)) if parts else "run"  # aliases are free text; a run name is one path component
    return f"{stem[:80]}-{digest or config_digest(cfg)}"


@dataclass
class RunSpec:
    name: str
    params: Dict[str, str]         # axis identifier -> alias (the flat W&B parameters)
    config: Dict[str, Any]         # fully resolved run configuration
    digest: str


def expand(meta: MetaConfig, resolve: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> List[RunSpec]:
    """All runs of the grid, each config resolved and validated (errors name the run and dotted path)."""
    from genood.orchestration.jobs import JOBS
    resolve = resolve or JOBS[meta.job].resolve
    runs = []
    for choice in choices(meta):
        raw = config_for(meta, choice)
        params = {a.identifier: a.aliases[choice[a.identifier]] for a in meta.axes}
        try:
            cfg = resolve(raw)
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in params.items()) or "the base config"
            raise ConfigError(f"{meta.source}: run ({where}): {exc}") from exc
        digest = config_digest(cfg)
        runs.append(RunSpec(run_name_for(meta, choice, cfg, digest), params, cfg, digest))
    return runs


def wandb_sweep_config(meta: MetaConfig) -> Dict[str, Any]:
    """The flat W&B sweep configuration: one parameter per axis, its aliases as values."""
    params = {a.identifier: {"values": list(a.aliases)} for a in meta.axes}
    out: Dict[str, Any] = {"method": meta.method, "parameters": params or {"_single": {"value": 0}}}
    if meta.metric:
        out["metric"] = meta.metric
    if meta.raw.get("early_terminate"):
        out["early_terminate"] = meta.raw["early_terminate"]
    if meta.raw.get("run_cap"):
        out["run_cap"] = meta.raw["run_cap"]
    out["name"] = meta.raw.get("sweep_name") or Path(meta.source).stem
    return out


def choice_from_params(meta: MetaConfig, params: Dict[str, Any]) -> Dict[str, int]:
    """Rebuild a grid choice from flat W&B parameters (the agent side of wandb_sweep_config)."""
    missing = [a.identifier for a in meta.axes if a.identifier not in params]
    if missing:
        raise ConfigError(f"W&B run is missing sweep parameter(s) {', '.join(missing)}.")
    return {a.identifier: a.alias_index(params[a.identifier]) for a in meta.axes}
