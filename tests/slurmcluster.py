"""A real single-node Slurm cluster for the launcher tests (Debian's ``slurm-wlm`` and ``munge``).

Writes a slurm.conf for this host into a temporary folder (state, spool, logs inside it; ports 16817/16818),
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
            "AccountingStorageType=accounting_storage/none", "SlurmctldPort=16817", "SlurmdPort=16818",
            f"NodeName={self.host} CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        os.environ["SLURM_CONF"] = str(self.conf)
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
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
        subprocess.run(["scontrol", "shutdown"], capture_output=True, timeout=60)
        for pidfile in ("slurmctld.pid", "slurmd.pid"):
            path = self.root / pidfile
            for _ in range(50):
                if not path.exists():
                    break
                try:
                    os.kill(int(path.read_text().strip()), 0)
                except (OSError, ValueError):
                    break
                time.sleep(0.1)
        os.environ.pop("SLURM_CONF", None)
        shutil.rmtree(self.root, ignore_errors=True)
