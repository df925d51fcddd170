"""The local agent loop: claim a run, run its job in this process with a heartbeat, record the outcome.

An agent runs until the sweep is drained (nothing queued, nothing running under a live lease)
or until it has run ``count`` runs. Runs held by a vanished agent come back once their lease
expires, and the job resumes from its checkpoint because the run directory is a function of
(sweep id, run name). SIGTERM/SIGINT give the current run back to the queue and stop the agent.

Faults: every store call goes through :class:`orchestration.resilient.ResilientStore` (a server restart or a
locked SQLite file is waited out, logged, up to ``outage_limit`` seconds; longer ends the agent with one
sentence). The agent holds the run directory's lock (``rundir.run_lock``) for as long as it runs a job, so a
run whose lease expired during an outage while its agent kept working is never run twice at once: the next
claimant finds the directory locked and leaves the run to its writer (``Store.defer``). A job that fills the
disk (ENOSPC) hands its run back without counting a failure and stops the agent with one sentence naming
the file; the run's finished files and last checkpoint stay intact (every write is atomic).
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

from genood import rundir
from genood.paths import shown_name
from genood.threads import agent_presence
from genood.orchestration.jobs import JOBS
from genood.orchestration.resilient import DEFAULT_OUTAGE_LIMIT, ResilientStore, StoreOutage
from genood.orchestration.store import Store, open_store

__all__ = ["Terminated", "EarlyStopped", "agent_name", "run_agent", "disk_full_error"]


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
    """Renews the run's lease every ``every`` seconds on its own connection; waits out store outages for as long
    as the job runs (the job needs no store), logging them."""

    def __init__(self, locator: str, sweep_id: str, name: str, agent: str, lease: float, every: float,
                 log: Optional[logging.Logger] = None, runs_root: Optional[Path] = None):
        super().__init__(daemon=True)
        self.args = (sweep_id, name, agent, lease)
        self.locator, self.every, self.log, self.runs_root = locator, every, log, runs_root
        self.stop_event = threading.Event()
        self.lost = False

    def run(self) -> None:
        store = None
        try:
            attempt = max(0.25, min(10.0, self.every * 2))  # a busy store shows (and is logged) well within a lease
            store = ResilientStore(self.locator, runs_root=self.runs_root, limit=float("inf"), log=self.log,
                                   interrupt=self.stop_event, attempt_timeout=attempt,
                                   store=open_store(self.locator, runs_root=self.runs_root, timeout=attempt))
            while not self.stop_event.wait(self.every):
                held = store.heartbeat(*self.args)
                if not held and not self.lost and self.log is not None:
                    self.log.warning(f"{self.args[1]} is no longer running in the store (re-queued by hand?); the job "
                                     f"goes on and records its result when it ends")
                self.lost = not held
        except StoreOutage:
            pass  # stopped while the store was away
        except Exception as exc:  # the store could not be opened at all: the lease will expire, the job goes on
            if self.log is not None:
                self.log.warning(f"heartbeat of {self.args[1]} stopped: {exc}")
        finally:
            if store is not None:
                store.close()


def disk_full_error(exc: BaseException) -> Optional[OSError]:
    """The ENOSPC error (file system full) in ``exc``'s chain, if any."""
    import errno
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _claim_directory(config: Dict[str, Any]) -> Optional[Path]:
    """The run directory of a claimed run (``<runs_root>/<sweep id>/<run name>``), when its config names it."""
    from genood.paths import check_component, confined
    run = config.get("run") or {}
    if not (run.get("runs_root") and run.get("sweep_id") and run.get("name")):
        return None
    root = rundir.runs_root(config)
    path = root / check_component(run["sweep_id"], "sweep id of a claimed run") / check_component(run["name"], "name of a claimed run")
    return confined(root, path, "run directory of a claimed run")


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


def _open_sweep(db_path, sweep_id: str, me: str, runs_root: Optional[Path], log, outage_limit: float):
    """The store (through :class:`ResilientStore`: a busy SQLite file or a restarting server is waited out from
    the start) and the sweep (one sentence when the sweep is not there or runs on another host)."""
    from genood.orchestration.hostcheck import check_single_host

    attempt = max(0.5, min(10.0, outage_limit / 4))  # one attempt's wait on a busy SQLite file, then logged and retried
    store = ResilientStore(str(db_path), runs_root=runs_root, limit=outage_limit, log=log, attempt_timeout=attempt)
    try:
        sweep = store.sweep(sweep_id)
        if sweep is None:
            raise KeyError(f"Sweep '{sweep_id}' not found in {store.describe()}; create it with "
                           f"`python sweep.py create --config <meta.yaml>` (with the same --store).")
        check_single_host(store, sweep_id, me, socket.gethostname())
    except BaseException:
        store.close()
        raise
    return store, sweep


def _give_back_if_full(store, sweep_id: str, name: str, me: str, exc: BaseException, directory, done) -> None:
    """A job that filled the disk: the run goes back to the queue uncounted (not its fault) and this agent stops
    with one sentence naming the file (:class:`rundir.DiskFull`). Returns when ``exc`` is anything else."""
    import errno
    full = disk_full_error(exc)
    if full is None:
        return
    store.release(sweep_id, name, me)
    done["released"] += 1
    where = full.filename or directory
    raise rundir.DiskFull(errno.ENOSPC, f"{rundir.disk_full_sentence(full, where)} Run {name} went back to the queue "
                          f"with its finished files and last checkpoint intact; free space (or start an agent where the "
                          f"runs root has room) and it resumes from there.", str(where)) from exc


def _run_claim(store, sweep, claim, me: str, lease: float, log, done: Dict[str, int]) -> None:
    """Run one claimed run under a heartbeat, holding its directory's lock, and record how it ended in the store
    and in ``done``."""
    sweep_id = sweep["id"]
    from genood.paths import UnsafeName
    try:
        directory = _claim_directory(claim.config)
    except UnsafeName as exc:  # the store holds a name that is not a folder name (written by another machine)
        store.fail(sweep_id, claim.name, me, str(exc), 1)
        done["failed"] += 1
        log.warning(f"{shown_name(claim.name)} failed without running: {exc}")
        return
    lock = None
    if directory is not None:
        try:
            lock = rundir.run_lock(directory).acquire()
        except rundir.RunLocked as exc:
            store.defer(sweep_id, claim.name, me, lease)
            done["deferred"] += 1
            log.info(f"left {claim.name} to the process still writing it ({exc})")
            return
        except OSError as exc:  # not even the lock file could be written
            _give_back_if_full(store, sweep_id, claim.name, me, exc, directory, done)
            raise
        if not store.holds(sweep_id, claim.name, me):  # its previous writer finished it between our claim and the lock
            lock.release()
            done["deferred"] += 1
            log.info(f"{claim.name} was finished by its previous writer; nothing to do")
            return
    beat = _Heartbeat(store.locator, sweep_id, claim.name, me, lease, max(0.05, lease / 4), log=log, runs_root=store.runs_root)
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
    except Exception as exc:
        _give_back_if_full(store, sweep_id, claim.name, me, exc, directory, done)
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
        if lock is not None:
            lock.release()


def run_agent(db_path, sweep_id: str, gpu: Optional[str] = None, count: Optional[int] = None,
              lease: float = 60.0, poll: float = 2.0, log: Optional[logging.Logger] = None,
              on_start: Optional[Callable[[str], None]] = None, runs_root: Optional[Path] = None,
              outage_limit: float = DEFAULT_OUTAGE_LIMIT, claim_times: Optional[list] = None) -> Dict[str, int]:
    """Work on a local sweep until it is drained or ``count`` runs were done. Returns counters.
    ``db_path``: the store's locator (a SQLite file or a ``postgresql://`` URL); ``outage_limit``: the longest
    store outage waited out (seconds); ``claim_times``: a list that receives each claim's latency (seconds)."""
    log = log or logging.getLogger("agent")
    me = agent_name(gpu)
    store, sweep = _open_sweep(db_path, sweep_id, me, runs_root, log, outage_limit)
    done = {"finished": 0, "failed": 0, "requeued": 0, "released": 0, "stopped": 0, "deferred": 0}
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def terminate(signum, frame):
        raise Terminated(signal.Signals(signum).name)
    for s in previous:
        signal.signal(s, terminate)
    log.info(f"agent {me} on sweep {sweep_id} ({sweep['job']}, {sweep['method']})")
    with agent_presence():  # runs without run.num_threads share this host's cores among its agents
        try:
            while count is None or sum(done[k] for k in ("finished", "failed", "requeued", "stopped")) < count:
                t_claim = time.perf_counter()
                claim = store.claim(sweep_id, me, lease)
                if claim_times is not None:
                    claim_times.append(time.perf_counter() - t_claim)
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
            if store.outages:
                log.info(f"survived {store.outages} store outage(s), the longest {store.longest_outage:.1f} s")
    done["outages"] = store.outages
    return done
