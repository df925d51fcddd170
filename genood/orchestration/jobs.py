"""Job kinds a sweep can run. Each has ``resolve(raw) -> config`` (validation, defaults) and
``run(config, run_directory_name) -> run directory``.

* ``train``: ``train.py``'s job (models.runs.run_training).
* ``ood``: ``main_ood.py``'s job (ood.runner.run_ood).
* ``sleep``: a trivial job for measuring the orchestration itself (bench, tests): it sleeps,
  optionally reports a fake metric ``curve`` step by step, optionally fails, and writes a
  metrics.json. ``{"sleep": seconds, "value": x, "fail": bool, "curve": [values]}``. With
  ``steps: N`` it is a checkpointed computation instead (the fault tests' job): N steps of a seeded
  recurrence over ``sleep`` seconds, its state saved atomically after every step and resumed from
  there, every step logged with the writer's pid; metrics.json carries the final state's sha256,
  which :func:`sleep_state` computes without interruptions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

from genood import runconfig
from genood import rundir
@dataclass(frozen=True)
class Job:
    resolve: Callable[[Dict[str, Any]], Dict[str, Any]]
    run: Callable[..., Path]  # run(config, callbacks=None): callbacks get (step, value) as the job progresses


def _run_train(cfg: Dict[str, Any], callbacks=None) -> Path:
    from genood.models.runs import run_training
    return run_training(cfg, callbacks=callbacks)


def _run_ood(cfg: Dict[str, Any], callbacks=None) -> Path:
    from genood.ood.runner import run_ood
    return run_ood(cfg, callbacks=callbacks)


SLEEP_DEFAULTS = {"sleep": 0.0, "value": 0.5, "fail": False, "curve": [], "steps": 0, "seed": 0,
                  "run": {"name": None, "runs_root": "runs", "sweep_id": "single"}}


def _resolve_sleep(raw: Dict[str, Any]) -> Dict[str, Any]:
    runconfig.validate(raw, SLEEP_DEFAULTS)
    return runconfig.deep_merge(SLEEP_DEFAULTS, raw)


def _advance(state, seed: int, step: int):
    import numpy as np
    return 0.5 * state + np.random.default_rng([int(seed), int(step)]).standard_normal(state.shape)


def sleep_state(seed: int, steps: int):
    """The final state of the checkpointed sleep job, computed in one go (what an interrupted run must match)."""
    import numpy as np
    state = np.zeros(64)
    for step in range(int(steps)):
        state = _advance(state, seed, step)
    return state


def _state_digest(state) -> str:
    import hashlib
    return hashlib.sha256(state.astype("<f8").tobytes()).hexdigest()


def _run_steps(cfg: Dict[str, Any], directory: Path) -> str:
    """The checkpointed computation: resume from state.npz, one atomic save and one log line per step."""
    import numpy as np
    path, steps = directory / "state.npz", int(cfg["steps"])
    state, start = np.zeros(64), 0
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            state, start = f["state"], int(f["step"])

    def save(tmp: Path, state=None, step=0) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, state=state, step=np.array(step))
    for step in range(start, steps):
        time.sleep(float(cfg["sleep"]) / steps)
        state = _advance(state, cfg["seed"], step)
        rundir.atomic_write(path, lambda tmp, s=state, k=step + 1: save(tmp, s, k))
        with open(directory / "executions.log", "a") as fh:
            fh.write(f"{os.getpid()} step {step + 1}\n")
    return _state_digest(state)


def _run_sleep(cfg: Dict[str, Any], callbacks=None) -> Path:
    directory = rundir.run_dir(cfg, cfg["run"]["name"] or "sleep")
    rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))
    with open(directory / "executions.log", "a") as fh:  # one line per execution: lets tests count them
        fh.write(f"{os.getpid()} {time.time():.3f} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")
    if int(cfg["steps"]) > 0:
        digest = _run_steps(cfg, directory)
        v = float(cfg["value"])
        rundir.write_json(directory / "metrics.json", {"sleep": {"auroc": v, "aupr_in": v, "aupr_out": v, "fpr95": 1 - v,
                                                                 "n_in": 1, "n_ood": 1},
                                                       "state": {"sha256": digest, "steps": int(cfg["steps"])}})
        return directory
    curve = list(cfg["curve"])
    for step, value in enumerate(curve, start=1):  # a fake training curve, reported like training's bits/dim
        time.sleep(float(cfg["sleep"]) / len(curve))
        for cb in callbacks or []:
            cb(step, float(value))
    if not curve:
        time.sleep(float(cfg["sleep"]))
    if cfg["fail"]:
        raise RuntimeError(f"sleep job asked to fail (value={cfg['value']})")
    v = float(cfg["value"])
    rundir.write_json(directory / "metrics.json", {"sleep": {"auroc": v, "aupr_in": v, "aupr_out": v, "fpr95": 1 - v,
                                                             "n_in": 1, "n_ood": 1}})
    return directory


JOBS: Dict[str, Job] = {
    "train": Job(lambda raw: runconfig.resolve(raw), _run_train),
    "ood": Job(lambda raw: runconfig.resolve(raw), _run_ood),
    "sleep": Job(_resolve_sleep, _run_sleep),
}
