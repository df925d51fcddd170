"""Rules that tie several model keys together, declared by name in a family's spec file (``config_checks:``)
and applied by :func:`genood.runconfig.resolve` to the resolved ``model`` section, so a configuration the builder
could not build is refused in one sentence before anything is written. Torch-free, like the spec files.

Each rule takes the model section and raises ConfigError naming the key; the per-key types, ranges and choices
are the spec's ``types``/``ranges``/``choices``, these are only what no single key can say."""
from __future__ import annotations

from typing import Any, Callable, Dict

from genood.errors import ConfigError

__all__ = ["MODEL_CHECKS"]


def _int_list(model: Dict[str, Any], key: str, lo: int, hi: int, *, odd: bool = False, empty: bool = False) -> list:
    value = model[key]
    ok = isinstance(value, list) and (empty or value) and all(
        isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi and (not odd or v % 2 == 1) for v in value)
    if not ok:
        kind = "odd integers" if odd else "integers"
        raise ConfigError(f"Config key 'model.{key}' must be a {'' if empty else 'non-empty '}list of {kind} in "
                          f"[{lo}, {hi}], got {value!r}.")
    return value


def _per_layer_lists(model: Dict[str, Any]) -> None:
    """hvae: one latent size, kind, kernel (odd, so a block keeps its map's size) and stride per stochastic layer."""
    n = len(_int_list(model, "latents", 1, 4096))
    _int_list(model, "kernels", 1, 31, odd=True)
    _int_list(model, "strides", 1, 8)
    kinds = model["latent_kinds"]
    if not isinstance(kinds, list) or any(k not in ("conv", "dense") for k in kinds):
        raise ConfigError(f"Config key 'model.latent_kinds' must be a list of 'conv' and 'dense', got {kinds!r}.")
    for key in ("latent_kinds", "kernels", "strides"):
        if len(model[key]) != n:
            raise ConfigError(f"Config key 'model.{key}' has {len(model[key])} entries but model.latents has {n}: "
                              f"give one per stochastic layer.")


def _unet_levels(model: Dict[str, Any]) -> None:
    """diffusion: channels per level, each divisible by the GroupNorm groups; attention empty or one bool a level."""
    channels = _int_list(model, "channels", 1, 4096)
    groups = model["norm_groups"]
    if model["network"] == "unet" and any(c % groups for c in channels):
        raise ConfigError(f"Config key 'model.channels' must hold multiples of model.norm_groups ({groups}), "
                          f"got {channels!r}.")
    attention = model["attention"]
    if not isinstance(attention, list) or any(not isinstance(a, bool) for a in attention) or \
            len(attention) not in (0, len(channels)):
        raise ConfigError(f"Config key 'model.attention' must be [] or one true/false per entry of model.channels "
                          f"({len(channels)}), got {attention!r}.")


MODEL_CHECKS: Dict[str, Callable[[Dict[str, Any]], None]] = {"per_layer_lists": _per_layer_lists,
                                                             "unet_levels": _unet_levels}
