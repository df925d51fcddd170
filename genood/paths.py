"""Where the package's own files lie and where the user's project folder (runs, data, .env) is."""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["PACKAGE_DIR", "PROJECT_ROOT", "UnsafeName", "check_component", "name_problem", "confined", "shown_name", "shown_path", "check_sweep_ref", "NAME_CHARS", "MAX_NAME"]

PACKAGE_DIR = Path(__file__).resolve().parent


def _project_root() -> Path:
    """``$GENOOD_ROOT``; else the checkout the package sits in (a source tree or an editable install); else the
    current directory (a package installed into site-packages works on the folder it is run from)."""
    raw = os.environ.get("GENOOD_ROOT")
    if raw:
        return Path(raw).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


PROJECT_ROOT = _project_root()


# --- names that become path components --------------------------------------------------------------------------
# Run names, sweep ids, zoo names and set names arrive from configurations, meta-configurations, a shared store and
# W&B, i.e. from other machines: each must be one path component of a safe character set before it names a file.
NAME_CHARS = "letters, digits and _ . = + , -"
MAX_NAME = 240  # file systems allow 255 bytes a component; room for a suffix
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+,-]*$")


class UnsafeName(ValueError):
    """A name that would become a path component is not one safe component; the message says which and why."""


def name_problem(name: object) -> "str | None":
    """Why ``name`` is not one safe path component (a phrase to follow 'must be ...'), or None when it is."""
    if not isinstance(name, str) or not name:
        return "a non-empty name"
    if len(name) > MAX_NAME:
        return f"at most {MAX_NAME} characters (it has {len(name)})"
    if not _NAME.match(name) or ".." in name:
        return f"one file-name component of {NAME_CHARS}, not starting with '-' or '.' and without '..'"
    return None


def shown_name(name: object, limit: int = 80) -> object:
    """A name as an error message shows it: strings over ``limit`` characters cut with '...'."""
    return name if not isinstance(name, str) or len(name) <= limit else name[:limit - 3] + "..."


def shown_path(path: Path) -> str:
    """A path as a user types it: relative to the project root when inside it."""
    try:
        return str(Path(path).relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def check_component(name: object, what: str) -> str:
    """``name`` if it is one safe path component (not empty, at most MAX_NAME characters of NAME_CHARS, not
    starting with '-' or '.', no '..'), else UnsafeName naming ``what``."""
    problem = name_problem(name)
    if problem:
        raise UnsafeName(f"The {what} must be {problem}, got {shown_name(name)!r}; rename it.")
    return name


def check_sweep_ref(ref: object, what: str = "sweep id") -> str:
    """``ref`` if it names a sweep safely: one safe component (a local sweep, ``local-...``) or W&B's
    ``entity/project/id`` with each of its three parts one, else UnsafeName. Sweep ids become folder names."""
    parts = ref.split("/") if isinstance(ref, str) else [ref]
    if len(parts) not in (1, 3):
        raise UnsafeName(f"The {what} must be a local sweep id or W&B's entity/project/id, got {shown_name(ref)!r}.")
    for part in parts:
        problem = name_problem(part)
        if problem:
            raise UnsafeName(f"The {what} {shown_name(ref)!r} must be {'parts each ' if len(parts) == 3 else ''}"
                             f"{problem}; check the id `sweep.py list` prints.")
    return ref


def confined(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved, if it lies inside ``root`` (resolved), else UnsafeName: nothing is written outside it."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise UnsafeName(f"The {what} {str(path)!r} lies outside {root_r}; names must not lead out of it.")
    return path_r
