"""A real, throwaway PostgreSQL server for the store tests and benchmarks (Debian's ``postgresql`` package).

``initdb`` into a fresh temporary folder, started on a Unix socket inside it (no TCP port), as the unprivileged
``postgres`` user when we are root (PostgreSQL refuses to run as root), stopped and deleted at the end.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional


def _bin(name: str) -> Optional[str]:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


class PostgresServer:
    def __init__(self):
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl were not found: install Debian's `postgresql` package "
                               "(`make setup` does, as root) to run the PostgreSQL store tests.")
        self.root = Path(tempfile.mkdtemp(prefix="ood-pg-"))
        self.data, self.socket = self.root / "data", self.root / "sock"
        self.as_root = os.geteuid() == 0
        self.started = False

    def _run(self, args: List[str]) -> None:
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + args
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> "PostgresServer":
        self.socket.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket, "postgres", "postgres")
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        self.opts = f"-k {self.socket} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", self.opts, "-l", str(self.root / "server.log"), "-w", "start"])
        self.started = True
        return self

    def halt(self) -> None:
        """Stop the server process (a real outage: every client's connection drops), keeping its data."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def resume(self) -> None:
        """Start the halted server again on the same socket and data."""
        self._run([self.pg_ctl, "-D", str(self.data), "-o", self.opts, "-l", str(self.root / "server.log"), "-w", "start"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                if (self.data / "postmaster.pid").exists():  # a test may have left it halted
                    self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)
