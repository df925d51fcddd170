"""Training precision (genood.precision): resolution, float32 log-terms under autocast, bf16 training and resume,
scoring bit-identical to code without the precision machinery, and the CPU threads of a host's agents."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genood import precision, runconfig
from genood.models import training
from genood.models.registry import build_model
from tests.conftest import ROOT, assert_training_resumes_to_the_same_weights

CPU = torch.device("cpu")
FAMILY_PRESETS = ["flow_rq_nsf_tiny", "flow_affine_tiny", "realnvp_tiny", "glow_tiny", "diffusion_vp_tiny",
                  "hvae_tiny", "pixelcnn_tiny", "vae_tiny"]
REDUCTIONS = {"sum", "mean", "logsumexp", "cumsum", "prod", "_log_softmax", "var", "std", "linalg_vector_norm", "norm"}


# --- resolution --------------------------------------------------------------------------------------------------

def test_auto_is_bf16_with_native_bf16_and_fp32_without(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve("auto", CPU) is torch.bfloat16
    assert precision.resolve("auto", CPU, family_auto="fp32") is None  # a family where bf16 hurts keeps fp32
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve("auto", CPU) is None
    assert precision.resolve("bf16", CPU) is torch.bfloat16  # asked for explicitly: honoured
    assert precision.resolve("fp32", CPU) is None


def test_native_bf16_follows_the_cpu_flags():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    expected = "amx_bf16" in flags or "avx512_bf16" in flags
    assert precision.native_bf16(CPU) == expected


def test_fp16_on_a_cpu_is_refused_in_one_sentence():
    with pytest.raises(runconfig.ConfigError) as err:
        precision.resolve("fp16", CPU)
    message = str(err.value)
    assert "needs a CUDA device" in message and "bf16, auto or fp32" in message and message.count(". ") == 0


def test_fp16_on_a_cpu_ends_train_py_with_exit_2(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(32, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images)
    model = "model.levels=1,model.steps_per_level=1,model.hidden_channels=4"
    proc = subprocess.run([sys.executable, "train.py", f"data.in_distribution=npz:{tmp_path / 'set.npz'}",
                           *model.split(","), "training.steps=2", "training.batch_size=8", "training.precision=fp16",
                           "run.device=cpu", "tracking.wandb=false", f"run.runs_root={tmp_path / 'runs'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "'fp16' needs a CUDA device" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_precision_keys_are_checked_and_auto_keeps_run_names():
    with pytest.raises(runconfig.ConfigError, match="'training.precision' must be one of"):
        runconfig.resolve({}, ["training.precision=fp8"])
    with pytest.raises(runconfig.ConfigError, match="'ood.precision' must be one of"):
        runconfig.resolve({}, ["ood.precision=fp16"])
    auto = runconfig.resolve({}, [])
    assert auto["training"]["precision"] == "auto"
    speed = runconfig.resolve({}, ["training.channels_last=true", "training.compile=true"])
    fp32 = runconfig.resolve({}, ["training.precision=fp32"])
    assert runconfig.run_name(auto, "train") == runconfig.run_name(speed, "train")  # layout and compile: speed only
    assert runconfig.run_name(auto, "train") != runconfig.run_name(fp32, "train")  # numerics differ: another run


# --- what stays float32 under autocast ----------------------------------------------------------------------------

class _Recorder(TorchDispatchMode):
    """Records reductions (sums, means, logsumexp, ...) whose output is reduced precision, outside networks."""

    def __init__(self, depth):
        super().__init__()
        self.depth, self.bad, self.reduced_ops = depth, [], 0

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
            self.reduced_ops += 1
            if func.overloadpacket.__name__ in REDUCTIONS and self.depth[0] == 0:
                self.bad.append(func.overloadpacket.__name__)
        return out


def _model(preset: str, shape=(1, 28, 28)):
    cfg = runconfig.resolve({"preset": preset}, ["tracking.wandb=false"])
    torch.manual_seed(0)
    return build_model(shape, cfg["model"]), cfg


def _batch(n=4, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() + torch.rand((n, *shape), generator=g)


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_losses_are_float32_under_bf16_autocast(preset):
    """Under bf16 autocast the networks compute in bf16 (convolutions seen in bf16) but no reduction outside a
    network is reduced precision: log-dets, log-likelihoods and KLs are summed in float32, and the loss is
    float32 and close to the fp32 loss."""
    model, _ = _model(preset)
    model.train()
    x = _batch()
    torch.manual_seed(5)
    ref = model.training_loss(x).mean()
    depth = [0]

    def pre(module, args):
        if precision.is_network(module):
            depth[0] += 1

    def post(module, args, out):
        if precision.is_network(module):
            depth[0] -= 1
    handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
               torch.nn.modules.module.register_module_forward_hook(post)]
    try:
        torch.manual_seed(5)
        recorder = _Recorder(depth)
        with precision.autocast(CPU, torch.bfloat16), recorder:
            loss = model.training_loss(x).mean()
    finally:
        for h in handles:
            h.remove()
    assert recorder.reduced_ops > 0, "nothing ran in bf16: autocast was not active"
    assert not recorder.bad, f"reductions in bf16 outside the networks: {sorted(set(recorder.bad))}"
    assert loss.dtype == torch.float32
    loss, ref = loss.detach(), ref.detach()
    assert abs(float(loss) - float(ref)) < 0.02 * abs(float(ref)) + 0.02, (float(loss), float(ref))


def test_exact_casts_and_is_the_identity_outside_autocast():
    @precision.exact
    def total(a, b):
        return (a * b).sum(), a.dtype
    a = torch.randn(1000, dtype=torch.bfloat16)
    with precision.autocast(CPU, torch.bfloat16):
        s, dtype = total(a, torch.ones(1000))
        assert dtype == torch.float32 and s.dtype == torch.float32
    s, dtype = total(a, torch.ones(1000))  # no autocast: as written (type promotion only)
    assert dtype == torch.bfloat16


# --- bf16 training per family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_bf16_training_short_run(preset, tmp_path):
    """A few bf16 steps of every family through the training loop: finite loss, the log says bf16, and the
    checkpoint is an ordinary float32 one that loads into a new model."""
    cfg = runconfig.resolve({"preset": preset}, ["training.precision=bf16", "training.steps=6", "training.batch_size=8",
                                                 "training.warmup_steps=2", "training.progress=false",
                                                 "training.sample_grid=0", "tracking.wandb=false",
                                                 "training.checkpoint_every=3"])
    images = np.random.default_rng(0).integers(0, 256, size=(48, 28, 28, 1), dtype=np.uint8)
    logs = []
    _, result = training.fit(cfg, tmp_path, images, log=logs.append)
    assert result.precision == "bf16" and np.isfinite(result.final_loss)
    assert any(m.startswith("training precision: bf16") for m in logs), logs
    state = training.load_checkpoint(tmp_path)
    assert state["precision"] == "bf16"
    assert all(v.dtype in (torch.float32, torch.uint8, torch.int64, torch.bool) for v in state["model"].values())
    model, _ = training.load_trained(tmp_path)
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_resume_is_identical_to_an_uninterrupted_run(tiny_cfg, tmp_path):
    cfg = runconfig.deep_merge(tiny_cfg, {"training": {"precision": "bf16", "steps": 8}})
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8)
    torch.set_num_threads(1)  # at equal thread count
    try:
        assert_training_resumes_to_the_same_weights(cfg, images, tmp_path, stop_at=4)
    finally:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def test_channels_last_trains_the_same_objective(tmp_path):
    """channels-last changes the layout, not the model: the first loss matches the contiguous run's and the model
    leaves training in the ordinary layout. (PixelCNN++'s objective draws no noise: a family that draws noise
    with ``randn_like`` fills a channels-last tensor in another order, so its noise differs.)"""
    base = ["training.steps=2", "training.batch_size=8", "training.progress=false", "training.sample_grid=0",
            "tracking.wandb=false", "training.precision=fp32"]
    images = np.random.default_rng(0).integers(0, 256, size=(32, 28, 28, 1), dtype=np.uint8)
    first = {}
    for layout in ("false", "true"):
        cfg = runconfig.resolve({"preset": "pixelcnn_tiny"}, base + [f"training.channels_last={layout}"])
        losses = []
        model, _ = training.fit(cfg, tmp_path / layout, images, log=lambda m: None,
                                callbacks=[lambda step, value: losses.append(value)])
        first[layout] = losses[0]
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous()
    assert abs(first["true"] - first["false"]) < 1e-4


# --- scoring stays exact --------------------------------------------------------------------------------------------

def _strip_precision(monkeypatch, model):
    """The code as it was without genood.precision: every exact wrapper replaced by the function it wraps, every
    network's output cast hook and every exact module's forward wrapper removed."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("genood.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if getattr(value, "_genood_exact", False):
                monkeypatch.setattr(module, attr, value.__wrapped__)
            elif isinstance(value, type) and value.__module__ == name:
                for key, member in list(vars(value).items()):
                    if getattr(member, "_genood_exact", False):
                        monkeypatch.setattr(value, key, member.__wrapped__)
    for m in model.modules():
        if precision.is_network(m):
            m._forward_hooks.clear()
        if getattr(m, "_genood_exact_inner", None) is not None:
            m.forward = m._genood_exact_inner


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_fp32_scoring_is_bit_identical_to_code_without_precision(preset, monkeypatch):
    from genood.ood.runner import score_images
    model, cfg = _model(preset)
    model.eval()
    model.configure(cfg) if hasattr(model, "configure") else None
    x = _batch(3, seed=1)
    # the diffusion's ODE likelihood takes minutes on a CPU; its score norms run the same network
    names = ["log_likelihood"] if not preset.startswith("diffusion") else ["score_norms"]
    ours = score_images(model, x, names, 2, CPU, progress=False, cfg=cfg)
    torch.manual_seed(0)
    ours_loss = model.training_loss(x)
    _strip_precision(monkeypatch, model)
    plain = score_images(model, x, names, 2, CPU, progress=False, cfg=cfg)
    torch.manual_seed(0)
    plain_loss = model.training_loss(x)
    for key in ours:
        assert np.array_equal(ours[key], plain[key]), key
    assert torch.equal(ours_loss, plain_loss)


def test_ood_precision_bf16_scores_close_but_not_identical():
    from genood.ood.runner import score_images
    model, cfg = _model("realnvp_tiny")
    with torch.no_grad():  # the zero-initialised output layers would make the networks' precision invisible
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.05)
    model.eval()
    x = _batch(4, seed=2)
    exact = score_images(model, x, ["log_likelihood"], 4, CPU, progress=False, cfg=cfg)["log_likelihood"]
    cfg16 = runconfig.deep_merge(cfg, {"ood": {"precision": "bf16"}})
    approx = score_images(model, x, ["log_likelihood"], 4, CPU, progress=False, cfg=cfg16)["log_likelihood"]
    assert not np.array_equal(exact, approx)
    np.testing.assert_allclose(approx, exact, rtol=2e-3)


# --- threads ----------------------------------------------------------------------------------------------------

def test_threads_share_the_cores_among_live_agents(tmp_path, monkeypatch):
    from genood import threads
    monkeypatch.setenv(threads.AGENTS_DIR_ENV, str(tmp_path))
    assert threads.threads_for(None) is None  # no agent on the host: torch's own default
    assert threads.threads_for(3) == 3
    assert threads.threads_for(None, cores=2, agents=2) == 1
    assert threads.threads_for(None, cores=16, agents=3) == 5
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{dead.pid}.pid").write_text(str(dead.pid))  # an agent that died without cleaning up
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"{sleeper.pid}.pid").write_text(str(sleeper.pid))
        assert threads.live_agents() == 1 and not (tmp_path / f"{dead.pid}.pid").exists()
        with threads.agent_presence():
            assert threads.live_agents() == 2
            assert threads.threads_for(None, cores=2) == 1  # two agents on two cores: one thread each
        assert threads.threads_for(None, cores=2) == 1  # this process beside one agent: one thread each
    finally:
        sleeper.kill()
        sleeper.wait()
    assert threads.live_agents() == 0


def test_a_run_that_only_scores_a_checkpoint_takes_its_share_of_the_cores_too(tiny_cfg, tmp_path, monkeypatch):
    """An OOD job given ood.checkpoint trains nothing; it still sets torch's threads to its share among the
    agents of the host (two agents each at torch's default of one thread a core ran four threads on two cores)."""
    import torch

    from genood import threads
    from genood.ood import runner
    monkeypatch.setenv(threads.AGENTS_DIR_ENV, str(tmp_path / "agents"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's default on a two-core machine
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = runner.run_ood(tiny_cfg, echo=False)  # no agent on the host: torch's default, nothing said
        assert "cpu threads" not in (first / "run.log").read_text() and torch.get_num_threads() == 2
        (tmp_path / "agents").mkdir()
        (tmp_path / "agents" / f"{sleeper.pid}.pid").write_text(str(sleeper.pid))  # one agent beside this process
        cfg = runconfig.deep_merge(tiny_cfg, {"ood": {"checkpoint": str(first / "checkpoint.pt")},
                                              "run": {"name": "scores-only"}})
        second = runner.run_ood(cfg, echo=False)
        assert torch.get_num_threads() == 1
        assert "cpu threads: 1 (2 cores shared by the agents on this host)" in (second / "run.log").read_text()
    finally:
        sleeper.kill()
        sleeper.wait()
        torch.set_num_threads(before)


def test_compiled_objective_trains(tmp_path):
    """training.compile compiles the objective; the loss of its first step equals the eager one and the log
    reports the compile time."""
    if not any(os.access(os.path.join(p, "g++"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.fail("torch.compile on a CPU needs a C++ compiler (g++): install build-essential")
    base = ["training.steps=2", "training.batch_size=16", "training.progress=false", "training.sample_grid=0",
            "tracking.wandb=false", "training.precision=fp32"]
    cfg0 = runconfig.resolve({"preset": "flow_tabular"}, base)
    images = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    first = {}
    for flag in ("false", "true"):
        cfg = runconfig.deep_merge(cfg0, {"training": {"compile": flag == "true"}})
        losses, logs = [], []
        training.fit(cfg, tmp_path / flag, images, log=logs.append, callbacks=[lambda s, v: losses.append(v)])
        first[flag] = losses[0]
    assert any(m.startswith("compile: the first compiled step took") for m in logs), logs
    assert abs(first["true"] - first["false"]) < 1e-4
