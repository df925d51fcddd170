"""The SQLite store is for one host: refuse agents on network file systems and agents of one sweep on two hosts.

SQLite in WAL mode coordinates writers through shared memory (the ``-shm`` file), which processes on
different machines do not share, and SQLite's own documentation calls network file systems unsafe for
it: two hosts on one NFS-mounted ``sweeps.sqlite`` can hand the same run to two agents or corrupt the
file. So with the SQLite store an agent checks, before claiming anything, (1) the file system type of the
store's folder, read from the mount table (``/proc/mounts``, or the file named by ``$OOD_MOUNTS_FILE``:
the override tests and unusual systems use), and (2) the hosts that have run agents of the sweep (the
store's ``agents`` table). The PostgreSQL store has neither limit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

NETWORK_FILE_SYSTEMS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "glusterfs",
    "fuse.glusterfs", "fuse.sshfs", "sshfs", "9p", "afs", "ocfs2", "gfs2", "pvfs2", "orangefs", "panfs",
    "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "davfs", "fuse.davfs2", "wekafs", "vast",
}
MOUNTS_ENV = "OOD_MOUNTS_FILE"


class SingleHostError(RuntimeError):
    """The SQLite store would be shared across hosts (one sentence for the user)."""


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...)
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path, mounts_file: Optional[str] = None) -> str:
    """The type of the file system holding ``path`` (the mount table's longest mount point above it)."""
    mounts_file = mounts_file or os.environ.get(MOUNTS_ENV) or "/proc/mounts"
    target = os.path.realpath(str(path))
    best, fstype = "", "unknown"
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = _unescape(parts[1]).rstrip("/") or "/"
        inside = target == mount or target.startswith(mount + "/") or mount == "/"
        if inside and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


def is_network(fstype: str) -> bool:
    return fstype.lower() in NETWORK_FILE_SYSTEMS or fstype.lower().startswith("nfs")


def check_single_host(store, sweep_id: str, agent: str, host: str) -> List[str]:
    """Register this agent; raise :class:`SingleHostError` when the SQLite store is on a network file system or the
    sweep's agents have run on another host. Returns the hosts seen."""
    if getattr(store, "single_host", False):
        fstype = filesystem_type(Path(store.path).parent)
        if is_network(fstype):
            raise SingleHostError(
                f"The sweep store {store.path} is on a network file system ({fstype}), where SQLite is unsafe across "
                f"hosts; put the runs root on a local disk (--runs-root) or give every agent a PostgreSQL store "
                f"(--store postgresql://... or $OOD_SWEEP_STORE).")
    hosts = store.register_agent(sweep_id, agent, host)
    if getattr(store, "single_host", False) and len(hosts) > 1:
        raise SingleHostError(
            f"Agents of sweep {sweep_id} have run on several hosts ({', '.join(hosts)}) with the SQLite store "
            f"{store.path}, which is only safe on one host; run agents on one machine or create the sweep in a "
            f"PostgreSQL store (--store postgresql://...).")
    return hosts
