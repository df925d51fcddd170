"""Damaged run files: what ``aggregate`` and ``report`` check before they read a finished run.

Every file a run writes goes through :func:`rundir.atomic_write`, so a crash never leaves half a file;
what can still happen is damage from outside (a copy cut short, a full disk on another tool's side, a
file truncated by hand). :func:`damaged_files` finds it cheaply, without loading the data: metrics.json
and config.yaml must parse, a parquet table must have its footer (``pyarrow.parquet.read_metadata``), and
a checkpoint or an ``.npz`` cache (zip archives, as torch and numpy write them) must have its central
directory with every member's declared size in place. :func:`split_intact` keeps the runs that pass and
says, for each one that does not, which file is damaged and the command that recomputes it.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

__all__ = ["file_problem", "damaged_files", "split_intact", "rerun_sentence"]

_SUBFOLDERS_SCANNED = 2  # lid_spectra/<split>.npz, score_blocks/<key>.npz, likelihood-ratio caches/<tag>/<split>.npz


def _zip_problem(path: Path) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"member {info.filename} is cut short"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"not a complete archive: {type(exc).__name__}"
    return None


def file_problem(path: Path) -> Optional[str]:
    name = path.name
    try:
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith((".yaml", ".yml")):
            import yaml
            yaml.safe_load(path.read_text())
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq
            pq.read_metadata(path)
        elif name.endswith((".pt", ".npz")):
            return _zip_problem(path)
    except Exception as exc:  # any parse failure is damage
        first = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
        return f"{type(exc).__name__}{': ' + first if first else ''}"
    return None


def _candidates(directory: Path) -> Iterable[Path]:
    suffixes = (".json", ".yaml", ".parquet", ".pt", ".npz")
    level = [directory]
    for depth in range(_SUBFOLDERS_SCANNED + 1):
        nxt = []
        for folder in level:
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.name.startswith("."):  # a temporary file of an atomic write in progress
                    continue
                if path.is_dir():
                    if depth < _SUBFOLDERS_SCANNED and path.name not in ("figures", "wandb", "slurm", "agents"):
                        nxt.append(path)
                elif path.suffix in suffixes:
                    yield path
        level = nxt


def damaged_files(directory: Path) -> List[Tuple[Path, str]]:
    """(file, what is wrong) for every damaged file of a run directory; [] when it is intact."""
    return [(path, problem) for path in _candidates(Path(directory)) if (problem := file_problem(path)) is not None]


def rerun_sentence(directory: Path, path: Path, problem: str) -> str:
    directory = Path(directory)
    return (f"Skipped run {directory.name}: {path} is damaged ({problem}); recompute it with "
            f"`python sweep.py rerun {directory.parent.name} {directory.name}` and an agent "
            f"(`python sweep.py agent {directory.parent.name}`).")


def split_intact(directories: Iterable[Path], say: Callable[[str], None] = print) -> Tuple[List[Path], List[Path]]:
    """(intact run directories, damaged ones); one sentence per damaged run through ``say``."""
    intact, damaged = [], []
    for directory in directories:
        problems = damaged_files(Path(directory)) if Path(directory).is_dir() else []
        if problems:
            damaged.append(Path(directory))
            say(rerun_sentence(Path(directory), *problems[0]))
        else:
            intact.append(Path(directory))
    return intact, damaged
