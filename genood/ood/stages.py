"""Resumable, cached per-split work shared by the runner and the score stages.

Expensive per-point work (Jacobian spectra, ODE likelihoods, FLIPD traces, score batches) runs in
blocks; after every block the results so far are written atomically to a cache file keyed by a
fingerprint of the model's parameters, the points and the settings. A killed run rerun with the
same configuration continues from the last finished block and ends with the same numbers; a
changed model, data or setting recomputes. A ``shared`` file (``<runs_root>/<stage>_cache``) lets
other runs with the same model and points reuse complete results.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch


def model_digest(model) -> bytes:
    """sha256 of a model's state dict (names and values)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def fingerprint(model_digest: bytes, x: torch.Tensor, settings: str) -> str:
    """Hex key of (settings, model, points): what a cached result is valid for."""
    h = hashlib.sha256(settings.encode())
    h.update(model_digest)
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_matching(path: Path, fingerprint: str, log: Callable[[str], None], stage: str = "lid") -> Dict[str, np.ndarray]:
    """The arrays saved in ``path`` if it holds results for ``fingerprint``, else {} (saying why)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) == fingerprint:
                return {k: f[k] for k in f.files if k != "fingerprint"}
        log(f"{stage}: {path} belongs to another model, data or setting; not used")
    except Exception as exc:  # damaged (truncated zip, bad header, missing key): recompute, never trust it
        log(f"{stage}: {path} is unreadable ({type(exc).__name__}); not used")
    return {}


def _save(path: Path, fingerprint: str, arrays: Dict[str, np.ndarray]) -> None:
    from genood.rundir import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, fingerprint=np.array(fingerprint), **arrays)
    atomic_write(path, write)


def resumable_blocks(compute: Callable[[torch.Tensor, int], Dict[str, np.ndarray]], x: torch.Tensor, block: int,
            cache: Optional[Path], shared: Optional[Path], fingerprint: str, progress: Callable[[int], None],
            log: Callable[[str], None], label: str, stage: str = "lid") -> Dict[str, np.ndarray]:
    """``compute(x[s:s+block], s)`` for every block, starting from whichever of ``cache`` (this run's
    file) and ``shared`` (the store other runs read) holds the most points for ``fingerprint``. Progress
    goes to ``cache`` after every block; at the end both files hold the complete result."""
    done: Dict[str, List[np.ndarray]] = {}
    start, origin = 0, None
    for path in (cache, shared):
        if path is not None and path.exists():
            got = _load_matching(path, fingerprint, log, stage)
            n = len(next(iter(got.values()))) if got else 0
            if n > start:
                done, start, origin = {k: [v] for k, v in got.items()}, n, path
    if start:
        verb = "resuming" if origin == cache else "reusing"
        log(f"{stage}: {verb} {label} from {start}/{x.shape[0]} points saved in {origin}")
        progress(start)
    for s in range(start, x.shape[0], block):
        out = compute(x[s:s + block], s)
        for k, v in out.items():
            done.setdefault(k, []).append(v)
        if cache is not None:
            done = {k: [np.concatenate(v)] for k, v in done.items()}
            _save(cache, fingerprint, {k: v[0] for k, v in done.items()})
        progress(min(block, x.shape[0] - s))
    result = {k: np.concatenate(v) for k, v in done.items()}
    for path in (cache, shared):
        if path is not None and path != origin and not (path == cache and start < x.shape[0]):
            _save(path, fingerprint, result)  # complete here: keep a copy / publish for other runs
    return result


