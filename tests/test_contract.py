"""The model contract, for every registered family and every preset: a new family gets all of it by being
registered (a spec file naming its builder and class) and shipping a preset.

Tiny presets (and presets of the families that have only one size) get the whole contract: protocol,
log_prob shape and finiteness, sample shape and range, training_loss backpropagates, a save/load round trip
gives identical log_prob, a killed and resumed training gives identical weights. Paper presets are built at
their real size and get everything that does not integrate an ODE or sample for minutes on a CPU: protocol,
training_loss backpropagates, the state round trip gives identical training_loss.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genood import runconfig
from genood.models.base import REQUIRED, check_family
from genood.models.registry import build_model, model_class
from tests.conftest import assert_training_resumes_to_the_same_weights

PRESETS = sorted(p.stem for p in runconfig.PRESET_DIR.glob("*.yaml"))
CPU_SIZED = [p for p in PRESETS if "paper" not in p]
PAPER = [p for p in PRESETS if "paper" in p]


_EXTRACTOR = {}


def _extractor(shape) -> str:
    """A saved hvae run (briefly trained) for presets whose model reads another run's features (feature_flow)."""
    import tempfile

    from genood.models.training import fit

    if shape not in _EXTRACTOR:
        directory = tempfile.mkdtemp(prefix="extractor-")
        cfg = runconfig.resolve({"preset": "hvae_tiny", "training": {"steps": 2, "batch_size": 4, "progress": False,
                                                                     "sample_grid": 0}, "tracking": {"wandb": False}})
        images = np.random.default_rng(0).integers(0, 256, size=(40, shape[1], shape[2], shape[0]), dtype=np.uint8)
        fit(cfg, directory, images, log=lambda m: None)
        _EXTRACTOR[shape] = directory
    return _EXTRACTOR[shape]


def _cfg(preset: str):
    cfg = runconfig.resolve({"preset": preset, "training": {"steps": 6, "batch_size": 4, "checkpoint_every": 2,
                                                            "warmup_steps": 1, "progress": False, "sample_grid": 0},
                             "tracking": {"wandb": False}, "run": {"seed": 0, "device": "cpu"}})
    for key in runconfig.family_spec(cfg["model"]["family"]).run_keys:  # the family reads another run: a saved one here
        cfg["model"][key] = _extractor(_shape(preset, cfg))
    return cfg


def _shape(preset: str, cfg) -> tuple:
    if cfg["model"]["family"] == "tabular_flow" or preset == "diffusion_mlp":
        return (3,)
    channels = 3 if "rgb" in preset else 1
    side = 32 if "rgb" in preset else (28 if "paper" in preset else 8)
    return (channels, side, side)


def _data(shape, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        return torch.randn(n, *shape, generator=gen)
    return torch.randint(0, 256, (n, *shape), generator=gen).float() + torch.rand(n, *shape, generator=gen)


def _reloaded(model, shape, cfg, tmp_path):
    """A fresh model of the same configuration given ``model``'s weights through a saved file (eval mode)."""
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    other = build_model(shape, cfg["model"])
    other.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    return other.eval()


def test_every_family_has_a_preset_and_every_preset_a_family():
    families = {_cfg(p)["model"]["family"] for p in PRESETS}
    assert families == set(runconfig.FAMILIES)
    for family in runconfig.FAMILIES:
        check_family(model_class(family), family, runconfig.FAMILIES[family].source)


@pytest.mark.parametrize("preset", CPU_SIZED)
def test_the_model_contract(preset, tmp_path):
    cfg = _cfg(preset)
    shape = _shape(preset, cfg)
    torch.manual_seed(0)
    model = build_model(shape, cfg["model"])
    assert isinstance(model, model_class(cfg["model"]["family"]))
    assert all(callable(getattr(model, n)) for n in REQUIRED)
    model.eval()
    x = _data(shape, 3)
    with torch.no_grad():
        lp = model.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    with torch.no_grad():
        bpd = model.bits_per_dim(x)
    # per dimension of the data, except for a model whose log_prob is of something else (it says so in its unit)
    dims = model.dim if "not a density on [0,256)^D" in getattr(model, "log_prob_unit", "") else np.prod(shape)
    assert torch.allclose(bpd, -lp / (dims * np.log(2.0)), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        s = model.sample(2, generator=torch.Generator().manual_seed(1))
    assert s.shape == (2, *shape) and torch.isfinite(s).all()
    if len(shape) == 3:
        assert float(s.min()) >= 0.0 and float(s.max()) <= 256.0
    model.train()
    loss = model.training_loss(_data(shape, 4, seed=2)).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    other = _reloaded(model, shape, cfg, tmp_path)
    with torch.no_grad():
        assert torch.equal(other.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("preset", CPU_SIZED)
def test_training_resumes_to_identical_weights(preset, tmp_path):
    cfg = _cfg(preset)
    shape = _shape(preset, cfg)
    rng = np.random.default_rng(0)
    if len(shape) == 1:
        images = rng.standard_normal((16, *shape)).astype(np.float32)
    else:
        images = rng.integers(0, 256, size=(16, shape[1], shape[2], shape[0]), dtype=np.uint8)
    assert_training_resumes_to_the_same_weights(cfg, images, tmp_path)


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_build_train_and_round_trip(preset, tmp_path):
    cfg = _cfg(preset)
    shape = _shape(preset, cfg)
    torch.manual_seed(0)
    model = build_model(shape, cfg["model"])
    assert all(callable(getattr(model, n)) for n in REQUIRED)
    x = _data(shape, 2, seed=3)
    model.train()
    torch.manual_seed(5)
    loss = model.training_loss(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    other = _reloaded(model, shape, cfg, tmp_path)
    with torch.no_grad():
        torch.manual_seed(7)
        a = model.training_loss(x)
        torch.manual_seed(7)
        b = other.training_loss(x)
    assert torch.equal(a, b)
