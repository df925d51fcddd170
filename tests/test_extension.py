"""The extension mechanisms: families and scores own their configuration keys, scores and detectors are
registrations (the runner and the metrics know none by name), LID estimators are chosen by capability."""
import numpy as np
import pandas as pd
import pytest
import torch

from genood import runconfig
from genood.models.registry import build_model
from genood.ood import detectors, lid_stage
from genood.ood import scores as score_registry
from genood.runconfig import ConfigError


def test_each_family_validates_its_own_model_keys():
    with pytest.raises(ConfigError, match=r"'model\.coupling' for model.family 'diffusion'"):
        runconfig.resolve({"model": {"family": "diffusion", "coupling": "affine"}})
    with pytest.raises(ConfigError, match=r"'model\.sde' must be one of vp, ve"):
        runconfig.resolve({"preset": "diffusion_vp_tiny", "model": {"sde": "subvp"}})
    with pytest.raises(ConfigError, match=r"'model\.family' must be one of"):
        runconfig.resolve({"model": {"family": "gan"}})
    with pytest.raises(ConfigError, match=r"'ode\.divergence' must be one of hutchinson, exact"):
        runconfig.resolve({"ode": {"divergence": "skilling"}})
    with pytest.raises(ConfigError, match=r"'lid\.log_t0_grid' must be \[min, max, points\]"):
        runconfig.resolve({"lid": {"log_t0_grid": [0.0, -1.0, 5]}})
    with pytest.raises(ConfigError, match=r"'model\.levels' must be >= 1"):
        runconfig.resolve({"model": {"levels": 0}})
    # a preset of one family plus an override switching family keeps only the new family's keys valid
    cfg = runconfig.resolve({"preset": "diffusion_ve_tiny"}, ["model.sigma_max=80"])
    assert cfg["model"]["family"] == "diffusion" and cfg["model"]["sigma_max"] == 80.0 and "coupling" not in cfg["model"]


def test_ood_run_names_hash_only_the_sections_a_run_reads():
    flow = runconfig.resolve({"ood": {"scores": ["log_likelihood"]}})
    assert runconfig.run_name(flow, "ood") == runconfig.run_name(runconfig.deep_merge(flow, {"ode": {"rtol": 0.1}}), "ood")
    diff = runconfig.resolve({"preset": "diffusion_vp_tiny", "ood": {"scores": ["log_likelihood"]}})
    assert runconfig.run_name(diff, "ood") != runconfig.run_name(runconfig.deep_merge(diff, {"ode": {"rtol": 0.1}}), "ood")
    assert runconfig.run_name(diff, "ood") == runconfig.run_name(runconfig.deep_merge(diff, {"lid": {"log_t0": -2.0}}), "ood")
    assert runconfig.run_name(diff, "train") == runconfig.run_name(runconfig.deep_merge(diff, {"ode": {"rtol": 0.1}}), "train")


def test_a_registered_score_and_detector_reach_metrics_without_touching_the_runner():
    @score_registry.register("neg_norm", higher_is_in=True, unit="-", description="-||x||")
    def neg_norm(model, x, cache):
        return -x.flatten(1).norm(dim=1)

    calls = []

    @detectors.register_detector("norm_at_95", optimistic=True, description="test detector")
    def norm_at_95(view):
        calls.append(view.names)
        return {"norm_at_95": {"auroc": 0.5, "n_in": len(view.positive), "n_ood": len(view.negative)}}
    try:
        from genood.ood.runner import score_images
        x = torch.cat([torch.zeros(4, 1, 2, 2), torch.full((4, 1, 2, 2), 10.0)])
        cols = score_images(None, x, ["neg_norm"], 3, torch.device("cpu"), progress=False)
        table = pd.DataFrame({"split": ["in_test"] * 4 + ["ood"] * 4 + ["in_train"] * 0, "dataset": "d",
                              "index": np.arange(8), **cols})
        metrics = detectors.evaluate(table, ["neg_norm"], {}, {})
        assert metrics["neg_norm"]["auroc"] == 1.0
        assert metrics["norm_at_95"]["optimistic"] is True and calls == [["neg_norm"]]
    finally:
        detectors.DETECTORS.pop("norm_at_95")
        del score_registry.REGISTRY["neg_norm"]


def test_lid_estimators_are_chosen_by_capability():
    flow = build_model((1, 4, 4), runconfig.resolve({"model": {"levels": 1, "hidden_channels": 4}})["model"])
    diff = build_model((3,), runconfig.resolve({"preset": "diffusion_mlp"})["model"])
    base = runconfig.resolve({})["lid"]
    assert lid_stage.choose_estimator(flow, base).name == "jacobian"
    assert lid_stage.choose_estimator(diff, base).name == "flipd"
    assert lid_stage.choose_estimator(diff, dict(base, method="normal_bundle")).name == "normal_bundle"
    with pytest.raises(score_registry.ScoreUnavailable, match="lid.method 'flipd' needs a model with score\\+sde; "
                                                              "this model fits lid.method jacobian"):
        lid_stage.choose_estimator(flow, dict(base, method="flipd"))

    class NoCapabilities(torch.nn.Module):
        pass
    with pytest.raises(score_registry.ScoreUnavailable, match="Score 'lid' .* needs a model with generator\\+encode or score\\+sde"):
        score_registry.check_needs("lid", NoCapabilities(), "made_up")


def test_a_score_the_family_cannot_provide_fails_before_training(tiny_cfg, tmp_path):
    from genood.ood.runner import run_ood

    cfg = runconfig.deep_merge(tiny_cfg, {"ood": {"scores": ["log_likelihood", "likelihood_nfe"]},
                                          "data": {"in_distribution": "npz:" + str(tmp_path / "none.npz")}})
    np.savez(tmp_path / "none.npz", images=np.zeros((10, 4, 4), np.uint8))
    cfg["data"]["ood"] = cfg["data"]["in_distribution"]
    with pytest.raises(score_registry.ScoreUnavailable, match="'likelihood_nfe' .* model.family 'flow'"):
        run_ood(cfg, echo=False)
    assert not (tmp_path / "runs").exists()
