"""Derived OOD sets: datasets made from another dataset by a named, seeded derivation.

A derived set is named ``<base>:<derivation>[=<value>]``, and derivations chain left to right
(``fmnist:classes=0-4:hflip``). The base is any dataset the registry loads (``fmnist``, ``npz:<path>``,
...). Each derivation is one registered function in a module of this package; it declares the suite
group it belongs to, which the aggregation uses when a run does not group its OOD sets itself:

* ``near``: semantic shift inside one dataset (class splits, :mod:`data.derived.classes`);
* ``transform``: the in-distribution images changed by a transform with a strength
  (:mod:`data.derived.shifts`, :mod:`data.derived.blends`);
* ``far``: synthetic images that share nothing with the data but size and pixel statistics
  (:mod:`data.derived.synthetic`);
* ``real``: another real dataset (not a derivation; any registered or user dataset).

Everything is deterministic: the random parts are drawn from a generator seeded by the set's full name
and the split, so a set is the same on every machine and in every run. A derived set's ``files`` are its
base's files, so their checksums land in ``provenance.json``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from genood.registry import Registry

__all__ = ["GROUPS", "DerivationError", "Derivation", "DERIVATIONS", "register_derivation", "Step",
           "parse_class_list", "split_name", "is_derived", "unknown_step_message", "group_of", "severity",
           "seeded_rng", "apply", "to_uint8", "describe"]

GROUPS = ("near", "transform", "far", "real")


class DerivationError(ValueError):
    """A derived set's name cannot be built (one sentence for the user)."""


@dataclass(frozen=True)
class Derivation:
    name: str
    group: str                      # near | transform | far
    value: str                      # "none" (no value), "float", "int", "classes" (a class list)
    default: Any                    # the value when the name gives none (None: a value is required)
    fn: Callable[..., Tuple[np.ndarray, Optional[np.ndarray]]]
    description: str
    check: Optional[Callable[[Any], Optional[str]]] = None  # value -> a complaint, or None when it is fine


DERIVATIONS: Registry[Derivation] = Registry("derivation", packages=(__name__,))


def register_derivation(name: str, group: str, description: str, value: str = "none", default: Any = None,
                        check: Optional[Callable[[Any], Optional[str]]] = None):
    """Decorator registering ``fn(images uint8 (N,H,W,C), labels (N,) or None, value, rng) -> (images, labels)``.

    ``value`` is how the text after ``=`` is read; ``check(value)`` returns a complaint (a phrase) for values
    out of range. A duplicate name is an error."""
    if group not in GROUPS[:3]:
        raise ValueError(f"derivation {name!r}: group must be one of near, transform, far, got {group!r}")

    def wrap(fn):
        DERIVATIONS.add(name, Derivation(name, group, value, default, fn, description, check), fn.__module__)
        return fn
    return wrap


@dataclass(frozen=True)
class Step:
    derivation: Derivation
    value: Any
    text: str          # the step as written (``hflip``, ``noise=16``)


def _read_value(d: Derivation, raw: Optional[str], full: str):
    if raw is None:
        if d.value != "none" and d.default is None:
            raise DerivationError(f"Dataset '{full}': derivation '{d.name}' needs a value ({d.name}=<{d.value}>); "
                                  f"{d.description}.")
        return d.default
    if d.value == "none":
        raise DerivationError(f"Dataset '{full}': derivation '{d.name}' takes no value; write ':{d.name}'.")
    try:
        if d.value == "float":
            value = float(raw)
        elif d.value == "int":
            value = int(raw)
        else:
            value = parse_class_list(raw)
    except ValueError:
        want = {"float": "a number", "int": "a whole number", "classes": "a class list such as 0-4 or 0,2,4"}[d.value]
        raise DerivationError(f"Dataset '{full}': '{d.name}={raw}' needs {want}.") from None
    complaint = d.check(value) if d.check else None
    if complaint:
        raise DerivationError(f"Dataset '{full}': '{d.name}={raw}' is out of range: {complaint}.")
    return value


def parse_class_list(text: str) -> Tuple[int, ...]:
    """``0-4`` -> (0, 1, 2, 3, 4); ``0,2,4`` -> (0, 2, 4); mixed ``0-2,7`` works too. Raises ValueError."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(p) for p in part.split("-", 1))
            if hi < lo:
                raise ValueError(text)
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise ValueError(text)
    return tuple(sorted(out))


def _token(segment: str) -> Tuple[str, Optional[str]]:
    name, _, raw = segment.partition("=")
    return name.strip().lower(), (raw.strip() if "=" in segment else None)


def split_name(full: str) -> Tuple[str, List[Step]]:
    """``'fmnist:classes=0-4:hflip'`` -> (``'fmnist'``, [classes (0..4), hflip]). Trailing ``:segments`` that
    name a registered derivation are steps; the rest is the base. ``manifold:`` names have no derivations."""
    if full.startswith("manifold:"):
        return full, []
    parts = full.split(":")
    steps: List[Step] = []
    while len(parts) > 1 and _token(parts[-1])[0] in DERIVATIONS:
        name, raw = _token(parts[-1])
        d = DERIVATIONS[name]
        steps.insert(0, Step(d, _read_value(d, raw, full), parts[-1]))
        parts.pop()
    return ":".join(parts), steps


def is_derived(full: str) -> bool:
    return bool(split_name(full)[1])


def unknown_step_message(full: str, base_names: List[str]) -> Optional[str]:
    """One sentence when ``full`` looks like ``<registered base>:<something unknown>``, else None."""
    head, _, rest = full.partition(":")
    if head.lower() not in base_names or not rest:
        return None
    bad = _token(rest.split(":")[0])[0]
    return (f"Unknown derivation '{bad}' in dataset '{full}': use one of {', '.join(sorted(DERIVATIONS))} "
            f"(`python -m genood.data derived` lists them with what each tests).")


def group_of(full: str) -> str:
    """The suite group a dataset falls in by default: its last derivation's group, ``real`` without one."""
    steps = split_name(full)[1]
    return steps[-1].derivation.group if steps else "real"


def severity(full: str) -> Optional[Tuple[str, float]]:
    """(``<base>:<derivation>``, strength) when the last step has a numeric value (a point on a severity
    curve), else None."""
    base, steps = split_name(full)
    if not steps or steps[-1].derivation.value not in ("float", "int"):
        return None
    prefix = ":".join([base] + [s.text for s in steps[:-1]] + [steps[-1].derivation.name])
    return prefix, float(steps[-1].value)


def seeded_rng(full: str, split: str, step: int) -> np.random.Generator:
    """The generator a derivation draws from: seeded by the set's full name, the split and the step's place."""
    digest = hashlib.sha256(f"{full}|{split}|{step}".encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


def apply(full: str, steps: List[Step], split: str, images: np.ndarray, labels: Optional[np.ndarray]):
    """Apply ``steps`` in order to the base's ``split`` (uint8 (N,H,W,C)); returns (images, labels)."""
    if images.ndim != 4:
        raise DerivationError(f"Dataset '{full}': derivations work on images, and its base holds vectors.")
    for i, step in enumerate(steps):
        try:
            images, labels = step.derivation.fn(images, labels, step.value, seeded_rng(full, split, i))
        except DerivationError as exc:
            raise DerivationError(f"Dataset '{full}': {exc}") from None
        images = np.ascontiguousarray(images, dtype=np.uint8)
    return images, labels


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clip to [0, 255]: a derived image is stored data again."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def describe() -> List[Dict[str, str]]:
    """Every registered derivation: name, group, value kind, default and what it tests."""
    return [{"name": d.name, "group": d.group, "value": d.value, "default": "" if d.default is None else str(d.default),
             "description": d.description} for d in sorted(DERIVATIONS.values(), key=lambda d: (GROUPS.index(d.group), d.name))]
