"""Model families by name: ``model.family`` -> the builder its spec file names.

Families are declared in spec files beside their code (``models/<module>.yaml``, read by
:mod:`runconfig` without importing torch); the builder is imported only when a model is built.
A new family is one module plus its spec file and presets; nothing here changes.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Tuple

import runconfig


def builder(family: str) -> Callable[[Tuple[int, ...], Dict[str, Any]], Any]:
    """The function ``(shape, model_cfg) -> nn.Module`` of ``family``."""
    spec = runconfig.family_spec(family)
    module, _, name = spec.builder.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(shape: Tuple[int, ...], model_cfg: Dict[str, Any]):
    """Build the model ``model_cfg['family']`` for data of ``shape`` ((C,H,W) images or (D,) vectors)."""
    return builder(model_cfg.get("family", "flow"))(tuple(shape), model_cfg)
