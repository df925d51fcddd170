"""Agents as one job array through submitit: on Slurm (``--slurm``) or on this machine (``--local``).

``python sweep.py launch <sweep-id> --slurm --agents N [--gpus-per-agent 1] [--partition P] [--time MIN]
[--mem GB]`` submits N array tasks; each runs one ordinary agent (:func:`orchestration.agent.run_agent`) on
the sweep's store, pinned to the GPU(s) Slurm gives the task (``CUDA_VISIBLE_DEVICES``, which the agent
records in its name). Logs go to ``<runs_root>/<sweep-id>/slurm/``. ``--local`` runs the same array through
submitit's local executor, one process per task.

Pre-emption and time limits: submitit signals the task before Slurm kills it; the task then hands its
current run back to the queue (as the agent does on SIGTERM) and asks submitit to requeue the array task,
which starts a fresh agent. A task killed without warning leaves its run under a lease that expires, and
whichever agent claims it next resumes it from its checkpoint (the run directory is a function of the
sweep and the run name). Agents on several Slurm nodes need a store every node reaches: PostgreSQL
(``--store postgresql://...``), not the SQLite file (the agents refuse a network file system).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional

from genood.paths import PACKAGE_DIR


class AgentTask:
    """One array task: an agent on the sweep until it is drained (picklable for submitit)."""

    def __init__(self, locator: str, sweep_id: str, runs_root: str, lease: float = 60.0, count: Optional[int] = None):
        self.locator, self.sweep_id, self.runs_root = locator, sweep_id, runs_root
        self.lease, self.count = lease, count
        self.current: Optional[tuple] = None  # (run name, agent name) while a run is held

    def __call__(self, index: int) -> Dict[str, int]:
        import logging

        from genood.orchestration.agent import agent_name, run_agent

        gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or None
        log = logging.getLogger(f"agent.task{index}")
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(f"%(asctime)s task{index} {socket.gethostname()} %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        me = agent_name(gpu)
        return run_agent(self.locator, self.sweep_id, gpu=gpu, count=self.count, lease=self.lease, log=log,
                         on_start=lambda name: setattr(self, "current", (name, me)), runs_root=Path(self.runs_root))

    def checkpoint(self, index: int):
        """submitit calls this on pre-emption / time-out: give the held run back, then requeue this task."""
        import submitit

        from genood.orchestration.store import open_store

        if self.current is not None:
            store = open_store(self.locator)
            try:
                store.release(self.sweep_id, *self.current)
            finally:
                store.close()
            self.current = None
        return submitit.helpers.DelayedSubmission(self, index)


def launch(sweep_id: str, locator: str, runs_root: Path, agents: int, slurm: bool, gpus_per_agent: int = 0,
           partition: Optional[str] = None, time_min: Optional[int] = None, mem_gb: Optional[float] = None,
           cpus_per_agent: Optional[int] = None, lease: float = 60.0, count: Optional[int] = None,
           extra: Optional[Dict[str, Any]] = None) -> List[Any]:
    """Submit ``agents`` array tasks; returns submitit's jobs."""
    import submitit

    if agents < 1:
        raise ValueError("--agents must be at least 1.")
    folder = Path(runs_root) / sweep_id / "slurm" / "%j"
    if slurm:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: Dict[str, Any] = {"slurm_array_parallelism": agents, "name": f"ood-{sweep_id}"}
        if gpus_per_agent:
            params["gpus_per_node"] = gpus_per_agent
        if partition:
            params["slurm_partition"] = partition
        if time_min:
            params["timeout_min"] = int(time_min)
        if mem_gb:
            params["mem_gb"] = float(mem_gb)
        if cpus_per_agent:
            params["cpus_per_task"] = int(cpus_per_agent)
        params.update(extra or {})
        executor.update_parameters(**params)
    else:
        executor = submitit.LocalExecutor(folder=folder)
        params = {"timeout_min": int(time_min or 60 * 24 * 7)}
        if gpus_per_agent:
            params["gpus_per_node"] = gpus_per_agent
        executor.update_parameters(**params)
    # the tasks unpickle AgentTask: they must import this project wherever they start
    root = str(PACKAGE_DIR.parent)
    if root not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    task = AgentTask(locator, sweep_id, str(runs_root), lease=lease, count=count)
    return _submit(executor, task, agents, sweep_id, "Slurm" if slurm else "submitit's local executor")


class SubmissionFailed(RuntimeError):
    """The scheduler refused the job array (one sentence quoting its own error)."""


def scheduler_error(text: str) -> str:
    """The scheduler's own error lines (``sbatch: error: ...``, ``sbatch: fatal: ...``), joined; else the last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    picked = (errors or lines)[-3:]
    return " / ".join(picked) if picked else "no message"


def _submit(executor, task: AgentTask, agents: int, sweep_id: str, where: str) -> List[Any]:
    """``executor.map_array``; a refused submission (no controller, bad partition, rejected limits, no sbatch)
    becomes one sentence quoting the scheduler. Nothing in the sweep's store changes either way."""
    import contextlib
    import io
    import subprocess

    from submitit.core.utils import FailedJobError

    chatter = io.StringIO()  # submitit prints sbatch's stderr before raising: we quote it once, in the sentence
    try:
        with contextlib.redirect_stderr(chatter):
            return executor.map_array(task, list(range(agents)))
    except (FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, subprocess.CalledProcessError) else exc
        said = getattr(cause, "stderr", None) or str(exc) or chatter.getvalue()
        if isinstance(exc, FileNotFoundError):
            said = f"{exc.filename or 'sbatch'} not found"
        raise SubmissionFailed(f"{where} refused the {agents} agent task(s) of {sweep_id} ({scheduler_error(said)}); "
                               f"the sweep is unchanged: check the controller, --partition and the limits (--time, --mem, "
                               f"--gpus-per-agent), then run `python sweep.py launch {sweep_id} ...` again.") from exc
