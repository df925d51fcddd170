"""The local agent loop: claim a run, run its job in this process with a heartbeat, record the outcome.

An agent runs until the sweep is drained (nothing queued, nothing running under a live lease)
or until it has run ``count`` runs. Runs held by a vanished agent come back once their lease
expires, and the job resumes from its checkpoint because the run directory is a function of
(sweep id, run name). SIGTERM/SIGINT give the current run back to the queue and stop the agent.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from genood.orchestration.jobs import JOBS
from genood.orchestration.store import Store, open_store

__all__ = ["Terminated", "EarlyStopped", "agent_name", "run_agent"]


class Terminated(BaseException):
    """Raised in the agent's main thread on SIGTERM/SIGINT."""


class EarlyStopped(Exception):
    """Raised from a job's progress callback when the sweep's early-termination rule stops the run."""


def _progress_callback(store: Store, sweep: Dict[str, Any], name: str, every: int = 10) -> Callable[[int, float], None]:
    """Records the job's metric every ``every`` steps and applies early termination (if configured)."""
    from genood.orchestration import metaconfig
    from genood.orchestration.proposals import should_stop

    meta = metaconfig.parse(sweep["meta"], sweep["source"])
    active = bool(meta.raw.get("early_terminate") and meta.metric)

    def report(step: int, value: float) -> None:
        if not active or step % every:
            return
        store.record_history(sweep["id"], name, step, value)
        if should_stop(meta, store.runs(sweep["id"]), store.histories(sweep["id"]), name):
            raise EarlyStopped(f"{name} stopped early at step {step} by {meta.raw['early_terminate'].get('type', 'early_terminate')}")
    return report


def agent_name(gpu: Optional[str]) -> str:
    return f"{socket.gethostname()}-gpu{gpu if gpu not in (None, '') else 'none'}-pid{os.getpid()}"


class _Heartbeat(threading.Thread):
    def __init__(self, locator: str, sweep_id: str, name: str, agent: str, lease: float, every: float):
        super().__init__(daemon=True)
        self.args = (sweep_id, name, agent, lease)
        self.locator, self.every = locator, every
        self.stop_event = threading.Event()
        self.lost = False

    def run(self) -> None:
        store = open_store(self.locator)
        try:
            while not self.stop_event.wait(self.every):
                if not store.heartbeat(*self.args):
                    self.lost = True
                    return
        finally:
            store.close()


def _propose(store: Store, sweep: Dict[str, Any]) -> bool:
    """For random/bayes sweeps: ask W&B's open-source engine (``sweeps``) for the next run."""
    from genood.orchestration import metaconfig
    from genood.orchestration.proposals import propose_next

    meta = metaconfig.parse(sweep["meta"], sweep["source"])
    run = propose_next(meta, dict(sweep, runs_root=str(store.runs_root)), store.runs(sweep["id"]))
    if run is None:
        return False
    store.add_run(sweep["id"], run)
    return True


def _open_sweep(db_path, sweep_id: str, me: str, runs_root: Optional[Path]):
    """The store and the sweep (one sentence when the sweep is not there or runs on another host)."""
    from genood.orchestration.hostcheck import check_single_host

    store = open_store(db_path, runs_root=runs_root)
    sweep = store.sweep(sweep_id)
    try:
        if sweep is None:
            raise KeyError(f"Sweep '{sweep_id}' not found in {store.describe()}; create it with "
                           f"`python sweep.py create --config <meta.yaml>` (with the same --store).")
        check_single_host(store, sweep_id, me, socket.gethostname())
    except BaseException:
        store.close()
        raise
    return store, sweep


def _run_claim(store, sweep, claim, me: str, lease: float, log, done: Dict[str, int]) -> None:
    """Run one claimed run under a heartbeat and record how it ended in the store and in ``done``."""
    sweep_id = sweep["id"]
    beat = _Heartbeat(store.locator, sweep_id, claim.name, me, lease, max(0.05, lease / 4))
    beat.start()
    t0 = time.perf_counter()
    try:
        directory = JOBS[sweep["job"]].run(claim.config, callbacks=[_progress_callback(store, sweep, claim.name)])
    except EarlyStopped as exc:
        store.stop(sweep_id, claim.name, me)
        done["stopped"] += 1
        log.info(str(exc))
    except Terminated:
        store.release(sweep_id, claim.name, me)
        done["released"] += 1
        log.info(f"released {claim.name} back to the queue (terminated)")
        raise
    except Exception:
        status = store.fail(sweep_id, claim.name, me, traceback.format_exc(limit=20), sweep["max_attempts"])
        done["failed" if status == "failed" else "requeued"] += 1
        log.warning(f"{claim.name} raised; {'marked failed' if status == 'failed' else 're-queued'}")
    else:
        metrics_path = Path(directory) / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        store.finish(sweep_id, claim.name, me, str(directory), metrics)
        done["finished"] += 1
        log.info(f"finished {claim.name} in {time.perf_counter() - t0:.1f}s")
    finally:
        beat.stop_event.set()


def run_agent(db_path, sweep_id: str, gpu: Optional[str] = None, count: Optional[int] = None,
              lease: float = 60.0, poll: float = 2.0, log: Optional[logging.Logger] = None,
              on_start: Optional[Callable[[str], None]] = None, runs_root: Optional[Path] = None) -> Dict[str, int]:
    """Work on a local sweep until it is drained or ``count`` runs were done. Returns counters.
    ``db_path``: the store's locator (a SQLite file or a ``postgresql://`` URL)."""
    log = log or logging.getLogger("agent")
    me = agent_name(gpu)
    store, sweep = _open_sweep(db_path, sweep_id, me, runs_root)
    done = {"finished": 0, "failed": 0, "requeued": 0, "released": 0, "stopped": 0}
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def terminate(signum, frame):
        raise Terminated(signal.Signals(signum).name)
    for s in previous:
        signal.signal(s, terminate)
    log.info(f"agent {me} on sweep {sweep_id} ({sweep['job']}, {sweep['method']})")
    try:
        while count is None or sum(done[k] for k in ("finished", "failed", "requeued", "stopped")) < count:
            claim = store.claim(sweep_id, me, lease)
            if claim is None:
                if sweep["method"] != "grid" and _propose(store, sweep):
                    continue
                if store.counts(sweep_id)["running"] == 0:
                    break  # drained
                time.sleep(poll)  # others hold runs; wait in case their agents vanished
                continue
            log.info(f"claimed {claim.name}{' (resuming)' if claim.resumed else ''}")
            if on_start:
                on_start(claim.name)
            _run_claim(store, sweep, claim, me, lease, log, done)
    except Terminated:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        store.close()
    return done
