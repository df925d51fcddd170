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
    # hooks whose value is not a number: (training config, training images) -> the bound value, or None when off
    prepare: Optional[Callable[[Dict[str, Any], torch.Tensor], Any]] = None
    # a loss term of its own data: (model, value, step, seed, device) -> loss term (in the loss's units)
    term: Optional[Callable[..., torch.Tensor]] = None


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

    def term(self, model: torch.nn.Module, step: int, seed: int, device):
        return self.hook.term(model, self.value, step, seed, device) if self.hook.term else 0.0


def active_hooks(tcfg: Dict[str, Any], images: torch.Tensor) -> List[BoundHook]:
    """The hooks ``tcfg`` turns on (a non-zero value), checked against the training images."""
    bound = []
    for key, hook in HOOKS.items():
        value = hook.prepare(tcfg, images) if hook.prepare else float(tcfg.get(key) or 0.0)
        if value is None or (not hook.prepare and not value):
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


# --- negative training (seed 003, Appendix B) --------------------------------------------------------------------
@dataclass
class NegativeSet:
    """The training OOD set of negative training and its settings."""
    name: str
    images: torch.Tensor        # uint8 (N, C, H, W), the training images' shape
    floor: float                # training.negative_val: log p(x_ood) is pushed down to this (nats per image)
    weight: float               # training.negative_weight
    batch_size: int


def _negative_set(tcfg: Dict[str, Any], images: torch.Tensor) -> Optional[NegativeSet]:
    name = tcfg.get("negative_ood")
    if not name:
        return None
    from genood.data.registry import load_split
    from genood.data.transforms import match_shape

    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("training.negative_ood pushes down the likelihood of an image set; this dataset holds vectors: "
                         "set it to null.")
    found = load_split(str(name), "train")
    shape = tuple(images.shape[1:])
    ood = torch.from_numpy(match_shape(found.images, shape)).permute(0, 3, 1, 2).contiguous()
    return NegativeSet(str(name), ood, float(tcfg["negative_val"]), float(tcfg["negative_weight"]),
                       int(tcfg["batch_size"]))


def _negative_term(model: torch.nn.Module, neg: NegativeSet, step: int, seed: int, device) -> torch.Tensor:
    """weight * mean over an OOD batch of max(0, log p(x_ood) - floor), in bits/dim like the flows' loss: zero
    once the set's likelihood is at the floor. The batch is a pure function of (seed, step)."""
    from genood.data.transforms import dequantize_uniform

    gen = torch.Generator().manual_seed(seed * 1_000_003 + step + 0x4E47)
    idx = torch.randint(0, neg.images.shape[0], (neg.batch_size,), generator=gen)
    x = dequantize_uniform(neg.images[idx].float(), gen).to(device)
    dim = int(x[0].numel())
    return neg.weight * torch.relu(model.log_prob(x) - neg.floor).mean() / (dim * math.log(2.0))


register_hook(TrainingHook("negative_ood", prepare=_negative_set, term=_negative_term))  # seed 003's negative training
