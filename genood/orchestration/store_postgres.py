"""The sweep store on PostgreSQL (psycopg 3): the same tables and SQL as the SQLite store, for many hosts.

Chosen with ``--store postgresql://user@host/db`` (or ``$OOD_SWEEP_STORE``). Every agent on every machine
opens its own connection; a claim is one transaction whose ``SELECT ... FOR UPDATE SKIP LOCKED`` picks the
first claimable row that no other transaction holds, so concurrent agents never wait on each other and
never get the same run. Leases, heartbeats, retries, re-queues on SIGTERM and on expired leases, reuse by
config hash, proposals and early termination are the shared code of :class:`orchestration.store.Store`.
Times are DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes, too coarse for epoch seconds).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from genood.orchestration.store_sqlite import SCHEMA, Store


class StoreUnreachable(RuntimeError):
    """The PostgreSQL server named by the locator could not be reached (one sentence for the user)."""


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class PostgresStore(Store):
    lock_suffix = " FOR UPDATE"
    claim_suffix = " FOR UPDATE SKIP LOCKED"
    single_host = False

    def __init__(self, url: str, timeout: float = 60.0, runs_root: Optional[Path] = None):
        import psycopg

        self.locator = url
        self.path = None
        self.runs_root = Path(runs_root) if runs_root is not None else Path("runs")
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnreachable(f"The sweep store {_redact(url)} could not be reached ({first}); check the URL and that "
                                   f"the server runs, or drop --store/${'OOD_SWEEP_STORE'} to use the local SQLite file.") from exc
        with self.db.transaction():
            # one schema creation at a time (several agents may start at once on an empty database)
            self.db.execute("SELECT pg_advisory_xact_lock(7166)")
            for stmt in SCHEMA.replace(" REAL", " DOUBLE PRECISION").split(";"):
                if stmt.strip():
                    self.db.execute(stmt)

    def describe(self) -> str:
        return _redact(self.locator)

    def close(self) -> None:
        self.db.close()

    def _x(self, db, sql: str, args=()):
        return db.execute(sql.replace("?", "%s"), args)

    def _many(self, db, sql: str, rows) -> None:
        with db.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def _lock_sweep(self, db, sweep_id: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sweep_id,))

    @contextmanager
    def transaction(self):
        with self.db.transaction():
            yield self.db
