"""Job kinds a sweep can run. Each has ``resolve(raw) -> config`` (validation, defaults) and
``run(config, run_directory_name) -> run directory``.

* ``train``: ``train.py``'s job (models.training.run_training).
* ``ood``: ``main_ood.py``'s job (ood.runner.run_ood).
* ``sleep``: a trivial job for measuring the orchestration itself (bench, tests): it sleeps,
  optionally reports a fake metric ``curve`` step by step, optionally fails, and writes a
  metrics.json. ``{"sleep": seconds, "value": x, "fail": bool, "curve": [values]}``.
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
    from genood.models.training import run_training
    return run_training(cfg, callbacks=callbacks)


def _run_ood(cfg: Dict[str, Any], callbacks=None) -> Path:
    from genood.ood.runner import run_ood
    return run_ood(cfg, callbacks=callbacks)


SLEEP_DEFAULTS = {"sleep": 0.0, "value": 0.5, "fail": False, "curve": [],
                  "run": {"name": None, "runs_root": "runs", "sweep_id": "single"}}


def _resolve_sleep(raw: Dict[str, Any]) -> Dict[str, Any]:
    runconfig.validate(raw, SLEEP_DEFAULTS)
    return runconfig.deep_merge(SLEEP_DEFAULTS, raw)


def _run_sleep(cfg: Dict[str, Any], callbacks=None) -> Path:
    directory = rundir.run_dir(cfg, cfg["run"]["name"] or "sleep")
    rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))
    with open(directory / "executions.log", "a") as fh:  # one line per execution: lets tests count them
        fh.write(f"{os.getpid()} {time.time():.3f} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")
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
