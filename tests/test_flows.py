import math

import pytest
import torch

from genood.models.flows import build_model
from tests.conftest import TINY_MODEL


def _randomised_flow(coupling: str, shape=(1, 4, 4), levels=1, seed=0):
    torch.manual_seed(seed)
    cfg = dict(TINY_MODEL, coupling=coupling, levels=levels)
    model = build_model(shape, cfg).double()
    model.train()
    model.log_prob(torch.rand(16, *shape, dtype=torch.float64) * 256)  # initialise ActNorm from data
    with torch.no_grad():  # move every parameter away from its (near-identity) initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("coupling", ["rq_nsf", "affine"])
@pytest.mark.parametrize("levels, shape", [(1, (1, 4, 4)), (2, (1, 4, 4)), (1, (3, 2, 2))])
def test_log_prob_equals_change_of_variables(coupling, levels, shape):
    model = _randomised_flow(coupling, shape, levels)
    x = torch.rand(3, *shape, dtype=torch.float64) * 255 + 0.5
    d = math.prod(shape)
    lp = model.log_prob(x).detach()
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: model.encode(v.reshape(1, *shape)).flatten(), x[b].flatten())
        z = model.encode(x[b:b + 1]).flatten()
        expected = -0.5 * (z @ z) - 0.5 * d * math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1]
        assert float(lp[b]) == pytest.approx(float(expected.detach()), abs=1e-6)
    bpd = model.bits_per_dim(x)
    assert torch.allclose(bpd, -lp / (d * math.log(2)))


@pytest.mark.parametrize("coupling", ["rq_nsf", "affine"])
def test_flow_is_invertible(coupling):
    model = _randomised_flow(coupling, (1, 4, 4), levels=2)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 255 + 0.5
    z = model.encode(x)
    assert z.shape == (5, 16)
    assert torch.allclose(model.generator(z), x, atol=1e-6)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 1, 4, 4)
    # the logit transform's support: y = alpha + (1 - 2 alpha) x / 256 in (0, 1)
    a = TINY_MODEL["logit_alpha"]
    lo, hi = -256 * a / (1 - 2 * a), 256 * (1 - a) / (1 - 2 * a)
    assert torch.all((samples > lo) & (samples < hi))
    assert torch.allclose(model.generator(model.encode(samples)), samples, atol=1e-6)


def test_image_sizes_of_the_presets_build():
    for shape, levels in [((1, 28, 28), 2), ((3, 32, 32), 3)]:
        model = build_model(shape, dict(TINY_MODEL, levels=levels))
        out = model.log_prob(torch.rand(2, *shape) * 256)
        assert out.shape == (2,) and torch.isfinite(out).all()


def test_levels_that_do_not_divide_the_image_fail_clearly():
    with pytest.raises(ValueError, match="model.levels=3"):
        build_model((1, 28, 28), dict(TINY_MODEL, levels=3))
