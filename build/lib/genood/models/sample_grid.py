"""Save model samples (or any uint8 images) as one grid PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from genood.rundir import atomic_write


def samples_to_uint8(x) -> np.ndarray:
    """Samples (N,C,H,W) in data space [0,256) -> uint8 (N,H,W,C), by flooring."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.clip(np.floor(arr), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, path: Path, ncol: int | None = None, pad: int = 2, scale: int = 2) -> Path:
    """Save uint8 images (N,H,W,C) as a grid PNG (white gutters, nearest-neighbour upscaling)."""
    from PIL import Image

    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = images[i]
    im = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    atomic_write(path, lambda p: im.save(p, format="PNG"))
    return path
