"""The sweep store as agents see it: every call survives a store outage of up to a limit.

A PostgreSQL server that restarts, or a SQLite file another process holds locked, makes a store call fail
with an operational error. :class:`ResilientStore` wraps a store: such a call drops the connection, waits
(bounded exponential backoff, each wait logged with what the agent waits for), reconnects and tries the
same call again, until it succeeds or the outage has lasted ``limit`` seconds; then :class:`StoreOutage`
ends the agent with one sentence. Errors that are not about reaching the store (a bad query, a missing
sweep) pass through at once.

Retrying is safe for every call the agent makes: heartbeats, finishes, releases and stops are idempotent;
a claim whose commit was lost leaves a run under this agent's lease, which expires and is claimed again;
a failure recorded twice finds the run already re-queued and changes nothing.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["StoreOutage", "ResilientStore", "is_transient", "DEFAULT_OUTAGE_LIMIT"]

DEFAULT_OUTAGE_LIMIT = 600.0  # seconds an agent waits for its store before it stops

_DOING = {"claim": "claiming the next run", "heartbeat": "renewing the lease of {}", "finish": "recording {} as finished",
          "fail": "recording the failure of {}", "stop": "recording {} as stopped early", "release": "handing {} back to the queue",
          "defer": "leaving {} to the process that writes it", "counts": "reading the sweep's counts",
          "record_history": "recording a metric of {}", "histories": "reading metric histories", "runs": "reading the sweep's runs",
          "sweep": "reading the sweep", "add_run": "adding a proposed run", "register_agent": "registering this agent",
          "connect": "opening the store", "holds": "checking that this agent still holds {}"}


class StoreOutage(RuntimeError):
    """The store stayed unreachable for longer than the agent's limit (one sentence for the user)."""


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "the store cannot be reached right now" (server down or restarting, connection
    dropped, SQLite file locked or busy), not a mistake in what was asked."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text or "unable to open" in text
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is in the pinned requirements
        psycopg = None
    if psycopg is not None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    from genood.orchestration import store_postgres
    return isinstance(exc, store_postgres.StoreUnreachable)


def _first_line(exc: BaseException) -> str:
    from genood.orchestration.store_postgres import StoreUnreachable
    if isinstance(exc, StoreUnreachable) and exc.__cause__ is not None:  # the driver's reason, not our sentence
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


class ResilientStore:
    """A store whose calls retry through outages. ``store``: an open store to start from (else one is opened);
    ``limit``: the longest outage survived, in seconds; ``attempt_timeout``: how long one attempt may wait on
    a busy SQLite file before the wait is logged and retried; ``interrupt``: an event that ends the waiting
    (a heartbeat thread being stopped) with :class:`StoreOutage`."""

    def __init__(self, locator: str, runs_root: Optional[Path] = None, limit: float = DEFAULT_OUTAGE_LIMIT,
                 log: Optional[logging.Logger] = None, store=None, attempt_timeout: float = 10.0,
                 first_wait: float = 0.5, max_wait: float = 30.0, interrupt: Optional[threading.Event] = None):
        self.locator, self.runs_root = str(locator), runs_root
        self.limit, self.log = float(limit), log or logging.getLogger("agent")
        self.attempt_timeout, self.first_wait, self.max_wait = float(attempt_timeout), float(first_wait), float(max_wait)
        self.interrupt = interrupt
        self.outages = 0          # outages survived (for the agent's summary)
        self.longest_outage = 0.0
        self._store = store
        self._reached = store is not None  # a server never reached at all is a wrong URL far more often than an outage
        if store is None:
            self._call("connect", (), {})  # (a busy SQLite file at start is waited out like any outage)
        self.path = getattr(self._store, "path", None)
        if self.runs_root is None:
            self.runs_root = self._store.runs_root

    # the plain attributes the agent reads
    @property
    def single_host(self) -> bool:
        return type(self._store).single_host if self._store is not None else True

    def describe(self) -> str:
        from genood.orchestration.store_postgres import _redact
        return _redact(self.locator)

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing a connection the server already dropped
                pass
            self._store = None

    def _reconnect(self):
        from genood.orchestration.store import open_store
        if self._store is None:
            self._store = open_store(self.locator, runs_root=self.runs_root, timeout=self.attempt_timeout)
            self._reached = True
        return self._store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return self._call(name, args, kwargs)
        return call

    def _call(self, name: str, args, kwargs):
        started, wait = None, self.first_wait
        while True:
            try:
                store = self._reconnect()
                result = store if name == "connect" else getattr(store, name)(*args, **kwargs)
            except Exception as exc:
                from genood.orchestration.store_postgres import StoreUnreachable
                if isinstance(exc, StoreUnreachable) and not self._reached:
                    raise  # never reached: one sentence now (check the URL), no waiting
                if isinstance(exc, sqlite3.OperationalError) and not self.locator.startswith(("postgresql:", "postgres:")):
                    from genood.orchestration.store import raise_if_full
                    raise_if_full(exc, Path(self.locator))  # a full disk is not an outage: one sentence now
                if not is_transient(exc):
                    raise
                self.close()
                now = time.monotonic()
                started = started if started is not None else now
                out_for = now - started
                doing = _DOING.get(name, name).format(args[1] if len(args) > 1 else "")
                if out_for >= self.limit:
                    raise StoreOutage(f"The sweep store {self.describe()} was unreachable for {out_for:.0f} s while "
                                      f"{doing} (limit {self.limit:.0f} s, --store-outage-limit), so the agent stops; a run it "
                                      f"held keeps its checkpoint and is resumed by the next agent once its lease expires.") from exc
                pause = min(wait, self.limit - out_for)
                bound = f"of at most {self.limit:.0f} s" if self.limit != float("inf") else "; the job goes on meanwhile"
                self.log.warning(f"store {self.describe()} unavailable while {doing} ({_first_line(exc)}); retrying in "
                                 f"{pause:.1f} s (out for {out_for:.0f} s {bound})")
                if self.interrupt is not None:
                    if self.interrupt.wait(pause):
                        raise StoreOutage(f"stopped while waiting for the sweep store {self.describe()}") from exc
                else:
                    time.sleep(pause)
                wait = min(wait * 2, self.max_wait)
                continue
            if started is not None:
                out_for = time.monotonic() - started
                self.outages += 1
                self.longest_outage = max(self.longest_outage, out_for)
                self.log.warning(f"store {self.describe()} is back after {out_for:.1f} s; "
                                 f"{_DOING.get(name, name).format(args[1] if len(args) > 1 else '')} done")
            return result
