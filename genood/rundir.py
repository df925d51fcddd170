"""The run directory contract and atomic file writes.

``<runs_root>/<sweep-id or 'single'>/<run-name>/`` holds config.yaml, checkpoint.pt,
scores.parquet, metrics.json, figures/ and run.log. Every file is written to a temporary
name in the same folder and renamed into place, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

from genood.paths import PROJECT_ROOT

_UMASK = os.umask(0)
os.umask(_UMASK)


def runs_root(cfg: Dict[str, Any]) -> Path:
    """``run.runs_root`` as an absolute path (relative paths are taken from the project root)."""
    root = Path(os.path.expanduser(str(cfg["run"]["runs_root"])))
    return root if root.is_absolute() else PROJECT_ROOT / root


def run_dir(cfg: Dict[str, Any], name: str) -> Path:
    """The directory of one run, created if needed."""
    path = runs_root(cfg) / str(cfg["run"]["sweep_id"]) / name
    (path / "figures").mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def open_run_log(directory: Path, name: str = "ood") -> logging.Logger:
    """A logger writing to ``<dir>/run.log`` (appending, so resumed runs keep their history)."""
    logger = logging.getLogger(f"run.{directory}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    target = str(directory / "run.log")
    if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


TRACKED_PACKAGES = ("torch", "nflows", "numpy", "scipy", "pandas", "pyarrow", "wandb", "plotly", "sweeps")


def provenance(data_checksums: Dict[str, str]) -> Dict[str, Any]:
    """What makes a number traceable: git commit and dirty flag, package versions, data file checksums."""
    import subprocess
    from importlib import metadata

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "packages": versions, "data_files": data_checksums}
