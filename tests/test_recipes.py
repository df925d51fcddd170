"""The `*_paper` presets are the seeds' recipes: each resolved preset equals the values read off the seed's own
code and released configuration (the table below names where each came from), and the parts of a recipe that
the project had to add are checked against an independent computation."""
import math

import numpy as np
import pytest
import torch

from genood import runconfig

# preset -> {dotted key: the seed's value}; the source of each row is in its comment
RECIPES = {
    # seed 002 (google-research genomics_ood/images_ood): train.py's flags and the params.json released beside its
    # FMNIST checkpoints (num_hierarchies 1, num_resnet 5, num_filters 32, num_logistic_mix 1, dropout_p 0,
    # rescale_pixel_value false, learning_rate 1e-4, learning_rate_decay 0.999995, momentum 0.95 / 0.9995,
    # batch_size 32, total_steps 50000; no gradient clipping, no warm-up)
    "pixelcnn_paper": {"model.family": "pixelcnn", "model.scales": 1, "model.resnets": 5, "model.filters": 32,
                       "model.mixtures": 1, "model.dropout": 0.0, "model.input": "raw", "training.lr": 1e-4,
                       "training.lr_schedule": "exponential", "training.lr_decay": 0.999995,
                       "training.adam_betas": [0.95, 0.9995], "training.optimizer": "adam", "training.batch_size": 32,
                       "training.steps": 50000, "training.grad_clip": 0.0, "training.warmup_steps": 0,
                       "training.mutation_rate": 0.0, "training.l2_penalty": 0.0},
    # seed 004 (JakobHavtorn/hvae-oodd): its README's FashionMNIST command (--epochs 1000 --batch_size 128
    # --free_nats 2 --free_nats_epochs 400 --warmup_epochs 200, weightnorm true in every block, latents 8 conv /
    # 16 dense / 8 dense, 64 channels, kernels 5-3-3, BernoulliLikelihoodConv2d) and scripts/dvae_run.py (Adam
    # lr 3e-4 constant; FreeNatsCooldown holds free_nats_epochs // 2 then decays over free_nats_epochs // 2)
    "hvae_paper": {"model.family": "hvae", "model.likelihood": "bernoulli", "model.latents": [8, 16, 8],
                   "model.latent_kinds": ["conv", "dense", "dense"], "model.kernels": [5, 3, 3], "model.channels": 64,
                   "model.blocks": 3, "model.weight_norm": True, "model.free_bits": 2.0, "model.free_bits_per": "element",
                   "model.free_bits_constant_steps": 200 * 469, "model.free_bits_steps": 200 * 469,
                   "model.kl_warmup_steps": 200 * 469, "training.steps": 1000 * 469, "training.batch_size": 128,
                   "training.lr": 3e-4, "training.lr_schedule": "constant", "training.warmup_steps": 0,
                   "training.grad_clip": 0.0, "training.adam_betas": [0.9, 0.999]},
    # seed 000 (layer6ai-labs/dgm_ood_detection): meta_configurations/training/flows/grayscale_flows.yaml (AdamW lr 1e-3,
    # ExponentialLR gamma 0.99 per epoch, max_grad_norm 1.0, batch 128, max_epochs 400; ConvResidualNet 64 x 2,
    # num_bins 2, tails linear, tail_bound 1.0, 3 x 2 couplings per level, ActNorm and OneByOneConvolution)
    "flow_rq_nsf_paper": {"model.coupling": "rq_nsf", "model.steps_per_level": 6, "model.hidden_channels": 64,
                          "model.num_blocks": 2, "model.num_bins": 2, "model.tail_bound": 1.0, "model.actnorm": True,
                          "model.one_by_one_conv": True, "model.dropout": 0.2, "model.final_squeeze": 7,
                          "model.final_steps": 4, "model.final_hidden_channels": 1024,
                          "training.optimizer": "adamw", "training.weight_decay": 0.01,
                          "training.lr": 1e-3, "training.lr_schedule": "exponential", "training.grad_clip": 1.0,
                          "training.batch_size": 128, "training.steps": 400 * 469, "training.warmup_steps": 0},
    # ... and meta_configurations/training/diffusions/grayscale_diffusions.yaml (resize_image [32, 32], Adam lr 5e-5,
    # max_grad_norm 1.0, batch 128, max_epochs 50; VPSDE_Diffusion beta_min 0.1, beta_max 20; UNet2DModel blocks
    # 128-128-256-256-512-512, layers_per_block 2, attention in the fifth down block and its mirror, defaults else)
    "diffusion_vp_paper": {"data.shape": [1, 32, 32], "model.sde": "vp", "model.beta_min": 0.1, "model.beta_max": 20.0,
                           "model.channels": [128, 128, 256, 256, 512, 512],
                           "model.attention": [False, False, False, False, True, False], "model.mid_attention": True,
                           "model.layers_per_block": 2, "model.norm_groups": 32, "model.dropout": 0.0,
                           "training.optimizer": "adam", "training.lr": 5e-5, "training.lr_schedule": "constant",
                           "training.warmup_steps": 0, "training.grad_clip": 1.0, "training.batch_size": 128,
                           "training.steps": 50 * 469},
    # likelihood regret (XavierXiao/Likelihood-Regret): train_pixel.py's defaults (imageSize 32 by Resize, nz 100,
    # ngf 32, batchSize 128, niter 200 epochs of 469 batches, lr 3e-4, beta1 0.9, beta 1, Adam weight_decay 3e-5 on
    # both networks, no scheduler, no clipping) and compute_LR.py's (num_iter 100, lr 2e-4, weight_decay 5e-5,
    # repeat 200 x 5 = 1,000 importance samples)
    "vae_regret_paper": {"data.shape": [1, 32, 32], "model.family": "vae", "model.latent": 100, "model.filters": 32,
                         "training.batch_size": 128, "training.steps": 200 * 469, "training.lr": 3e-4,
                         "training.adam_betas": [0.9, 0.999], "training.weight_decay": 3e-5,
                         "training.lr_schedule": "constant", "training.warmup_steps": 0, "training.grad_clip": 0.0,
                         "likelihood_regret.steps": 100, "likelihood_regret.lr": 2e-4,
                         "likelihood_regret.weight_decay": 5e-5},
    # seed 002's README for CIFAR10: the same with rescale_pixel_value true and 600,000 steps
    "pixelcnn_rgb_paper": {"model.scales": 1, "model.filters": 32, "model.mixtures": 1, "model.input": "unit",
                           "training.steps": 600000, "training.lr_decay": 0.999995},
}


def test_likelihood_regrets_protocol_scores_with_the_seeds_importance_samples():
    """compute_LR.py's NLL is an importance-weighted bound with 200 x 5 samples: the seed's scoring configurations
    set it (the preset leaves it at 1 so that its training's OOD curves stay cheap)."""
    from genood.orchestration import metaconfig as mc
    from tests.conftest import ROOT
    cfg = runconfig.load(ROOT / "configurations" / "vae_regret_fmnist_vs_mnist_paper.yaml")
    assert cfg["bound"]["samples"] == 1000 and cfg["ood"]["n_in_test"] == cfg["ood"]["n_ood"] == 500
    runs = mc.expand(mc.load(ROOT / "meta_configurations" / "reproduce" / "xiao2020.yaml"))
    assert all(r.config["bound"]["samples"] == 1000 for r in runs)


def test_seed_000s_per_epoch_decay_is_spread_over_its_steps():
    cfg = runconfig.resolve({"preset": "flow_rq_nsf_paper"})
    assert cfg["training"]["lr_decay"] ** 469 == pytest.approx(0.99, abs=1e-9)


def test_adamw_is_torchs_with_decoupled_decay():
    from genood.models.training import make_optimizer
    cfg = runconfig.resolve({"preset": "flow_rq_nsf_paper"})["training"]
    opt, _ = make_optimizer(torch.nn.Linear(2, 2), cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01 and opt.defaults["lr"] == 1e-3


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_preset_is_the_seed_recipe(preset):
    cfg = runconfig.resolve({"preset": preset})
    wrong = {k: (_get(cfg, k), v) for k, v in RECIPES[preset].items() if _get(cfg, k) != v}
    assert not wrong, f"{preset} differs from its seed's recipe (ours, seed's): {wrong}"


def test_raw_parameterization_is_seed_002s_quantized_logistic():
    """Seed 002 with rescale_pixel_value false: location in pixels, scale max(sigmoid(s) * 255, 0.25), a logistic
    shifted by -1/2 and quantized to 0..255 with the tails on the end bins. Ours maps that head onto dlml's
    units; the log-probabilities must equal the seed's distribution computed here in float64."""
    from genood.models import dlml
    from genood.models.pixelcnn import raw_to_dlml

    rng = np.random.default_rng(0)
    h = w = 6
    k = rng.integers(0, 256, size=(1, 1, h, w)).astype(float)
    k[0, 0, 0, :3] = [0, 255, 128]
    loc = k + rng.normal(0, 15, size=k.shape)  # locations beyond both ends included (near the edge bins)
    pre = rng.normal(0, 3, size=(1, 1, h, w))
    params = torch.tensor(np.concatenate([np.zeros((1, 1, h, w)), loc, pre], axis=1), dtype=torch.float32)
    ours = dlml.log_prob(raw_to_dlml(params, 1, 1, 256), torch.tensor(k, dtype=torch.float32), 1, 256)

    scale = np.maximum(255.0 / (1.0 + np.exp(-pre)), 0.25)
    cdf = lambda v: 1.0 / (1.0 + np.exp(-(v - loc) / scale))
    upper = np.where(k == 255, 1.0, cdf(k + 0.5))
    lower = np.where(k == 0, 0.0, cdf(k - 0.5))
    assert (upper - lower).min() > 1e-200  # the float64 reference is still exact here
    want = np.log(upper - lower).sum()
    assert float(ours[0]) == pytest.approx(want, rel=2e-5, abs=1e-3)


def test_raw_input_model_feeds_pixel_values_and_keeps_its_likelihood_exact():
    """model.input: raw sends 0..255 to the network; log_prob stays a normalized distribution over the bins
    (the sum over all 256 values of one pixel of a 1x1 image is 1)."""
    from genood.models.pixelcnn import build_pixelcnn
    spec = runconfig.family_spec("pixelcnn")
    m = build_pixelcnn((1, 1, 1), {**spec.keys, "filters": 4, "resnets": 1, "scales": 1, "input": "raw"}).eval()
    assert torch.equal(m.to_model_space(torch.tensor([0.0, 255.0])), torch.tensor([0.0, 255.0]))
    x = torch.arange(256, dtype=torch.float32).reshape(256, 1, 1, 1)
    with torch.no_grad():
        total = torch.logsumexp(m.log_prob(x), 0)
    assert math.isclose(float(total), 0.0, abs_tol=1e-4)


def test_new_recipe_keys_at_their_defaults_keep_earlier_run_names():
    """adam_betas, lr_decay and model.input were added after runs existed: at their defaults a run's identity
    (and so its name) is what it was before they existed."""
    cfg = runconfig.resolve({"preset": "pixelcnn_tiny"})
    ident = runconfig.model_identity(cfg)
    assert "adam_betas" not in ident["training"] and "lr_decay" not in ident["training"]
    assert "input" not in ident["model"]
    raw = runconfig.model_identity(runconfig.resolve({"preset": "pixelcnn_tiny", "model": {"input": "raw"}}))
    assert raw["model"]["input"] == "raw"
    with pytest.raises(runconfig.ConfigError, match="adam_betas"):
        runconfig.resolve({"training": {"adam_betas": [0.9, 1.5]}})


def test_seed_004_free_nats_floor_each_latent_dimension_at_its_share():
    """oodd's FreeNats: a layer's KL of shape (B, d) is floored elementwise at free_nats / d; the schedule holds
    free_nats for the constant steps and then falls linearly to 0."""
    from genood.models.hvae import build_hvae

    spec = runconfig.family_spec("hvae")
    cfg = {**spec.keys, "likelihood": "bernoulli", "channels": 4, "blocks": 1, "latents": [2, 3, 2],
           "free_bits": 2.0, "free_bits_per": "element", "free_bits_constant_steps": 10, "free_bits_steps": 20,
           "weight_norm": True}
    torch.manual_seed(0)
    m = build_hvae((1, 28, 28), cfg)
    assert [m.free_bits_floor(s) for s in (0, 10, 20, 30, 99)] == [2.0, 2.0, 1.0, 0.0, 0.0]
    assert any("parametrizations" in name for name, _ in m.named_parameters())  # weight norm on the maps
    x = torch.rand(3, 1, 28, 28) * 256
    gen_state = torch.random.get_rng_state()
    m._step = 0
    got = m.training_loss(x)
    torch.random.set_rng_state(gen_state)
    t = m._targets(x)
    posts = m._posteriors(m._encoder_input(t))
    params, _, _, kls = m._top_down(posts, m._noise(posts), elementwise=True)
    floored = sum(torch.maximum(k, torch.tensor(2.0 / k.shape[1])).sum(1) for k in kls)
    want = -(m._log_lik(params, t) - floored) / (784 * math.log(2))  # no KL warm-up here: beta is 1
    assert torch.allclose(got, want, atol=1e-5)
    m._step = 10 ** 6  # after warm-up and the free nats: the plain negative ELBO
    torch.random.set_rng_state(gen_state)
    got = m.training_loss(x)
    torch.random.set_rng_state(gen_state)
    t = m._targets(x)
    posts = m._posteriors(m._encoder_input(t))
    params, _, _, kls = m._top_down(posts, m._noise(posts))
    assert torch.allclose(got, -(m._log_lik(params, t) - sum(kls)) / (784 * math.log(2)), atol=1e-5)
