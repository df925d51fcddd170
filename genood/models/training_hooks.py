"""Changes to the training objective that a ``training.*`` key switches on, one registered hook per key.

The one training loop (:func:`genood.models.training.train`) knows none of them by name: it asks this
registry which hooks the configuration turns on, lets each transform the batch before dequantization and
add a penalty to the loss. Ren et al.'s background model for the likelihood ratio is the use today
(mutated inputs, an L2 weight penalty).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from genood.data.transforms import mutate
from genood.registry import Registry

__all__ = ["TrainingHook", "HOOKS", "register_hook", "active_hooks"]


@dataclass(frozen=True)
class TrainingHook:
    key: str                                                   # the training.<key> that switches it on (non-zero)
    batch: Optional[Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = None  # stored batch -> batch
    penalty: Optional[Callable[[torch.nn.Module, float, int], torch.Tensor]] = None        # (model, value, D) -> loss term
    check: Optional[Callable[[torch.Tensor, float], Optional[str]]] = None                # (images, value) -> complaint


HOOKS: Registry[TrainingHook] = Registry("training hook", modules=(__name__,))


def register_hook(hook: TrainingHook) -> TrainingHook:
    return HOOKS.add(hook.key, hook, __name__ if hook.batch is None and hook.penalty is None
                     else (hook.batch or hook.penalty).__module__)


class BoundHook:
    """A hook with its configured value."""

    def __init__(self, hook: TrainingHook, value: float):
        self.hook, self.value = hook, value

    def batch(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.hook.batch(batch, self.value, gen) if self.hook.batch else batch

    def penalty(self, model: torch.nn.Module, dim: int):
        return self.hook.penalty(model, self.value, dim) if self.hook.penalty else 0.0


def active_hooks(tcfg: Dict[str, Any], images: torch.Tensor) -> List[BoundHook]:
    """The hooks ``tcfg`` turns on (a non-zero value), checked against the training images."""
    bound = []
    for key, hook in HOOKS.items():
        value = float(tcfg.get(key) or 0.0)
        if not value:
            continue
        complaint = hook.check(images, value) if hook.check else None
        if complaint:
            raise ValueError(complaint)
        bound.append(BoundHook(hook, value))
    return bound


def _mutate(batch: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    return mutate(batch, rate, gen)


def _only_images(images: torch.Tensor, rate: float) -> Optional[str]:
    if images.dtype != torch.uint8:
        return "training.mutation_rate perturbs 8-bit images; this dataset holds real-valued vectors: set it to 0."
    return None


def _l2(model: torch.nn.Module, lam: float, dim: int) -> torch.Tensor:
    # lambda * |theta|^2 / 2 per image in nats, in the loss's per-dimension bits
    return lam * 0.5 * sum(p.pow(2).sum() for p in model.parameters()) / (dim * math.log(2.0))


register_hook(TrainingHook("mutation_rate", batch=_mutate, check=_only_images))  # Ren et al.'s perturbed inputs
register_hook(TrainingHook("l2_penalty", penalty=_l2))                            # Ren et al.'s weight decay in the loss
