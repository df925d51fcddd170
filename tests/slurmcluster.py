"""A real single-node Slurm cluster for the launcher tests (Debian's ``slurm-wlm`` and ``munge``).

Writes a slurm.conf for this host into a temporary folder (state, spool, logs inside it; two free ports),
starts ``munged`` (as the munge user) if it is not running, then ``slurmctld`` and ``slurmd`` with that file,
and waits until the node is idle. Jobs run as the submitting user; ``SLURM_CONF`` points every client
(sbatch, squeue, scancel, submitit) at this cluster. Needs root (slurmd runs jobs for any user).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class SlurmCluster:
    def __init__(self):
        missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
        if missing:
            raise RuntimeError(f"Slurm is not installed ({', '.join(missing)} missing): install Debian's slurm-wlm and munge "
                               "(`make setup` does, as root) to run the Slurm launcher test.")
        if os.geteuid() != 0:
            raise RuntimeError("the single-node Slurm test starts slurmd, which needs root.")
        self.root = Path(tempfile.mkdtemp(prefix="ood-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname()
        self.ports = self._free_ports(2)  # never talk to a controller left over from another session

    @staticmethod
    def _free_ports(n: int) -> list:
        socks = [socket.socket() for _ in range(n)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()

    def start(self) -> "SlurmCluster":
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        cpus = os.cpu_count() or 1
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=oodtest", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", f"SlurmctldPort={self.ports[0]}", f"SlurmdPort={self.ports[1]}",
            f"NodeName={self.host} CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        os.environ["SLURM_CONF"] = str(self.conf)
        working = subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0
        if not working:  # munged is not running (or is a zombie): start it
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                subprocess.run(["mungekey", "-c"], check=True, capture_output=True)
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            shutil.chown(key, "munge", "munge")
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            out = subprocess.run([daemon, "-f", str(self.conf)], capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"{daemon} did not start: {out.stderr.strip()}")
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle (state {state!r}); see {self.root / 'log'}")

    def stop(self) -> None:
        import signal as _signal

        # end every job first, so no job step outlives the daemons it reports to
        subprocess.run(["scancel", "--full", "--state=PENDING,RUNNING,SUSPENDED,REQUEUED"], capture_output=True, timeout=60)
        subprocess.run(["scancel", "--full", "-u", str(os.getuid())], capture_output=True, timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline and subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
            time.sleep(0.2)
        subprocess.run(["scontrol", "shutdown"], capture_output=True, timeout=60)
        for pidfile in ("slurmctld.pid", "slurmd.pid"):
            path = self.root / pidfile
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            for attempt in range(100):  # wait for the daemon to exit; insist after 5 s
                try:
                    os.kill(pid, _signal.SIGKILL if attempt == 50 else 0 if attempt else _signal.SIGTERM)
                except OSError:
                    break
                time.sleep(0.1)
        os.environ.pop("SLURM_CONF", None)
        shutil.rmtree(self.root, ignore_errors=True)
