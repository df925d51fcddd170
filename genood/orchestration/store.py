"""The local sweep backend's state: one SQLite file (WAL mode) under the runs root, or a PostgreSQL database.

Runs move ``queued -> running -> finished | failed | stopped`` (stopped: ended early by the
sweep's early-termination rule). An agent claims the next run inside one
``BEGIN IMMEDIATE`` transaction, so no run is ever handed to two agents, and holds a lease it
renews with heartbeats. A running run whose lease expired (its agent was killed or lost) is
claimable again and resumes from its checkpoint. A run that raises is re-queued until it has
failed ``max_attempts`` times, then marked failed; the sweep goes on.

One interface, two implementations: :class:`Store` (SQLite: one host only, the default) and
:class:`orchestration.store_postgres.PostgresStore` (any number of hosts), chosen by :func:`open_store`
from a locator: a ``postgresql://`` URL (``--store`` or ``$OOD_SWEEP_STORE``) or else the SQLite file.
Both run the same SQL below (``?`` placeholders; each dialect says how it locks).
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Optional

from genood.orchestration.store_sqlite import SCHEMA, Claim, Store, raise_if_full  # noqa: F401  (re-exported)

__all__ = ["SCHEMA", "STORE_ENV", "LOCAL_PREFIX", "Claim", "new_sweep_id", "store_path", "store_locator",
           "is_server_locator", "open_store", "Store", "raise_if_full"]

STORE_ENV = "OOD_SWEEP_STORE"
LOCAL_PREFIX = "local-"


def new_sweep_id() -> str:
    """A fresh local sweep id ('local-' + 8 hex digits)."""
    return LOCAL_PREFIX + secrets.token_hex(4)


def store_path(runs_root: Path) -> Path:
    return Path(runs_root) / "sweeps.sqlite"


def store_locator(runs_root: Path, store: Optional[str] = None) -> str:
    """Where the sweep state lives: ``store`` (``--store``), else ``$OOD_SWEEP_STORE``, else the runs root's SQLite file."""
    import os
    return str(store or os.environ.get(STORE_ENV) or store_path(runs_root))


def is_server_locator(locator: str) -> bool:
    return str(locator).startswith(("postgresql://", "postgres://"))


def open_store(locator, runs_root: Optional[Path] = None, timeout: float = 60.0) -> "Store":
    """The store behind ``locator`` (a ``postgresql://`` URL or a SQLite file path). ``timeout``: seconds to wait
    for a connection (PostgreSQL) or for a busy SQLite file before a call fails. ``runs_root``, chosen by the caller
    (never by a name in the store), becomes a folder files may be written under (:func:`rundir.allow_writes`)."""
    if runs_root is not None:
        from genood import rundir
        rundir.allow_writes(Path(runs_root))
    if is_server_locator(str(locator)):
        from genood.orchestration.store_postgres import PostgresStore
        return PostgresStore(str(locator), runs_root=runs_root, timeout=timeout)
    return Store(Path(locator), runs_root=runs_root, timeout=timeout)


