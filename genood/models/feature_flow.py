"""Flows on features (seed 003, Kirichenko et al. 2020, Section 7): a normalizing flow on embeddings of the
images instead of their pixels: the ``feature_flow`` family.

No pretrained network can be downloaded here, so the feature extractor is one of our own runs trained on the
in-distribution training split: ``model.features`` names a finished hierarchical-VAE training run (its run
directory or checkpoint.pt) or an hvae preset (the default ``hvae_tiny``), which is then trained on this run's
data, seed and in_val holdout, or found among finished runs of that identity (:mod:`models.runs`); its encoder's posterior means of the top (dense) stochastic layers are the
features (``HierarchicalVAE.features``, K numbers per image). The extractor is frozen and stored inside this
model's checkpoint. Before training and scoring (``configure``) the extractor's configuration is checked
against this run's: the same in-distribution dataset and the same held-out in_val, so it never saw in_val,
the test split or any OOD set. The flow is a coupling flow on R^K (:class:`models.flows.TabularFlow`'s layers)
after an actnorm that standardises the features from the first training batch.

``log_prob(x)`` is in nats of the feature vector, NOT a density on [0,256)^D (``log_prob_unit`` says so, and
every metrics entry carries it); bits/dim are per feature dimension. ``sample`` draws features from the flow
and decodes them through the VAE's decoder (lower layers from their conditional priors). Every metrics entry
names the extractor run (``metric_info``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from genood.models.base import BitsPerDimObjective
from genood.models.coupling_flows import ActNorm


def _extractor_checkpoint(value: Any) -> Path:
    from genood.models.training import CHECKPOINT

    if not value:
        raise ValueError("model.features is not set: name the feature extractor, a finished hvae training run "
                         "(`python train.py --config <hvae yaml>`), by its run directory or checkpoint.pt.")
    path = Path(str(value))
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"model.features: {path} does not exist; train the extractor first (`python train.py --preset "
                         f"hvae_tiny data.in_distribution=<the same dataset>`) and give its run directory.")
    return path


class FeatureFlow(BitsPerDimObjective, nn.Module):
    """A coupling flow on the frozen features of a trained HVAE's encoder (see the module docstring)."""

    def __init__(self, shape: Tuple[int, ...], cfg: Dict[str, Any]):
        super().__init__()
        from genood.models.flows import TabularFlow
        from genood.models.training import load_checkpoint, load_trained

        path = _extractor_checkpoint(cfg.get("features"))
        extractor, _ = load_trained(path)
        if not hasattr(extractor, "features"):
            raise ValueError(f"model.features: {path} is a {type(extractor).__name__}, which has no encoder features; "
                             "name a finished hvae training run.")
        self.extractor_config = load_checkpoint(path)["config"]
        self.extractor_run = path.parent.name
        self.extractor = extractor.eval()
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.shape = tuple(int(s) for s in shape)
        self.dim = int(extractor.feature_dim())
        self.norm = ActNorm(self.dim)
        self.flow = TabularFlow(self.dim, cfg)
        self.loss_name = "bits_per_dim"
        self.log_prob_unit = f"nats of the {self.dim}-dimensional features of {self.extractor_run} (not a density on [0,256)^D)"

    def train(self, mode: bool = True):
        super().train(mode)
        self.extractor.eval()  # frozen: never in training mode
        return self

    def configure(self, cfg: Dict[str, Any]) -> None:
        """The extractor must have trained on this run's in-distribution training split with this run's in_val held out."""
        from genood.runconfig import ConfigError, holdout_seed

        ext = self.extractor_config
        same = (ext["data"]["in_distribution"] == cfg["data"]["in_distribution"]
                and float(ext["data"].get("val_fraction") or 0) == float(cfg["data"].get("val_fraction") or 0)
                and holdout_seed(ext) == holdout_seed(cfg))
        if not same:
            raise ConfigError(f"model.features: the extractor {self.extractor_run} trained on "
                              f"{ext['data']['in_distribution']} (val_fraction {ext['data'].get('val_fraction')}, holdout "
                              f"seed {holdout_seed(ext)}), not on this run's {cfg['data']['in_distribution']} training split "
                              f"with the same in_val held out; train an extractor on it.")

    def metric_info(self) -> Dict[str, Dict[str, Any]]:
        info = {"features": self.extractor_run, "unit": self.log_prob_unit}
        return {"log_likelihood": dict(info), "bits_per_dim": dict(info)}

    def _standardised(self, x: torch.Tensor):
        f = self.extractor.features(x)
        y, logdet = self.norm(f[:, :, None, None])
        return y.flatten(1), logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        y, logdet = self._standardised(x)
        return self.flow.log_prob(y) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        y = self.flow.sample(n, generator=generator)
        f = self.norm.inverse(y[:, :, None, None]).flatten(1)
        return self.extractor.decode_features(f, generator).clamp(0.0, 256.0 - 1e-4)


def build_feature_flow(shape: Tuple[int, ...], model_cfg: Dict[str, Any]) -> FeatureFlow:
    """The ``feature_flow`` family: a flow on a trained HVAE encoder's features of (C,H,W) images."""
    return FeatureFlow(tuple(shape), model_cfg)


__all__ = ["FeatureFlow", "build_feature_flow"]
