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
import threading
from pathlib import Path
from typing import Any, Callable, Dict

from genood.paths import PROJECT_ROOT, check_component, confined

__all__ = ["DiskFull", "disk_full_sentence", "runs_root", "run_dir", "allow_writes", "write_roots", "check_target", "atomic_write", "write_text", "write_json", "open_run_log", "TRACKED_PACKAGES",
           "provenance", "RunLocked", "RunLock", "run_lock"]

_UMASK = os.umask(0)
os.umask(_UMASK)


class DiskFull(OSError):
    """A write failed because the file system is full (ENOSPC); the message names the file."""

    def __str__(self) -> str:
        return self.strerror if self.strerror else str(self.args[0] if self.args else "")


def disk_full_sentence(exc: OSError, path: Any = None) -> str:
    """One sentence for an ENOSPC error: which file could not be written, on which file system."""
    target = Path(path or exc.filename or "?")
    where = target.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
        free = f" ({st.f_bavail * st.f_frsize / 2**20:.1f} MiB free of {st.f_blocks * st.f_frsize / 2**20:.1f} MiB)"
    except OSError:
        free = ""
    return f"No space left on device writing {target}{free}."


# --- where files may be written -----------------------------------------------------------------------------------
# Every file this package writes goes through atomic_write, which refuses a target outside the write roots: the
# runs roots of the configurations in use (registered by runs_root), the project's zoo/, the data root, and folders the
# user named on a command line (allow_writes). A name from a configuration, a store or W&B that slipped past the
# component check (genood.paths.check_component) still cannot put a file anywhere else.
_WRITE_ROOTS: set = set()
_ROOTS_LOCK = threading.Lock()


def allow_writes(root: Path) -> Path:
    """Register ``root`` (resolved) as a folder files may be written under; returns it. For the runs root of a
    configuration and folders typed by the user (``--out``, ``--stats``), never for a name from elsewhere."""
    resolved = Path(os.path.expanduser(str(root))).resolve()
    with _ROOTS_LOCK:
        _WRITE_ROOTS.add(resolved)
    return resolved


def write_roots() -> list:
    """The folders files may be written under, resolved: the project's zoo/, the data root and every registered
    root."""
    with _ROOTS_LOCK:
        registered = set(_WRITE_ROOTS)
    from genood.data.registry import data_dir
    return sorted(registered | {(PROJECT_ROOT / "zoo").resolve(), data_dir().resolve()})


def check_target(path: Path) -> Path:
    """``path`` if it (resolved, symbolic links followed) lies under one of :func:`write_roots`, else UnsafeName."""
    resolved = Path(path).resolve()
    roots = write_roots()
    if not any(resolved == r or r in resolved.parents for r in roots):
        from genood.paths import UnsafeName, shown_path
        near = sorted(roots, key=lambda r: -len(os.path.commonpath([str(r), str(resolved)])))[:2]
        more = f" and {len(roots) - 2} more" if len(roots) > 2 else ""
        raise UnsafeName(f"Refusing to write {shown_path(Path(path))}: it lies outside the runs root and the folders "
                         f"this command may write to ({', '.join(shown_path(r) for r in near)}{more}); "
                         f"names must not lead out of them.")
    return resolved


def runs_root(cfg: Dict[str, Any]) -> Path:
    """``run.runs_root`` as an absolute path (relative paths are taken from the project root), registered as a
    folder files may be written under (:func:`allow_writes`)."""
    root = Path(os.path.expanduser(str(cfg["run"]["runs_root"])))
    root = root if root.is_absolute() else PROJECT_ROOT / root
    allow_writes(root)
    return root


def run_dir(cfg: Dict[str, Any], name: str) -> Path:
    """The directory of one run, created if needed. The sweep id and the run name are each one safe path
    component (:func:`genood.paths.check_component`) and the directory lies inside the runs root, or nothing is
    made (UnsafeName): names come from configurations, stores and W&B, i.e. from other machines."""
    root = runs_root(cfg)
    sweep = check_component(str(cfg["run"]["sweep_id"]), "sweep id (run.sweep_id)")
    path = root / sweep / check_component(str(name), "run name (run.name)")
    confined(root, path, "run directory")
    (path / "figures").mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``, which must lie under one of the
    :func:`write_roots` (UnsafeName otherwise, and nothing is written)."""
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        import errno
        cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC and not isinstance(exc, DiskFull):
            raise DiskFull(errno.ENOSPC, disk_full_sentence(cause, path), str(path)) from exc
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
    check_target(Path(directory) / "run.log")
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


class RunLocked(RuntimeError):
    """Another live process writes this run directory; phrased as one sentence."""


_HELD: Dict[str, "RunLock"] = {}


class RunLock:
    """One writer per run directory: ``<dir>/run.lock`` names the owner (host, pid, lease).

    The owner holds an exclusive ``flock`` on the file for as long as it lives (the kernel drops it when
    the process dies, however it dies) and renews a lease in the file from a heartbeat thread. A second
    process is refused while the flock is held, or while another host's lease is fresh (a flock is not
    seen across machines on every shared file system); a dead owner's flock and an expired lease are
    taken over. Re-entrant inside one process (training inside a scoring run takes the same lock).
    """

    def __init__(self, directory: Path, lease: float = 120.0):
        self.path = Path(directory) / "run.lock"
        self.lease = float(lease)
        self.depth = 0
        self._fd = None
        self._stop = None
        self._io = threading.Lock()  # the heartbeat never writes to a descriptor release() closed

    def _record(self) -> Dict[str, Any]:
        import socket
        import time
        return {"host": socket.gethostname(), "pid": os.getpid(), "since": self._since,
                "lease_until": time.time() + self.lease}

    def _refuse(self, owner: Dict[str, Any]) -> None:
        import time
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since") or 0)))
        raise RunLocked(f"Run directory {self.path.parent} is being written by pid {owner.get('pid')} on "
                        f"{owner.get('host')} (since {since}); wait for it to finish or stop that process, "
                        f"then rerun (a dead owner's lock is taken over automatically).")

    def _owner(self) -> Dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> "RunLock":
        import fcntl
        import socket
        import time
        if self.depth:
            self.depth += 1
            return self
        check_target(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(self._owner())
        owner = self._owner()
        fresh = float(owner.get("lease_until") or 0) > time.time()
        if fresh and owner.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            self._refuse(owner)
        self._fd, self._since, self.depth = fd, time.time(), 1
        self._write()
        self._start_heartbeat()
        return self

    def _write(self) -> None:
        data = (json.dumps(self._record()) + "\n").encode()
        with self._io:
            if self._fd is None:
                return
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, data)

    def _start_heartbeat(self) -> None:
        stop = threading.Event()

        def beat():
            while not stop.wait(self.lease / 4):
                try:
                    self._write()
                except OSError:  # a full disk must not kill the run from this thread
                    pass
        threading.Thread(target=beat, name=f"lease {self.path.parent.name}", daemon=True).start()
        self._stop = stop

    def release(self) -> None:
        import fcntl
        self.depth -= 1
        if self.depth > 0 or self._fd is None:
            return
        self._stop.set()
        with self._io:
            try:
                os.ftruncate(self._fd, 0)  # no owner; the file stays (removing a locked file races)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
                _HELD.pop(str(self.path.parent.resolve()), None)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(directory: Path, lease: float = 120.0) -> RunLock:
    """The lock of ``directory`` (``with run_lock(d): ...``); the same object for the same folder in this process."""
    key = str(Path(directory).resolve())
    lock = _HELD.get(key)
    if lock is None or not lock.depth:
        lock = _HELD[key] = RunLock(directory, lease)
    return lock
