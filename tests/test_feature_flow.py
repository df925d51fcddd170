"""Flows on features (seed 003): a flow on the frozen encoder features of our own HVAE run, trained on the
in-distribution training split only."""
import json

import numpy as np
import pytest
import torch

from genood import runconfig


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    from genood.models.runs import run_training

    tmp = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    np.savez(tmp / "in.npz", images=rng.integers(0, 120, size=(120, 8, 8), dtype=np.uint8))
    np.savez(tmp / "ood.npz", images=(60 + rng.integers(0, 3, size=(60, 8, 8))).astype(np.uint8))
    np.savez(tmp / "other.npz", images=rng.integers(100, 250, size=(120, 8, 8), dtype=np.uint8))
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp / "runs")}, "tracking": {"wandb": False},
        "data": {"in_distribution": f"npz:{tmp / 'in.npz'}", "val_fraction": 0.2},
        "model": {"family": "hvae", "latents": [2, 4, 3], "latent_kinds": ["conv", "dense", "dense"], "kernels": [3, 3, 3],
                  "strides": [2, 2, 1], "channels": 8, "blocks": 1, "mixtures": 2},
        "training": {"steps": 10, "batch_size": 16, "progress": False, "sample_grid": 0}})
    return tmp, run_training(cfg, echo=False)


def _flow_cfg(tmp, run, ind="in.npz", **extra):
    return runconfig.resolve(dict({
        "run": {"runs_root": str(tmp / "runs")}, "tracking": {"wandb": False},
        "data": {"in_distribution": f"npz:{tmp / ind}", "ood": f"npz:{tmp / 'ood.npz'}", "val_fraction": 0.2},
        "model": {"family": "feature_flow", "features": str(run), "steps_per_level": 2, "hidden_channels": 8,
                  "num_blocks": 1},
        "training": {"steps": 8, "batch_size": 16, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood"], "n_generated": 4, "png": False, "bootstrap": 20}}, **extra))


def test_feature_flow_density_is_the_flow_on_the_standardised_frozen_features(extractor):
    from genood.models.registry import build_model
    from genood.models.training import load_trained

    tmp, run = extractor
    model = build_model((1, 8, 8), _flow_cfg(tmp, run)["model"])
    hvae = load_trained(run / "checkpoint.pt")[0]
    x = torch.rand(5, 1, 8, 8) * 256
    assert model.dim == 7 and torch.equal(model.extractor.features(x), hvae.features(x))
    model.train()
    model.log_prob(x)  # the actnorm standardises from the first training batch
    model.eval()
    f = hvae.features(x)
    y = (f + model.norm.loc.flatten()) * torch.exp(model.norm.log_scale.flatten())
    expect = model.flow.log_prob(y) + model.norm.log_scale.sum()
    assert torch.allclose(model.log_prob(x), expect, atol=1e-5)
    assert all(not p.requires_grad for p in model.extractor.parameters()) and not model.extractor.training
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and samples.min() >= 0 and samples.max() < 256


def test_feature_flow_run_names_its_extractor_and_refuses_one_trained_elsewhere(extractor):
    from genood.ood.runner import run_ood

    tmp, run = extractor
    directory = run_ood(_flow_cfg(tmp, run), echo=False)
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["log_likelihood"]["features"] == run.name and "not a density" in metrics["log_likelihood"]["unit"]
    with pytest.raises(runconfig.ConfigError, match="the extractor .* trained on"):
        run_ood(_flow_cfg(tmp, run, ind="other.npz"), echo=False)
    with pytest.raises(ValueError, match="model.features"):
        run_ood(_flow_cfg(tmp, tmp / "nowhere"), echo=False)


def test_a_preset_named_extractor_is_trained_on_this_runs_data_then_found(extractor):
    from genood.ood.runner import run_ood

    tmp, _ = extractor
    cfg = _flow_cfg(tmp, "hvae_tiny")
    cfg["training"]["steps"] = 4
    first = run_ood(cfg, echo=False)
    deps = sorted((tmp / "runs" / "dependencies").glob("*/checkpoint.pt"))
    assert len(deps) == 1
    import yaml
    dep_cfg = yaml.safe_load((deps[0].parent / "config.yaml").read_text())
    assert dep_cfg["data"]["in_distribution"] == cfg["data"]["in_distribution"] and dep_cfg["model"]["family"] == "hvae"
    assert dep_cfg["run"]["holdout_seed"] == 0
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["log_likelihood"]["features"] == deps[0].parent.name
    cfg2 = _flow_cfg(tmp, "hvae_tiny", ood={"scores": ["log_likelihood", "bits_per_dim"], "n_generated": 0, "png": False,
                                            "bootstrap": 20})
    cfg2["training"]["steps"] = 4
    second = run_ood(cfg2, echo=False)
    assert "found in" in (second / "run.log").read_text() and len(list((tmp / "runs" / "dependencies").glob("*/checkpoint.pt"))) == 1
