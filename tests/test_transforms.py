import math

import numpy as np
import torch

from genood.data import transforms


def test_logit_logdet_matches_autograd():
    torch.manual_seed(0)
    x = (torch.rand(3, 1, 2, 3, dtype=torch.float64) * 256).requires_grad_(False)
    alpha = 0.05
    z, logdet = transforms.logit_forward(x, alpha)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: transforms.logit_forward(v.reshape(1, 1, 2, 3), alpha)[0].flatten(), x[b].flatten())
        expected = torch.linalg.slogdet(jac)[1]
        assert torch.allclose(logdet[b], expected, atol=1e-9)
    x_back, logdet_inv = transforms.logit_inverse(z, alpha)
    assert torch.allclose(x_back, x, atol=1e-8)
    assert torch.allclose(logdet_inv, -logdet, atol=1e-8)


def test_logit_logdet_closed_form_at_midpoint():
    # at x = 128, y = 0.5: per-dim log|dz/dx| = log(1-2a) - log 256 - 2 log 0.5
    x = torch.full((1, 1, 1, 4), 128.0, dtype=torch.float64)
    _, logdet = transforms.logit_forward(x, 0.1)
    expected = 4 * (math.log(0.8) - math.log(256) + 2 * math.log(2))
    assert abs(float(logdet) - expected) < 1e-12


def test_dequantization_stays_in_its_bin():
    x = torch.randint(0, 256, (50, 1, 4, 4)).float()
    gen = torch.Generator().manual_seed(1)
    y = transforms.dequantize_uniform(x, gen)
    assert torch.all(y >= x) and torch.all(y < x + 1)
    assert torch.all(torch.floor(y) == x)


def test_eval_noise_is_deterministic_per_split_and_index():
    a = transforms.eval_dequantization_noise(10, (1, 2, 2), seed=3, split="in_test")
    b = transforms.eval_dequantization_noise(10, (1, 2, 2), seed=3, split="in_test")
    c = transforms.eval_dequantization_noise(10, (1, 2, 2), seed=3, split="ood")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(transforms.eval_dequantization_noise(2, (1, 1, 1), 0, "x", mode="midpoint") == 0.5)


def test_match_shape_converts_colour_and_size():
    rgb = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red
    grey = transforms.match_shape(rgb, (1, 28, 28))
    assert grey.shape == (2, 28, 28, 1) and grey.dtype == np.uint8
    assert np.all(grey == round(0.299 * 200))
    back = transforms.match_shape(grey, (3, 32, 32))
    assert back.shape == (2, 32, 32, 3) and np.all(back[..., 0] == back[..., 2])
    same = np.ones((1, 28, 28, 1), dtype=np.uint8)
    assert transforms.match_shape(same, (1, 28, 28)) is same
