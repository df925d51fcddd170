"""Where a sweep's finished runs are: the run directories of a local sweep (from its store) or of a W&B sweep
(downloaded), for ``sweep.py aggregate``/``report`` and :func:`genood.api.open_sweep` alike."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from genood.orchestration.store import LOCAL_PREFIX, open_store, store_locator

__all__ = ["local_sweep", "sweep_run_dirs"]


def local_sweep(store, sweep_id: str):
    """The local sweep ``sweep_id`` of ``store``; a KeyError in one sentence when the store has no such sweep."""
    sweep = store.sweep(sweep_id)
    if sweep is None:
        raise KeyError(f"Sweep '{sweep_id}' is not in {store.describe()}; check the id, or --runs-root / OOD_RUNS_ROOT "
                       f"and --store / OOD_SWEEP_STORE.")
    return sweep


def sweep_run_dirs(runs_root: Path, sweep_id: str, store: Optional[str] = None) -> Tuple[List[Path], int, Path]:
    """(finished run directories, how many runs are not finished, the sweep's output folder) of ``sweep_id``:
    a local sweep (``local-...``) from its store (``store``, ``$OOD_SWEEP_STORE`` or the runs root's SQLite file),
    else a W&B sweep ``entity/project/id``. An unknown local sweep is a KeyError in one sentence."""
    out = Path(runs_root) / sweep_id.replace("/", "_")
    if sweep_id.startswith(LOCAL_PREFIX):
        opened = open_store(store_locator(runs_root, store), runs_root=runs_root)
        local_sweep(opened, sweep_id)
        runs = opened.runs(sweep_id)
        return ([Path(r["run_dir"]) for r in runs if r["status"] == "finished" and r["run_dir"]],
                sum(r["status"] != "finished" for r in runs), out)
    from genood.orchestration import wandb_backend
    return wandb_backend.download_runs(sweep_id, out), 0, out
