"""Model families by name: ``model.family`` -> the builder its spec file names.

Families are declared in spec files beside their code (``models/<module>.yaml``, read by
:mod:`runconfig` without importing torch); the builder is imported only when a model is built.
A new family is one module plus its spec file and presets; nothing here changes.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Tuple

from genood import runconfig

__all__ = ["model_class", "builder", "build_model"]
def _import(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def model_class(family: str) -> type:
    """The class of ``family``'s models: its methods and class attributes are the family's capabilities."""
    from genood.models.base import check_family

    spec = runconfig.family_spec(family)
    cls = _import(spec.model_class)
    check_family(cls, family, spec.source)
    return cls


def builder(family: str) -> Callable[[Tuple[int, ...], Dict[str, Any]], Any]:
    """The function ``(shape, model_cfg) -> nn.Module`` of ``family``."""
    return _import(runconfig.family_spec(family).builder)


def build_model(shape: Tuple[int, ...], model_cfg: Dict[str, Any]):
    """Build the model ``model_cfg['family']`` for data of ``shape`` ((C,H,W) images or (D,) vectors)."""
    family = model_cfg.get("family", "flow")
    model_class(family)  # checks the family's class against the protocol
    return builder(family)(tuple(shape), model_cfg)
