"""The SQLite sweep store (:class:`Store`, WAL mode, one host) and what the PostgreSQL store shares with it: the
schema (:data:`SCHEMA`, the same SQL for both dialects, ``?`` placeholders) and the claim record. Opened through
:func:`genood.orchestration.store.open_store`, which picks this or :mod:`genood.orchestration.store_postgres`
by the locator; the states, leases and claims are described there.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["SCHEMA", "Claim", "raise_if_full", "Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
  id TEXT PRIMARY KEY, name TEXT, job TEXT, method TEXT, source TEXT, meta_json TEXT,
  project TEXT, entity TEXT, max_attempts INTEGER, run_cap INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS runs (
  sweep_id TEXT, seq INTEGER, name TEXT, digest TEXT, params_json TEXT, config_json TEXT,
  status TEXT, failures INTEGER DEFAULT 0, claims INTEGER DEFAULT 0, agent TEXT, lease_until REAL,
  error TEXT, run_dir TEXT, reused_from TEXT, created REAL, started REAL, finished REAL, metrics_json TEXT,
  PRIMARY KEY (sweep_id, name));
CREATE INDEX IF NOT EXISTS runs_queue ON runs (sweep_id, status, seq);
CREATE INDEX IF NOT EXISTS runs_digest ON runs (digest, status);
CREATE TABLE IF NOT EXISTS history (sweep_id TEXT, name TEXT, step INTEGER, value REAL);
CREATE INDEX IF NOT EXISTS history_run ON history (sweep_id, name, step);
CREATE TABLE IF NOT EXISTS agents (sweep_id TEXT, name TEXT, host TEXT, started REAL, PRIMARY KEY (sweep_id, name));
"""


@dataclass
class Claim:
    sweep_id: str
    name: str
    config: Dict[str, Any]
    params: Dict[str, str]
    resumed: bool  # a previous agent held this run (lease expired or re-queued)


def raise_if_full(exc: sqlite3.OperationalError, path: Path) -> None:
    """A SQLite error caused by a full file system (SQLite says "database or disk is full", or only "disk I/O
    error" when it cannot even create its WAL files) as :class:`rundir.DiskFull`, one sentence naming the store."""
    import errno
    import os

    full = "disk is full" in str(exc).lower()
    if not full:
        try:
            st = os.statvfs(Path(path).parent)
            full = st.f_bavail * st.f_frsize < 65536
        except OSError:
            full = False
    if full:
        from genood.rundir import DiskFull, disk_full_sentence
        raise DiskFull(errno.ENOSPC, f"{disk_full_sentence(exc, path)} (the sweep store) Free space there and start "
                       f"the agent again; a run it held resumes from its checkpoint.", str(path)) from exc


class Store:
    """A connection to the sweep database (one per process; cheap to open). This class is the SQLite
    implementation and holds the shared SQL; subclasses change the connection and the locking."""

    lock_suffix = ""          # appended to SELECTs that pick rows to update inside a transaction
    claim_suffix = ""         # appended to the claim's SELECT (PostgreSQL: FOR UPDATE SKIP LOCKED)
    single_host = True        # SQLite's WAL needs shared memory: one host only

    def __init__(self, path: Path, timeout: float = 60.0, runs_root: Optional[Path] = None):
        self.path = Path(path)
        self.locator = str(self.path)
        self.runs_root = Path(runs_root) if runs_root is not None else self.path.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self.db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            self.db.close()
            raise_if_full(exc, self.path)
            raise

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self.db.close()

    def _x(self, db, sql: str, args=()):
        """Execute one statement (``?`` placeholders) on ``db`` (the connection or a transaction's)."""
        return db.execute(sql, args)

    def _many(self, db, sql: str, rows) -> None:
        db.cursor().executemany(sql, rows)

    def _lock_sweep(self, db, sweep_id: str) -> None:
        """Serialise writers of one sweep inside a transaction (SQLite's BEGIN IMMEDIATE already does)."""

    @contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ---- hosts ----------------------------------------------------------------------------
    def register_agent(self, sweep_id: str, agent: str, host: str) -> List[str]:
        """Record an agent of ``sweep_id`` on ``host``; returns every host that has run agents of the sweep."""
        with self.transaction() as db:
            self._x(db, "INSERT INTO agents (sweep_id, name, host, started) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                    (sweep_id, agent, host, time.time()))
            return sorted({r[0] for r in self._x(db, "SELECT DISTINCT host FROM agents WHERE sweep_id=?", (sweep_id,)).fetchall()})

    # ---- sweeps -------------------------------------------------------------------------
    def create_sweep(self, sweep_id: str, name: str, job: str, method: str, source: str, meta: Dict[str, Any], project: str,
                     entity: Optional[str], max_attempts: int, run_cap: Optional[int], runs: Iterable[dict],
                     force: bool = False) -> tuple[str, int, int]:
        """Insert a sweep and its runs; returns (sweep id, runs queued, runs reused from finished ones)."""
        now = time.time()
        queued = reused = 0
        with self.transaction() as db:
            self._x(db, "INSERT INTO sweeps VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (sweep_id, name, job, method, source, json.dumps(meta), project, entity, max_attempts, run_cap, now))
            rows = []
            for seq, run in enumerate(runs):
                prior = None if force else self._x(db,
                    "SELECT run_dir, metrics_json FROM runs WHERE digest=? AND status='finished' ORDER BY finished LIMIT 1", (run["digest"],)).fetchone()
                status = "finished" if prior else "queued"
                reused += bool(prior)
                queued += not prior
                rows.append((sweep_id, seq, run["name"], run["digest"], json.dumps(run["params"]), json.dumps(run["config"]),
                             status, prior[0] if prior else None, prior[0] if prior else None, now,
                             now if prior else None, prior[1] if prior else None))
            self._many(db, "INSERT INTO runs (sweep_id, seq, name, digest, params_json, config_json, status, run_dir, "
                           "reused_from, created, finished, metrics_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        return sweep_id, queued, reused

    def sweep(self, sweep_id: str) -> Optional[Dict[str, Any]]:
        row = self._x(self.db, "SELECT id, name, job, method, source, meta_json, project, entity, max_attempts, run_cap, created "
                              "FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            return None
        keys = ["id", "name", "job", "method", "source", "meta", "project", "entity", "max_attempts", "run_cap", "created"]
        out = dict(zip(keys, row))
        out["meta"] = json.loads(out["meta"])
        return out

    def sweeps(self) -> List[Dict[str, Any]]:
        return [self.sweep(r[0]) for r in self._x(self.db, "SELECT id FROM sweeps ORDER BY created")]

    def add_run(self, sweep_id: str, run: dict) -> None:
        """Append one run (random/bayes proposals) to a sweep's queue."""
        with self.transaction() as db:
            self._lock_sweep(db, sweep_id)
            seq = self._x(db, "SELECT COALESCE(MAX(seq), -1) + 1 FROM runs WHERE sweep_id=?", (sweep_id,)).fetchone()[0]
            self._x(db, "INSERT INTO runs (sweep_id, seq, name, digest, params_json, config_json, status, created) "
                       "VALUES (?,?,?,?,?,?,'queued',?) ON CONFLICT DO NOTHING", (sweep_id, seq, run["name"], run["digest"], json.dumps(run["params"]),
                                                          json.dumps(run["config"]), time.time()))

    # ---- agent side ---------------------------------------------------------------------
    def claim(self, sweep_id: str, agent: str, lease_seconds: float) -> Optional[Claim]:
        """Atomically take the next queued (or lease-expired) run; None when nothing is claimable."""
        now = time.time()
        with self.transaction() as db:
            row = self._x(db,
                "SELECT name, config_json, params_json, claims FROM runs WHERE sweep_id=? AND "
                "(status='queued' OR (status='running' AND lease_until < ?)) ORDER BY seq LIMIT 1" + self.claim_suffix,
                (sweep_id, now)).fetchone()
            if row is None:
                return None
            self._x(db, "UPDATE runs SET status='running', agent=?, lease_until=?, started=?, claims=claims+1 "
                       "WHERE sweep_id=? AND name=?", (agent, now + lease_seconds, now, sweep_id, row[0]))
        return Claim(sweep_id, row[0], json.loads(row[1]), json.loads(row[2]), resumed=row[3] > 0)

    def heartbeat(self, sweep_id: str, name: str, agent: str, lease_seconds: float) -> bool:
        """Renew the lease of a run this agent is executing; False if the run is no longer running (re-queued by
        hand, or finished). Called only by the process that holds the run directory's lock (the one writer), so
        it also takes the row back from an agent that claimed it after the lease expired during a store outage
        and then found the directory locked (see :meth:`defer`)."""
        cur = self._x(self.db, "UPDATE runs SET lease_until=?, agent=? WHERE sweep_id=? AND name=? AND status='running'",
                              (time.time() + lease_seconds, agent, sweep_id, name))
        return cur.rowcount == 1

    def holds(self, sweep_id: str, name: str, agent: str) -> bool:
        """Whether ``agent`` still holds the run (running under its name). Read after taking the run directory's
        lock: a previous writer that finished the run did so before letting the lock go, so a False here means
        the run needs nothing more from this agent."""
        row = self._x(self.db, "SELECT status, agent FROM runs WHERE sweep_id=? AND name=?", (sweep_id, name)).fetchone()
        return row is not None and row[0] == "running" and row[1] == agent

    def defer(self, sweep_id: str, name: str, agent: str, lease_seconds: float) -> None:
        """A claimed run whose directory another live process still writes (its lease expired while the store was
        away): leave it to that writer for one more lease; the writer's next heartbeat takes the row back, and if
        it died meanwhile the run is claimable again when this lease expires."""
        self._x(self.db, "UPDATE runs SET lease_until=? WHERE sweep_id=? AND name=? AND agent=? AND status='running'",
                        (time.time() + lease_seconds, sweep_id, name, agent))

    # finish/fail/stop/release are called by the process that ran the job while holding the run directory's lock
    # (one writer at a time), so they act on the run whichever agent the row names at that moment.
    def finish(self, sweep_id: str, name: str, agent: str, run_dir: str, metrics: Optional[dict]) -> None:
        self._x(self.db, "UPDATE runs SET status='finished', agent=?, run_dir=?, finished=?, metrics_json=?, error=NULL, "
                        "lease_until=NULL WHERE sweep_id=? AND name=? AND status IN ('running','queued')",
                        (agent, run_dir, time.time(), json.dumps(metrics) if metrics is not None else None, sweep_id, name))

    def fail(self, sweep_id: str, name: str, agent: str, error: str, max_attempts: int) -> str:
        """Record a failure; re-queue unless it has now failed max_attempts times. Returns the new status."""
        with self.transaction() as db:
            row = self._x(db, "SELECT failures FROM runs WHERE sweep_id=? AND name=? AND status='running'" + self.lock_suffix,
                         (sweep_id, name)).fetchone()
            if row is None:
                return "lost"
            failures = row[0] + 1
            status = "failed" if failures >= max_attempts else "queued"
            self._x(db, "UPDATE runs SET status=?, failures=?, error=?, agent=NULL, lease_until=NULL, finished=? "
                       "WHERE sweep_id=? AND name=?", (status, failures, error, time.time() if status == "failed" else None,
                                                       sweep_id, name))
        return status

    def stop(self, sweep_id: str, name: str, agent: str) -> None:
        """Mark a run ended early by early termination (a terminal state, like W&B's 'stopped')."""
        self._x(self.db, "UPDATE runs SET status='stopped', finished=?, lease_until=NULL WHERE sweep_id=? AND name=? "
                        "AND status='running'", (time.time(), sweep_id, name))

    def record_history(self, sweep_id: str, name: str, step: int, value: float) -> None:
        """Append one point of a run's metric history (used by early termination)."""
        self._x(self.db, "INSERT INTO history VALUES (?,?,?,?)", (sweep_id, name, int(step), float(value)))

    def histories(self, sweep_id: str) -> Dict[str, List[tuple]]:
        out: Dict[str, List[tuple]] = {}
        for name, step, value in self._x(self.db, "SELECT name, step, value FROM history WHERE sweep_id=? ORDER BY name, step",
                                                 (sweep_id,)):
            out.setdefault(name, []).append((step, value))
        return out

    def release(self, sweep_id: str, name: str, agent: str) -> None:
        """Give a run back to the queue without counting a failure (SIGTERM/SIGINT)."""
        self._x(self.db, "UPDATE runs SET status='queued', agent=NULL, lease_until=NULL WHERE sweep_id=? AND name=? "
                        "AND status='running'", (sweep_id, name))

    # ---- inspection ---------------------------------------------------------------------
    def counts(self, sweep_id: str) -> Dict[str, int]:
        out = {"queued": 0, "running": 0, "finished": 0, "failed": 0, "stopped": 0}
        for status, n in self._x(self.db, "SELECT status, COUNT(*) FROM runs WHERE sweep_id=? GROUP BY status", (sweep_id,)):
            out[status] = n
        return out

    def runs(self, sweep_id: str) -> List[Dict[str, Any]]:
        keys = ["seq", "name", "digest", "params", "config", "status", "failures", "claims", "agent", "lease_until", "error",
                "run_dir", "reused_from", "created", "started", "finished", "metrics"]
        out = []
        for row in self._x(self.db, f"SELECT {', '.join(k + '_json' if k in ('params', 'config', 'metrics') else k for k in keys)} "
                                   "FROM runs WHERE sweep_id=? ORDER BY seq", (sweep_id,)):
            item = dict(zip(keys, row))
            for k in ("params", "config", "metrics"):
                item[k] = json.loads(item[k]) if item[k] else None
            out.append(item)
        return out

    def requeue(self, sweep_id: str, name: Optional[str] = None, failed_only: bool = False) -> int:
        """Put runs back in the queue (all finished/failed ones, only failed ones, or one by name)."""
        where, args = "sweep_id=? AND status IN ('finished','failed','stopped')", [sweep_id]
        if failed_only:
            where = "sweep_id=? AND status='failed'"
        if name:
            where, args = "sweep_id=? AND name=?", [sweep_id, name]
        cur = self._x(self.db, f"UPDATE runs SET status='queued', failures=0, agent=NULL, lease_until=NULL, error=NULL, "
                              f"reused_from=NULL WHERE {where}", args)
        return cur.rowcount
