"""Numeric precision of training: which dtype the networks run in, and what stays float32.

``training.precision`` is one of :data:`PRECISIONS`:

* ``fp32``: everything in float32 (what scoring always uses unless ``ood.precision`` says otherwise);
* ``bf16``: the networks run under ``torch.autocast`` in bfloat16 (CPU or CUDA);
* ``fp16``: the same in float16, CUDA only, with a gradient scaler (float16's range is too small for unscaled
  gradients); refused on a CPU;
* ``auto``: bf16 where the hardware computes it natively (AMX or AVX-512 BF16 on a CPU, compute capability
  >= 8.0 on CUDA), else fp32. A family whose training bf16 hurts says so in its spec (``auto_precision: fp32``)
  and ``auto`` keeps float32 for it.

What stays float32 under autocast: the master weights and the optimizer state (autocast never changes a
parameter), and every sum of many log-terms: a function decorated with :func:`exact` (log-densities, KL terms,
DLML and Bernoulli log-likelihoods, ...) runs with autocast off and its reduced-precision tensor arguments cast
to float32, and a network registered with :func:`network` hands float32 outputs to whatever follows it (a
flow's coupling parameters feed its log-determinant). Outside autocast both are the identity: scoring in fp32 is
bit-identical to code without them.

A checkpoint of a bf16-trained model is an ordinary float32 checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import types
from typing import Any, Callable, Optional

import torch

from genood.runconfig import CORE_CHOICES, ConfigError

__all__ = ["PRECISIONS", "PrecisionError", "native_bf16", "resolve", "autocast", "exact", "exact_module", "network", "is_network",
           "dtype_name", "grad_scaler", "reduced_active"]

PRECISIONS = CORE_CHOICES["training.precision"]  # fp32, bf16, fp16, auto
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_REDUCED = (torch.bfloat16, torch.float16)


class PrecisionError(ConfigError):
    """A precision that this device cannot run (one sentence)."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: AMX or AVX-512 BF16 on a CPU, compute capability >= 8.0 on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(bool(p()) for p in probes if p is not None)
    return False


def resolve(name: str, device: torch.device, family_auto: str = "bf16") -> Optional[torch.dtype]:
    """The autocast dtype of precision ``name`` on ``device`` (None: plain float32).

    ``family_auto`` is what ``auto`` means for the model family when the hardware has native bf16
    (``fp32`` for a family whose training bf16 measurably hurts). Raises :class:`PrecisionError` in one
    sentence for fp16 on a CPU or an unknown name.
    """
    device = torch.device(device)
    if name not in PRECISIONS:
        raise PrecisionError(f"Precision {name!r} is not one of {', '.join(PRECISIONS)}.")
    if name == "auto":
        return torch.bfloat16 if family_auto == "bf16" and native_bf16(device) else None
    if name == "fp16" and device.type != "cuda":
        raise PrecisionError(f"Precision 'fp16' needs a CUDA device (float16 training relies on a gradient scaler "
                             f"and CUDA kernels); this run trains on {device.type}: use bf16, auto or fp32.")
    return _DTYPES.get(name)


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a resolved autocast dtype (None is fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """The autocast region of a training step (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(dtype: Optional[torch.dtype]):
    """A gradient scaler for fp16 (CUDA only, see :func:`resolve`), else None (bf16 has float32's range and needs
    none)."""
    if dtype is torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def reduced_active() -> bool:
    """Whether an autocast region is active on the CPU or CUDA (then :func:`exact` does its work)."""
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _REDUCED:
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    if isinstance(value, list):
        return [_to_fp32(v) for v in value]
    return value


@contextlib.contextmanager
def _autocast_off():
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            if torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def exact(fn: Callable) -> Callable:
    """Decorator: ``fn`` (a sum of log-terms, a KL, a likelihood) always computes in float32.

    Inside an autocast region its reduced-precision tensor arguments are cast to float32 and autocast is off
    while it runs; outside one it is called as is (bit-identical).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not reduced_active():
            return fn(*args, **kwargs)
        with _autocast_off():
            return fn(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})
    wrapper._genood_exact = True
    return wrapper


@exact
def _exact_forward(self, *args, **kwargs):
    return self._genood_exact_inner(*args, **kwargs)


def exact_module(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``module``'s forward exact (see :func:`exact`): for layers on a flow's data path (invertible 1x1
    convolutions), whose outputs are the data itself. Its state dict is unchanged. Returns the module."""
    if getattr(module, "_genood_exact_inner", None) is None:
        module._genood_exact_inner = module.forward
        module.forward = types.MethodType(_exact_forward, module)
    return module


def _fp32_outputs(module, inputs, output):
    if not reduced_active():
        return None
    return _to_fp32(output)


def network(module: torch.nn.Module, cast_outputs: bool = True) -> torch.nn.Module:
    """Mark ``module`` as a network that runs in the training precision (its convolutions and matrix products
    under autocast). With ``cast_outputs`` (the default) its outputs reach the rest of the model as float32:
    for networks whose outputs enter log-determinants or log-likelihoods. Returns the module."""
    if not getattr(module, "_genood_network", False):
        module._genood_network = True
        if cast_outputs:
            module.register_forward_hook(_fp32_outputs)
    return module


def is_network(module: torch.nn.Module) -> bool:
    """Whether ``module`` was marked with :func:`network`."""
    return bool(getattr(module, "_genood_network", False))
