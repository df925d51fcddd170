"""Input complexity (Serra et al. 2020): S(x) = -log2 p(x) - L(x), per dimension.

L(x) is the length in bits of the stored 8-bit image under the best of several lossless codecs
(``complexity.codecs``: PNG, JPEG 2000 and JPEG XL through imagecodecs, plus zlib on the raw bytes), each
file's own header included. -log2 p(x) is the model's code length of the same image (its density on
[0,256)^D is the probability of the image's unit bin up to dequantization), so S is the model's
excess over a generic compressor: large S means the model finds the image harder than its
complexity explains, so S is oriented with higher = more OOD. Works for every family with ``log_prob``
on images; vectors have no codec.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import numpy as np
import torch

from genood.ood.scores import ScoreUnavailable, register
from genood.ood.scores.likelihood import _log_prob


def _codecs(cfg: Dict) -> Dict[str, Callable[[np.ndarray], int]]:
    import imagecodecs

    ccfg = cfg.get("complexity", {})
    effort = int(ccfg.get("jpegxl_effort", 7))
    squeeze = lambda a: a[..., 0] if a.shape[-1] == 1 else a  # (H,W,1) -> (H,W): greyscale as such
    return {
        "png": lambda a: len(imagecodecs.png_encode(squeeze(a), level=9)),
        "jpeg2000": lambda a: len(imagecodecs.jpeg2k_encode(squeeze(a), level=0, reversible=True)),
        "jpegxl": lambda a: len(imagecodecs.jpegxl_encode(squeeze(a), lossless=True, effort=effort)),
        "zlib": lambda a: len(imagecodecs.zlib_encode(np.ascontiguousarray(a).tobytes(), level=9)),
    }


CODECS = ("png", "jpeg2000", "jpegxl", "zlib")


def stored_images(x: torch.Tensor) -> np.ndarray:
    """The stored uint8 images (B,H,W,C) behind dequantized data x (B,C,H,W) in [0,256)."""
    if x.dim() != 4:
        raise ScoreUnavailable("Score 'complexity' (ood.scores) needs images (B,C,H,W); this dataset holds vectors, "
                               "which no image codec compresses: drop 'complexity' from ood.scores.")
    return x.detach().floor().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def cached_compressed_bits(x: torch.Tensor, cache: dict) -> np.ndarray:
    """:func:`compressed_bits` of a batch's stored images over ``complexity.codecs``, once per batch (the
    complexity score and the codec-length baseline share it through the per-batch ``cache``)."""
    if "codec_bits" not in cache:
        cfg = cache.get("cfg", {})
        codecs = list(cfg.get("complexity", {}).get("codecs", CODECS))
        cache["codec_bits"] = compressed_bits(stored_images(x), codecs, cfg)
    return cache["codec_bits"]


def compressed_bits(images: np.ndarray, codecs: List[str], cfg: Dict) -> np.ndarray:
    """(B,) min over ``codecs`` of the encoded length in bits of each uint8 image (H,W,C)."""
    table = _codecs(cfg)
    unknown = [c for c in codecs if c not in table]
    if unknown:
        raise ScoreUnavailable(f"complexity.codecs has unknown codec(s) {unknown}: use some of {', '.join(CODECS)}.")
    return np.array([8 * min(table[c](img) for c in codecs) for img in images], dtype=np.float64)


@register("complexity", higher_is_in=False, unit="bits/dim",
          description="(-log2 p(x) - L(x)) / D, L the best lossless codec's length of the stored image (Serra et al.); "
                      "higher = more OOD, so detection uses its negative", needs=("log_prob",))
def complexity(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    bits = cached_compressed_bits(x, cache)
    nll_bits = -_log_prob(model, x, cache).double().cpu() / math.log(2.0)
    return ((nll_bits - torch.from_numpy(bits)) / x[0].numel()).to(x.device)


@register("codec_bits_per_dim", higher_is_in=False, unit="bits/dim",
          description="L(x) / D alone: the best lossless codec's length of the stored image (no model); "
                      "higher = more complex", needs=(), model_free=True)
def codec_bits_per_dim(model, x: torch.Tensor, cache: dict) -> torch.Tensor:
    return (torch.from_numpy(cached_compressed_bits(x, cache)) / x[0].numel()).to(x.device)
