"""Intra-op CPU threads of a run: the machine's cores shared among the agents running on it.

Two agents on a two-core machine that each start torch's default (one thread per core) run four threads on two
cores and both slow down. Every agent therefore registers itself while it runs (:func:`agent_presence`: a file
named by its pid in a folder of this host), and a run that does not set ``run.num_threads`` takes
``cores // live agents`` threads (at least one). A process that is no agent (``train.py``, ``main_ood.py``, a
notebook) counts itself beside the agents; with no agent on the host it keeps torch's default.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

__all__ = ["AGENTS_DIR_ENV", "agents_dir", "available_cores", "live_agents", "agent_presence", "threads_for",
           "apply_threads"]

AGENTS_DIR_ENV = "GENOOD_AGENTS_DIR"


def agents_dir() -> Path:
    """The folder of this host where running agents leave their pid files (``$GENOOD_AGENTS_DIR`` overrides)."""
    return Path(os.environ.get(AGENTS_DIR_ENV) or Path(tempfile.gettempdir()) / f"genood-agents-{os.getuid()}")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm allocation), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def live_agents(directory: Optional[Path] = None) -> int:
    """How many registered agents of this host are alive (files of dead ones are removed)."""
    directory = Path(directory or agents_dir())
    count = 0
    for path in directory.glob("*.pid") if directory.is_dir() else ():
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if _alive(pid):
            count += 1
        else:
            path.unlink(missing_ok=True)
    return count


@contextlib.contextmanager
def agent_presence(directory: Optional[Path] = None) -> Iterator[Path]:
    """Register this process as an agent of this host while the block runs."""
    directory = Path(directory or agents_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.pid"
    path.write_text(str(os.getpid()))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _registered(directory: Path) -> bool:
    return (directory / f"{os.getpid()}.pid").exists()


def threads_for(requested: Optional[int], cores: Optional[int] = None, agents: Optional[int] = None) -> Optional[int]:
    """Intra-op threads: ``requested`` when given; else, with agents running on this host, this process's share
    ``cores // processes`` (at least 1; a process that is no agent counts itself beside them); else None (torch's
    own default: one thread per core)."""
    if requested:
        return int(requested)
    if agents is None:
        directory = agents_dir()
        agents = live_agents(directory)
        if agents == 0:
            return None
        agents += 0 if _registered(directory) else 1
    cores = available_cores() if cores is None else int(cores)
    return max(1, cores // max(1, int(agents)))


def apply_threads(cfg: Dict[str, Any], log=None) -> int:
    """Set torch's intra-op threads for the run ``cfg`` (``run.num_threads``, else this process's share of the
    cores among the agents of this host); returns the threads in use."""
    import torch

    n = threads_for(cfg["run"].get("num_threads"))
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
        if log is not None:
            why = "run.num_threads" if cfg["run"].get("num_threads") else f"{available_cores()} cores shared by the agents on this host"
            log(f"cpu threads: {n} ({why})")
    return torch.get_num_threads()
