"""The DCGAN VAE of likelihood regret (models/vae.py) against independent computations: the layout read off the
seed's code, the objective and the importance-weighted bound written out here with torch.distributions, and the
regret as the seed's compute_LR.py computes it (a deep copy of the encoder, torch's Adam, a fresh draw each step)."""
import copy
import math

import pytest
import torch

from genood import runconfig
from genood.models.registry import build_model
from genood.models.vae import canvas_side


def _model(shape=(1, 28, 28), latent=6, filters=4, seed=0):
    torch.manual_seed(seed)
    cfg = runconfig.resolve({"preset": "vae_tiny", "model": {"latent": latent, "filters": filters}})
    model = build_model(shape, cfg["model"])
    # batch-norm statistics away from their initial values, as after training
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.training_loss(torch.randint(0, 256, (16, *shape)).float() + 0.5)
    return model.eval()


def _images(n, shape=(1, 28, 28), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() + torch.rand((n, *shape), generator=g)


def test_layout_is_the_seeds_dcgan_pair():
    model = _model((1, 32, 32), latent=100, filters=32)
    enc = [m for m in model.encoder["body"] if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.bias is None) for m in enc] == [
        (1, 32, (4, 4), (2, 2), True), (32, 64, (4, 4), (2, 2), True), (64, 128, (4, 4), (2, 2), True)]
    assert model.encoder["mu"].kernel_size == (4, 4) and model.encoder["mu"].out_channels == 100
    dec = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in dec] == [
        (100, 128, (1, 1)), (128, 64, (2, 2)), (64, 32, (2, 2)), (32, 256, (2, 2))]
    assert sum(p.numel() for p in model.parameters()) == 1_074_760
    assert [canvas_side(h, h) for h in (8, 16, 28, 32, 33)] == [16, 16, 32, 32, 64]


def _reference_terms(model, x, eps):
    """log p(x|z), log p(z), log q(z|x) for posterior draws eps (B, S, latent), written out independently: the
    image padded into the canvas by hand, the decoder's logits cropped, Categorical and Normal distributions."""
    b, c, h, w = x.shape
    side = model.side
    top, left = (side - h) // 2, (side - w) // 2
    k = torch.floor(x)
    canvas = torch.zeros(b, c, side, side)
    canvas[:, :, top:top + h, left:left + w] = k / 255.0
    d = model.encoder["body"](canvas)
    mu, logvar = model.encoder["mu"](d).flatten(1), model.encoder["logvar"](d).flatten(1)
    sd = torch.exp(0.5 * logvar)
    z = mu[:, None] + sd[:, None] * eps  # (B, S, L)
    logits = model.decoder(z.reshape(-1, z.shape[-1], 1, 1)).reshape(b, eps.shape[1], c, 256, side, side)
    logits = logits[..., top:top + h, left:left + w].permute(0, 1, 2, 4, 5, 3)  # (B, S, C, H, W, 256)
    log_lik = torch.distributions.Categorical(logits=logits).log_prob(k.long()[:, None]).flatten(2).sum(2)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(2)
    log_qz = torch.distributions.Normal(mu[:, None], sd[:, None]).log_prob(z).sum(2)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sd), torch.distributions.Normal(0.0, 1.0)).sum(1)
    return log_lik, log_pz, log_qz, kl


def test_training_loss_is_the_seeds_negative_elbo_in_nats_per_image():
    model = _model()
    x = _images(3)
    torch.manual_seed(7)
    ours = model.training_loss(x)
    torch.manual_seed(7)
    eps = torch.randn(3, model.latent)[:, None]
    log_lik, _, _, kl = _reference_terms(model, x, eps)
    assert torch.allclose(ours, -(log_lik[:, 0] - kl), rtol=1e-5, atol=1e-2)


@torch.no_grad()
def test_log_prob_is_the_importance_weighted_bound_and_tightens_with_samples():
    model = _model()
    x = _images(2)
    model.configure({"bound": {"samples": 64, "seed": 3, "chunk": 256}})
    ours = model.log_prob(x)
    gens = model._generators(x, 0)
    eps = torch.stack([torch.randn((64, model.latent), generator=g) for g in gens])
    log_lik, log_pz, log_qz, _ = _reference_terms(model, x, eps)
    log_w = log_lik + log_pz - log_qz
    want = torch.logsumexp(log_w, 1) - math.log(64)
    assert torch.allclose(ours, want, rtol=1e-5, atol=1e-2)
    # above the mean of its single-sample ELBOs (Jensen), and chunking and the batch do not change a point's value
    assert bool((ours >= log_w.mean(1) - 1e-3).all())
    model.configure({"bound": {"samples": 64, "seed": 3, "chunk": 7}})
    assert torch.allclose(model.log_prob(x[1:]), ours[1:], atol=1e-3)
    assert torch.allclose(model.bits_per_dim(x), -ours / (784 * math.log(2)), atol=1e-4)


def test_likelihood_regret_is_the_seeds_encoder_copy_fit():
    """compute_LR.py, per image: NLL with the encoder; a deep copy of the encoder trained `steps` Adam steps
    (weight decay) on that image's negative ELBO, a fresh draw each step; NLL again; regret = NLL before - after.
    The reference shares our per-step draws (their generator) so the two runs see the same noise."""
    model = _model()
    x = _images(2)
    model.configure({"bound": {"samples": 16, "seed": 0, "chunk": 256}})
    steps, lr, wd = 5, 1e-2, 5e-5
    ours = model.likelihood_regret(x, steps, lr, weight_decay=wd)
    with torch.no_grad():
        before = model.log_prob(x)
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    for j in range(2):
        xj = x[j:j + 1]
        encoder = copy.deepcopy(model.encoder).eval()
        opt = torch.optim.Adam(encoder.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=wd)
        gen = model._generators(xj, 9)[0]
        fitted = copy.deepcopy(model)
        fitted.encoder = encoder
        for _ in range(steps):
            eps = torch.randn((1, model.latent), generator=gen)[:, None]
            log_lik, _, _, kl = _reference_terms(fitted, xj, eps)
            opt.zero_grad()
            (-(log_lik[:, 0] - kl)).sum().backward()
            opt.step()
        with torch.no_grad():
            after = fitted.log_prob(xj)
        assert float(ours[j]) == pytest.approx(float(after[0] - before[j]), abs=2e-2)
    # the model itself is untouched
    assert all(torch.equal(v, weights_before[k]) for k, v in model.state_dict().items())


def test_likelihood_regret_score_runs_on_the_vae_and_reads_its_section():
    from genood.ood.scores import get as get_score

    model = _model()
    model.configure({"bound": {"samples": 4, "seed": 0, "chunk": 256}})
    x = _images(2)
    score = get_score("likelihood_regret")
    cfg = {"likelihood_regret": {"steps": 3, "lr": 1e-3, "weight_decay": 5e-5}}
    got = score.fn(model, x, {"cfg": cfg})
    assert torch.allclose(got, model.likelihood_regret(x, 3, 1e-3, weight_decay=5e-5))


def test_samples_are_pixel_values_of_the_data_shape():
    model = _model((1, 28, 28))
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 28, 28) and torch.equal(s, s.round()) and 0 <= float(s.min()) and float(s.max()) <= 255


@torch.no_grad()
def test_likelihood_terms_sum_to_the_single_sample_bound():
    """Reconstruction and -KL at the bound's own first draw: the reconstruction is that draw's log p(x|z), the KL
    term the closed form (torch.distributions), so their sum is the seed's ELBO at that draw."""
    model = _model()
    x = _images(3)
    model.configure({"bound": {"samples": 1, "seed": 2, "chunk": 256}})
    terms = model.log_prob_terms(x)
    assert list(terms) == type(model).likelihood_term_labels({}) == ["reconstruction", "kl"]
    eps = torch.stack([torch.randn((1, model.latent), generator=g) for g in model._generators(x, 0)])
    log_lik, log_pz, log_qz, kl = _reference_terms(model, x, eps)
    assert torch.allclose(terms["reconstruction"], log_lik[:, 0], atol=1e-2)
    assert torch.allclose(terms["kl"], -kl, atol=1e-3)
    # the one-sample bound is the same draw with the KL sampled instead
    assert torch.allclose(model.log_prob(x), (log_lik + log_pz - log_qz)[:, 0], atol=1e-2)
