"""Weights & Biases tracking: the only module that imports wandb.

``tracking.mode: auto`` logs online when a W&B login exists (``WANDB_API_KEY`` or a netrc
entry from ``wandb login``) and offline otherwise, under the run directory
(``<run>/wandb/``), to be uploaded later with ``wandb sync <run>/wandb/offline-run-*``.
``tracking.wandb: false`` switches it off. An explicit ``WANDB_MODE`` in the environment wins.
"""
from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

__all__ = ["has_login", "resolve_mode", "artifact_name", "Tracker"]


def has_login() -> bool:
    """True when W&B credentials are configured on this machine: WANDB_API_KEY, or a netrc entry (from
    ``wandb login``) for W&B or for the self-hosted server named by WANDB_BASE_URL."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    from urllib.parse import urlparse
    server = urlparse(os.environ.get("WANDB_BASE_URL") or "").hostname
    try:
        auth = netrc.netrc(os.path.expanduser("~/.netrc"))
        return any(host for host in auth.hosts if "wandb" in host or (server and host.split(":")[0] == server))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(cfg: Dict[str, Any]) -> Optional[str]:
    """'online', 'offline' or None (tracking off) for a run configuration."""
    tcfg = cfg["tracking"]
    if not tcfg["wandb"]:
        return None
    env = os.environ.get("WANDB_MODE")
    if env in ("disabled", "dryrun", "offline", "online"):
        return {"dryrun": "offline"}.get(env, env) if env != "disabled" else None
    if tcfg["mode"] == "auto":
        return "online" if has_login() else "offline"
    return tcfg["mode"]


def artifact_name(name: str, limit: int = 128) -> str:
    """A W&B artifact name for ``name``: letters, digits, '-', '_' and '.' only, at most ``limit`` characters
    (long run names, e.g. of npz datasets with paths, keep their head and a hash of the whole)."""
    import hashlib
    import re

    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    if len(clean) <= limit:
        return clean
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{clean[:limit - 11]}-{digest}"


class Tracker:
    """A thin wrapper over one W&B run; every method is a no-op when tracking is off."""

    def __init__(self, cfg: Dict[str, Any], run_directory: Path, name: str, job_type: str,
                 warn: Callable[[str], None] = print):
        self.run = None
        self.owned = False
        self.warn = warn
        from genood import runconfig
        family = cfg.get("model", {}).get("family")
        self.loss_name = runconfig.FAMILIES[family].loss if family in runconfig.FAMILIES else "loss"
        mode = resolve_mode(cfg)
        if mode is None:
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import wandb
        self._wandb = wandb
        self.owned = True
        if wandb.run is not None:  # inside a W&B sweep agent: log into the run the agent started
            self.run, self.owned = wandb.run, False
            self.run.config.update({"resolved": cfg}, allow_val_change=True)
            return
        kwargs = dict(project=cfg["tracking"]["project"], entity=cfg["tracking"]["entity"], name=name,
                      id=name[-40:].replace("/", "_"), resume="allow", group=str(cfg["run"]["sweep_id"]),
                      job_type=job_type, config=cfg, dir=str(run_directory), reinit="finish_previous")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as exc:
            if mode == "online":
                warn(f"W&B online logging failed ({exc}); logging offline instead (upload later with `wandb sync`).")
                self.run = wandb.init(mode="offline", **kwargs)
            else:
                warn(f"W&B tracking disabled for this run: {exc}")
        self.mode = mode

    def log(self, values: Dict[str, Any], step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def training_curve(self, step: int, loss: float) -> None:
        """Training callback: log the training loss (``train/<loss>``, the family spec's name: flows
        ``train/bits_per_dim``) every 10 steps (the cadence early termination also uses)."""
        if step % 10 == 0:
            self.log({f"train/{self.loss_name}": loss}, step=step)

    def summary(self, values: Dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def table(self, key: str, frame) -> None:
        if self.run is not None:
            self.run.log({key: self._wandb.Table(dataframe=frame)})

    def charts(self, table, max_points: int = 2000, seed: int = 0) -> None:
        """W&B custom charts as the seeds log them: every score against the log-likelihood
        (``wandb.plot.scatter``) and the log-likelihood histogram of each split (``wandb.plot.histogram``),
        on a seeded subsample of at most ``max_points`` rows per split."""
        if self.run is None or "log_likelihood" not in table:
            return
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(seed)
        parts = []
        for _, g in table.groupby("split", sort=False):
            parts.append(g.iloc[np.sort(rng.choice(len(g), max_points, replace=False))] if len(g) > max_points else g)
        sub = pd.concat(parts).replace([np.inf, -np.inf], np.nan)
        plot = self._wandb.plot
        charts = {}
        for split, g in sub.groupby("split", sort=False):
            t = self._wandb.Table(dataframe=g[["log_likelihood"]].dropna())
            charts[f"charts/log_likelihood_histogram/{split}"] = plot.histogram(
                t, "log_likelihood", title=f"log-likelihood (nats), {split}")
        for column in [c for c in sub.columns if c not in ("split", "dataset", "index", "log_likelihood")]:
            frame = sub[["split", "log_likelihood", column]].dropna()
            if len(frame):
                charts[f"charts/{column}_vs_log_likelihood"] = plot.scatter(
                    self._wandb.Table(dataframe=frame), "log_likelihood", column, title=f"{column} vs log-likelihood")
        self.run.log(charts)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        if self.run is not None and Path(path).exists():
            art = self._wandb.Artifact(name=artifact_name(name), type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

    def finish(self) -> None:
        if self.run is not None and self.owned:
            self.run.finish()
        self.run = None
