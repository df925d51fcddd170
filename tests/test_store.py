"""Store selection, the PostgreSQL store's own behaviour, and the SQLite single-host guard."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import yaml

from genood.orchestration import hostcheck
from genood.orchestration.store import STORE_ENV, Store, open_store, store_locator, store_path
from tests.conftest import ROOT


def _cli(root, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def _meta(tmp_path, n=4):
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump({"job": "sleep", "method": "grid", "base_config": {"sleep": 0.0, "fail": False},
                                    "sweep_configuration": {"value": {"sweep": True, "values": list(range(n))}}}))
    return path


def test_a_postgresql_sweep_lives_in_the_server_not_in_the_runs_root(tmp_path, postgres_server):
    url = postgres_server.new_database()
    root = tmp_path / "runs"
    env = dict(os.environ, **{STORE_ENV: url})
    out = _cli(root, "create", "--config", str(_meta(tmp_path)), "--backend", "local", env=env)
    assert out.returncode == 0, out.stderr
    sid = out.stdout.strip().splitlines()[-1]
    assert "postgresql://" in out.stderr and not store_path(root).exists()
    done = _cli(root, "agent", sid, env=env)
    assert done.returncode == 0, done.stderr
    store = open_store(url, runs_root=root)
    try:
        assert [r["status"] for r in store.runs(sid)] == ["finished"] * 4
        assert store.sweep(sid)["name"] == "meta"
    finally:
        store.close()
    # the same sweep through --store instead of the environment variable
    status = _cli(root, "--store", url, "status", sid, env={k: v for k, v in os.environ.items() if k != STORE_ENV})
    assert status.returncode == 0 and "4 finished" in status.stdout


def test_an_unreachable_postgresql_store_is_one_sentence(tmp_path):
    out = _cli(tmp_path / "runs", "--store", f"postgresql://nobody@/nodb?host={tmp_path}/nosocket&connect_timeout=2",
               "create", "--config", str(_meta(tmp_path)), "--backend", "local")
    assert out.returncode == 2
    assert out.stderr.startswith("error: The sweep store postgresql://") and "could not be reached" in out.stderr
    assert "Traceback" not in out.stderr


def test_filesystem_type_reads_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "server:/export /shared nfs4 rw,relatime 0 0\n"
                      "server:/export/x /shared/local\\040disk ext4 rw 0 0\n")
    assert hostcheck.filesystem_type("/home/me/runs", str(mounts)) == "ext4"
    assert hostcheck.filesystem_type("/shared/runs", str(mounts)) == "nfs4"
    assert hostcheck.filesystem_type("/shared/local disk/runs", str(mounts)) == "ext4"
    assert hostcheck.filesystem_type("/sharedother", str(mounts)) == "ext4"
    assert hostcheck.is_network("nfs4") and hostcheck.is_network("lustre") and not hostcheck.is_network("ext4")
    # on this machine, the real mount table: the temporary folder is not on a network file system
    assert not hostcheck.is_network(hostcheck.filesystem_type(tmp_path))


def test_sqlite_agents_refuse_a_network_file_system(tmp_path):
    root = tmp_path / "runs"
    out = _cli(root, "create", "--config", str(_meta(tmp_path)), "--backend", "local")
    sid = out.stdout.strip().splitlines()[-1]
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nfiler:/vol {tmp_path} nfs rw 0 0\n")
    env = dict(os.environ, **{hostcheck.MOUNTS_ENV: str(mounts)})
    env.pop(STORE_ENV, None)
    refused = _cli(root, "agent", sid, env=env)
    assert refused.returncode == 2 and "network file system (nfs)" in refused.stderr and "PostgreSQL" in refused.stderr
    assert "Traceback" not in refused.stderr
    store = Store(store_path(root))
    try:
        assert [r["status"] for r in store.runs(sid)] == ["queued"] * 4  # nothing was claimed
    finally:
        store.close()


def test_sqlite_refuses_agents_of_one_sweep_on_two_hosts_but_postgresql_accepts_them(tmp_path, postgres_server):
    for locator in (str(tmp_path / "s.sqlite"), postgres_server.new_database()):
        store = open_store(locator, runs_root=tmp_path)
        try:
            assert hostcheck.check_single_host(store, "local-x", "a-gpu0-pid1", "node1") == ["node1"]
            assert hostcheck.check_single_host(store, "local-x", "a-gpu1-pid2", "node1") == ["node1"]
            if store.single_host:
                with pytest.raises(hostcheck.SingleHostError, match="several hosts \\(node1, node2\\)"):
                    hostcheck.check_single_host(store, "local-x", "b-gpu0-pid3", "node2")
            else:
                assert hostcheck.check_single_host(store, "local-x", "b-gpu0-pid3", "node2") == ["node1", "node2"]
            assert hostcheck.check_single_host(store, "local-y", "b-gpu0-pid3", "node2") == ["node2"]  # per sweep
        finally:
            store.close()


def test_store_locator_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert store_locator(tmp_path) == str(tmp_path / "sweeps.sqlite")
    monkeypatch.setenv(STORE_ENV, "postgresql://u@/db")
    assert store_locator(tmp_path) == "postgresql://u@/db"
    assert store_locator(tmp_path, "postgresql://v@/other") == "postgresql://v@/other"
    assert socket.gethostname()  # agents name their host in the agents table
