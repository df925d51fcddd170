"""Real W&B sweeps from the same meta-configuration (the network part is kept thin).

``create``: the hierarchical grid becomes a flat W&B sweep, one parameter per axis with the
axis' aliases as values, plus two constant parameters naming the meta-configuration file and
its digest; ``wandb.sweep`` registers it. ``agent``: ``wandb.agent`` hands each run its flat
parameters; we rebuild the hierarchical config from the meta-configuration in this checkout
(checking the digest) and run the same job, which logs into the sweep's W&B run.
"""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any, Dict, Optional

from genood.orchestration import metaconfig
from genood.runconfig import ConfigError

META_PARAM, DIGEST_PARAM = "_meta_configuration", "_meta_digest"
DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_host() -> tuple:
    """(host, port) of the W&B server this machine talks to: ``$WANDB_BASE_URL`` (a lab's self-hosted server,
    which the wandb library itself also uses for every call) or W&B's public API."""
    import os
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    if not url.hostname:
        raise WandbUnavailable(f"WANDB_BASE_URL={os.environ.get('WANDB_BASE_URL')!r} is not a URL; "
                               "set it like https://wandb.example.org or unset it for W&B's public server.")
    return url.hostname, url.port or (80 if url.scheme == "http" else 443)


class WandbUnavailable(RuntimeError):
    """W&B cannot be used from here (no login, no network)."""


def meta_digest(meta: metaconfig.MetaConfig) -> str:
    return hashlib.sha256(json.dumps(meta.raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sweep_config(meta: metaconfig.MetaConfig, meta_path: str) -> Dict[str, Any]:
    """The flat W&B sweep configuration for a meta-configuration file."""
    cfg = metaconfig.wandb_sweep_config(meta)
    cfg["parameters"] = dict(cfg["parameters"])
    cfg["parameters"].pop("_single", None)
    cfg["parameters"][META_PARAM] = {"value": meta_path}
    cfg["parameters"][DIGEST_PARAM] = {"value": meta_digest(meta)}
    return cfg


def config_from_wandb(params: Dict[str, Any], root: Path) -> tuple[metaconfig.MetaConfig, Dict[str, Any], str]:
    """Rebuild (meta, resolved run config, run name) from a W&B run's flat parameters."""
    if META_PARAM not in params:
        raise ConfigError(f"This W&B sweep was not created by `sweep.py create` (no '{META_PARAM}' parameter).")
    from genood.paths import confined
    path = confined(root, root / str(params[META_PARAM]), "meta-configuration named by the W&B sweep")
    meta = metaconfig.load(path)
    if meta_digest(meta) != params.get(DIGEST_PARAM):
        raise ConfigError(f"{path} differs from the file the sweep was created from; check out the same commit on this machine.")
    choice = metaconfig.choice_from_params(meta, params)
    from genood.orchestration.jobs import JOBS
    cfg = JOBS[meta.job].resolve(metaconfig.config_for(meta, choice))
    return meta, cfg, metaconfig.run_name_for(meta, choice, cfg)


def reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (``$WANDB_BASE_URL`` or the public API) answers a TCP connection (only asked
    when a login exists)."""
    try:
        with socket.create_connection(wandb_host(), timeout=timeout):
            return True
    except OSError:
        return False


def require_wandb() -> None:
    """Fail fast, in one sentence, when W&B sweeps cannot work from here."""
    from genood.tracking import has_login
    if not has_login():
        raise WandbUnavailable("The W&B backend needs a login: run `wandb login` (or set WANDB_API_KEY), "
                               "or use `--backend local`.")
    if not reachable():
        host, port = wandb_host()
        raise WandbUnavailable(f"W&B is not reachable ({host}:{port} did not answer"
                               f"{'; from WANDB_BASE_URL' if host != 'api.wandb.ai' else ''}); "
                               "use `--backend local`, or retry when the server is reachable.")


def create(meta: metaconfig.MetaConfig, meta_path: str) -> str:
    """Register the sweep on W&B and return 'entity/project/sweep_id'."""
    require_wandb()
    import wandb
    sweep_id = wandb.sweep(sweep=sweep_config(meta, meta_path), project=meta.project, entity=meta.entity)
    entity = meta.entity or wandb.Api().default_entity
    return f"{entity}/{meta.project}/{sweep_id}"


def run_agent(full_id: str, root: Path, runs_root: Path, count: Optional[int]) -> None:
    """Run W&B sweep runs in this process until W&B says the sweep is done (or ``count`` runs)."""
    require_wandb()
    import wandb
    from genood.paths import check_sweep_ref
    entity, project, sweep_id = check_sweep_ref(full_id, "W&B sweep id").split("/")

    def one_run():
        run = wandb.init()
        meta, cfg, name = config_from_wandb(dict(run.config), root)
        cfg["run"] = dict(cfg["run"], runs_root=str(runs_root), sweep_id=sweep_id, name=name)
        from genood.orchestration.jobs import JOBS
        JOBS[meta.job].run(cfg)
    wandb.agent(sweep_id, function=one_run, entity=entity, project=project, count=count)


def download_runs(full_id: str, out: Path) -> list:
    """Write config.yaml + metrics.json of the sweep's finished W&B runs under ``out/wandb_runs/``.

    Returns their directories, ready for reports.aggregate.collect_runs.
    """
    require_wandb()
    import wandb

    from genood import runconfig
    from genood import rundir
    dirs = []
    for run in wandb.Api().sweep(full_id).runs:
        if run.state != "finished":
            continue
        metrics: Dict[str, Dict[str, float]] = {}
        for key, value in run.summary.items():
            detector, _, field = key.rpartition("/")
            if detector and field in ("auroc", "aupr_in", "aupr_out", "fpr95", "n_in", "n_ood"):
                metrics.setdefault(detector, {})[field] = value
        cfg = dict(run.config).get("resolved") or dict(run.config)
        from genood.paths import check_component
        directory = out / "wandb_runs" / check_component(run.name, f"name of a run of W&B sweep {full_id}")
        rundir.write_text(directory / "config.yaml", runconfig.dump(cfg))
        rundir.write_json(directory / "metrics.json", metrics)
        dirs.append(directory)
    return dirs
