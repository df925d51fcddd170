"""RealNVP and Glow (seed 003): every layer's log-determinant against brute-force slogdet of its Jacobian,
invertibility, masks that partition the input, and the whole flow's density against a brute-force change of
variables."""
import math

import pytest
import torch

from genood import runconfig
from genood.models import coupling_flows as cf
from genood.models.registry import build_model

CFG = {"st_type": "resnet", "num_blocks": 1, "mid_channels": 6, "kernel_size": 3, "s_scale": 1.0}


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Nonzero weights everywhere (the s/t networks start at zero, which would make couplings the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _brute_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].reshape(-1), row)
        out.append(torch.linalg.slogdet(jac.reshape(row.numel(), row.numel()))[1])
    return torch.stack(out)


LAYERS = {
    "actnorm": lambda: cf.ActNorm(3),
    "invconv1x1": lambda: cf.InvConv1x1(3),
    "checkerboard0": lambda: cf.AffineCoupling(3, "checkerboard", 0, dict(CFG)),
    "checkerboard1": lambda: cf.AffineCoupling(3, "checkerboard", 1, dict(CFG, st_type="highway")),
    "channel0": lambda: cf.AffineCoupling(3, "channel", 0, dict(CFG, st_type="convnet")),
    "channel1": lambda: cf.AffineCoupling(3, "channel", 1, dict(CFG, st_type="mlp_bottleneck")),
    "squeeze": lambda: cf.Squeeze(),
    "cycle0": lambda: cf.AffineCoupling(3, "cycle", 0, dict(CFG)),
    "cycle3": lambda: cf.AffineCoupling(3, "cycle", 3, dict(CFG, kernel_size=1)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_log_det_matches_brute_force_and_the_layer_inverts(name):
    torch.manual_seed(1)
    layer = _randomise(LAYERS[name]()).double().eval()
    if name == "invconv1x1":  # keep it a valid LU factorisation of an invertible matrix
        layer = cf.InvConv1x1(3).double()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.allclose(logdet, _brute_logdet(lambda v: layer(v)[0], x), atol=1e-8), name
    assert torch.allclose(layer.inverse(y), x, atol=1e-10), name


def test_actnorm_initialises_from_the_first_training_batch_only():
    layer = cf.ActNorm(2).double().train()
    x = 3 + 5 * torch.randn(64, 2, 4, 4, dtype=torch.float64)
    y, _ = layer(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(2, dtype=torch.float64), atol=1e-10)
    before = layer.loc.clone()
    layer(x * 2)
    assert torch.equal(layer.loc, before)


@pytest.mark.parametrize("h,w", [(4, 4), (5, 6)])
def test_masks_partition_the_input(h, w):
    a, b = cf.checkerboard(h, w, 0), cf.checkerboard(h, w, 1)
    assert torch.equal(a + b, torch.ones(1, 1, h, w)) and a.sum() in (h * w // 2, (h * w + 1) // 2)
    assert a[0, 0, 0, 0] == 1 and a[0, 0, 0, 1] == 0 and a[0, 0, 1, 0] == 0  # alternating, like a board
    coupling = cf.AffineCoupling(5, "channel", 0, dict(CFG))
    cond, other = coupling._split(torch.arange(5.0).reshape(1, 5, 1, 1))
    assert cond.flatten().tolist() == [0.0, 1.0] and other.flatten().tolist() == [2.0, 3.0, 4.0]
    flipped = cf.AffineCoupling(5, "channel", 1, dict(CFG))
    cond, other = flipped._split(torch.arange(5.0).reshape(1, 5, 1, 1))
    assert cond.flatten().tolist() == [2.0, 3.0, 4.0] and other.flatten().tolist() == [0.0, 1.0]
    quads = [cf.quadrant(h, w, k) for k in range(4)]
    assert torch.equal(sum(quads), torch.ones(1, 1, h, w))  # the cycle-mask's quadrants partition the image
    y, _ = _randomise(cf.AffineCoupling(1, "cycle", 1, dict(CFG)))(x := torch.randn(2, 1, h, w))
    assert torch.equal(y * (1 - quads[2]), x * (1 - quads[2])) and not torch.allclose(y * quads[2], x * quads[2])
    # the conditioning half passes through unchanged
    x = torch.randn(2, 1, h, w)
    y, _ = _randomise(cf.AffineCoupling(1, "checkerboard", 0, dict(CFG)))(x)
    assert torch.equal(y * a, x * a) and not torch.allclose(y * b, x * b)


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_flow_log_prob_is_the_brute_force_change_of_variables_in_nats_of_the_data(family):
    cfg = runconfig.resolve({"model": {"family": family, "num_blocks": 1, "mid_channels": 4, "coupling_layers": 2,
                                       "realnvp_checkerboard": 2, "realnvp_channel": 2}})
    torch.manual_seed(0)
    model = _randomise(build_model((1, 4, 4), cfg["model"]), seed=3).double().eval()
    if family == "glow":
        for m in model.modules():
            if isinstance(m, cf.InvConv1x1):
                m.__init__(m.p.shape[0])
        model = model.double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 200 + 20
    z = model.encode(x)
    logdet = _brute_logdet(lambda v: model.encode(v), x)
    brute = -0.5 * (z ** 2).sum(1) - 8 * math.log(2 * math.pi) + logdet
    assert torch.allclose(model.log_prob(x), brute, atol=1e-7)
    assert torch.allclose(model.generator(z), x, atol=1e-7)
    assert model.sample(2).shape == (2, 1, 4, 4)
    views = model.coupling_views(x)
    assert len(views) == (2 * 2 if family == "glow" else 2 + 2 + 3) and all(v["s"].shape == v["t"].shape for v in views)


def test_bad_scales_are_one_sentence():
    cfg = runconfig.resolve({"model": {"family": "glow", "num_scales": 3}})
    with pytest.raises(ValueError, match="num_scales=3 needs the image side to halve"):
        build_model((1, 28, 28), cfg["model"])


def test_coupling_views_are_stored_and_drawn_in_the_run_and_the_report(tmp_path):
    import numpy as np
    import pandas as pd

    from genood.models.views import VIEWS_FILE
    from genood.ood.runner import run_ood
    from genood.reports.report import build

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 120, size=(60, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "ood.npz", images=(60 + rng.integers(0, 3, size=(30, 8, 8))).astype(np.uint8))
    cfg = runconfig.resolve({
        "run": {"runs_root": str(tmp_path / "runs")}, "tracking": {"wandb": False},
        "data": {"in_distribution": f"npz:{tmp_path / 'in.npz'}", "ood": f"npz:{tmp_path / 'ood.npz'}"},
        "model": {"family": "realnvp", "num_blocks": 1, "mid_channels": 4, "realnvp_checkerboard": 2, "realnvp_channel": 2},
        "training": {"steps": 5, "batch_size": 8, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood"], "n_generated": 0, "png": False, "bootstrap": 20, "figures": True}})
    directory = run_ood(cfg, echo=False)
    with np.load(directory / VIEWS_FILE) as f:
        titles = [str(t) for t in f["titles"]]
        assert titles[0] == "input" and titles[-1] == "latent, scale 1" and len(f["rows"]) == 8
        assert f["view0"].shape == (8, 8, 8)
        assert f["view0"].min() >= 0 and f["view0"].max() < 256 and f["view0"][:4].max() < 121  # inputs: in (<120) rows first
    assert (directory / "figures" / "model_views.html").exists()
    assert "coupling layers and latents" in (directory / "figures" / "model_views.html").read_text()
    from genood.models.views import views_figure
    shown = [a.text for a in views_figure(directory, max_columns=6).layout.annotations]
    assert shown[0] == "input" and shown[1].startswith("c0<br>") and shown[1].endswith("<br>s")
    assert "latent, scale 0" in shown and "latent, scale 1" in shown and len([t for t in shown if "<br>" in t]) == 3
    assert "model views" in build(pd.DataFrame(), [directory])


def test_cycle_mask_realnvp_is_an_exact_density():
    cfg = runconfig.resolve({"model": {"family": "realnvp", "realnvp_mask": "cycle", "num_blocks": 1, "mid_channels": 4,
                                       "realnvp_checkerboard": 4, "realnvp_channel": 2}})
    model = _randomise(build_model((1, 4, 4), cfg["model"]), seed=4).double().eval()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 200 + 20
    z = model.encode(x)
    brute = -0.5 * (z ** 2).sum(1) - 8 * math.log(2 * math.pi) + _brute_logdet(lambda v: model.encode(v), x)
    assert torch.allclose(model.log_prob(x), brute, atol=1e-7) and torch.allclose(model.generator(z), x, atol=1e-7)


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_likelihood_terms_are_each_scales_brute_force_jacobian_and_latent_density(family):
    """DoSE's per-sample statistics for RealNVP / Glow: the preprocessing term against the logit map's closed-form
    Jacobian, each scale's log-det against slogdet of that scale's brute-force Jacobian, each latent term against
    scipy's normal density of the piece the scale factors out; together they are log p(x)."""
    from scipy.stats import norm

    from genood.data.transforms import logit_forward
    cfg = runconfig.resolve({"model": {"family": family, "num_blocks": 1, "mid_channels": 4, "coupling_layers": 2,
                                       "realnvp_checkerboard": 2, "realnvp_channel": 2}})
    torch.manual_seed(0)
    model = _randomise(build_model((1, 4, 4), cfg["model"]), seed=5).double().eval()
    for m in model.modules():
        if isinstance(m, cf.InvConv1x1):
            m.__init__(m.p.shape[0])
    model = model.double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 200 + 20
    with torch.no_grad():
        terms = model.log_prob_terms(x)
        total = model.log_prob(x)
    assert list(terms) == type(model).likelihood_term_labels(cfg["model"]) == [
        "preprocess", "level0_logdet", "level0_latent", "level1_logdet", "level1_latent"]
    assert torch.allclose(sum(terms.values()), total, atol=1e-8)
    y = 0.05 + 0.9 * x / 256
    assert torch.allclose(terms["preprocess"], torch.log(0.9 / (256 * y * (1 - y))).flatten(1).sum(1), rtol=1e-10)
    for i in range(2):
        h = logit_forward(x[i:i + 1], model.alpha)[0].reshape(1, 1, 4, 4)
        for s, steps in enumerate(model.scales):
            def run(v, steps=steps, shape=h.shape):
                out = v.reshape(shape)
                for step in steps:
                    out = step(out)[0]
                return out.reshape(-1)
            jac = torch.autograd.functional.jacobian(run, h.reshape(-1))
            assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(terms[f"level{s}_logdet"][i].item(), abs=1e-7)
            h_out = h
            for step in steps:
                h_out = step(h_out)[0]
            piece, h = (h_out[:, : h_out.shape[1] // 2], h_out[:, h_out.shape[1] // 2:]) if s == 0 else (h_out, None)
            want = norm.logpdf(piece.detach().reshape(-1).numpy()).sum()
            assert want == pytest.approx(terms[f"level{s}_latent"][i].item(), abs=1e-8)
