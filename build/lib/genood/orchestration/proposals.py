"""Random and Bayesian search on the local backend through W&B's own open-source engine
(PyPI ``sweeps``: ``sweeps.next_run``), so both backends share one search semantics."""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

from genood.orchestration import metaconfig


def _metric_value(metrics: Optional[dict], name: str) -> Optional[float]:
    if not metrics:
        return None
    detector, _, key = name.rpartition("/")
    return (metrics.get(detector) or {}).get(key)


def propose_next(meta: metaconfig.MetaConfig, sweep: Dict[str, Any], runs: List[Dict[str, Any]]) -> Optional[dict]:
    """The next run of a random/bayes sweep, or None once ``run_cap`` is reached."""
    cap = sweep.get("run_cap")
    if cap is not None and len(runs) >= int(cap):
        return None
    if cap is None and meta.method == "random" and len(runs) >= meta.size:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        from sweeps import RunState, SweepRun

    state = {"queued": RunState.pending, "running": RunState.running, "finished": RunState.finished,
             "failed": RunState.failed}
    metric = (meta.metric or {}).get("name")
    history = []
    for r in runs:
        summary = {}
        value = _metric_value(r["metrics"], metric) if metric else None
        if value is not None:
            summary[metric] = value
        history.append(SweepRun(name=r["name"], state=state[r["status"]], summaryMetrics=summary,
                                config={k: {"value": v} for k, v in r["params"].items()}))
    proposal = sweeps.next_run(metaconfig.wandb_sweep_config(meta), history, validate=False)
    if proposal is None:
        return None
    params = {k: v["value"] for k, v in proposal.config.items() if k in {a.identifier for a in meta.axes}}
    choice = metaconfig.choice_from_params(meta, params)
    from genood.orchestration.jobs import JOBS
    cfg = JOBS[meta.job].resolve(metaconfig.config_for(meta, choice))
    name = metaconfig.run_name_for(meta, choice, cfg)
    existing = {r["name"] for r in runs}
    k = 1
    base = name
    while name in existing:  # random search may draw a grid point again
        name, k = f"{base}-r{k}", k + 1
    return {"name": name, "params": {a: str(v) for a, v in params.items()}, "digest": metaconfig.config_digest(cfg),
            "config": _placed(cfg, sweep, name)}


def _placed(cfg: Dict[str, Any], sweep: Dict[str, Any], name: str) -> Dict[str, Any]:
    """Pin the run to the sweep's runs root, sweep id and run name (its run directory)."""
    cfg = dict(cfg)
    cfg["run"] = dict(cfg["run"], runs_root=sweep["runs_root"], sweep_id=sweep["id"], name=name)
    return cfg


def should_stop(meta: metaconfig.MetaConfig, runs: List[Dict[str, Any]], histories: Dict[str, list], name: str) -> bool:
    """Whether W&B's early-termination rule (``early_terminate``, e.g. hyperband) stops run ``name`` now."""
    if not meta.raw.get("early_terminate") or not meta.metric:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        from sweeps import RunState, SweepRun
    state = {"queued": RunState.pending, "running": RunState.running, "finished": RunState.finished,
             "failed": RunState.failed, "stopped": RunState.finished}
    metric = meta.metric["name"]
    history = [SweepRun(name=r["name"], state=state[r["status"]], config={k: {"value": v} for k, v in r["params"].items()},
                        sampledHistory=[{metric: v, "_step": s} for s, v in histories.get(r["name"], [])])
               for r in runs]
    config = dict(metaconfig.wandb_sweep_config(meta), method="grid" if meta.method == "grid" else meta.method)
    return any(r.name == name for r in sweeps.stop_runs(config, history))
