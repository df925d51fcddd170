"""Where the package's own files lie and where the user's project folder (runs, data, .env) is."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE_DIR", "PROJECT_ROOT"]

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
