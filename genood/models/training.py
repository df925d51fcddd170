"""The training loop: Adam + warmup/cosine schedule + gradient clipping, checkpoints, exact resume.

Determinism: batch ``s`` is a pure function of ``(seed, s)``: its indices come from the
permutation of epoch ``s // steps_per_epoch`` (seeded by seed and epoch), its
dequantization noise from a generator seeded by (seed, s), and torch's global generator is
reseeded from (seed, s) before ``training_loss`` (diffusions draw times and noise from it). Together with the model,
optimizer and schedule states in ``checkpoint.pt`` this makes a run killed at step k and
restarted end with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import functools
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from genood import precision as precision_mod
from genood import runconfig
from genood.data.transforms import dequantize_uniform
from genood.rundir import allow_writes, atomic_write

__all__ = ["CHECKPOINT", "TrainingDiverged", "StepSetting", "step_setting", "CheckpointError", "TrainResult", "pick_device", "batch_indices",
           "save_checkpoint", "CHECKPOINT_KEYS", "RESUME_KEYS", "load_checkpoint", "train", "fit", "load_trained",
           "ood_curves"]

CHECKPOINT = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopTraining(Exception):
    """Raised by a training callback to end training early (a wall-time budget): the loop checkpoints the step it
    reached (not finished) and returns; the same command resumes from there."""


def _call_back(callbacks, done: int, value: float) -> bool:
    """Run the per-step callbacks; True when one of them asked to stop (:class:`StopTraining`)."""
    try:
        for cb in callbacks or []:
            cb(done, value)
    except StopTraining:
        return True
    return False


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or unreadable."""


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float  # running average of training_loss (flows: bits/dim)
    seconds: float
    images_per_second: float
    precision: str = "fp32"  # what the networks trained in (fp32, bf16, fp16)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first visible CUDA device (CUDA_VISIBLE_DEVICES picks it), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(cfg: Dict[str, Any]) -> Callable[[int], float]:
    warmup = int(cfg["warmup_steps"])
    total = int(cfg["steps"])
    schedule, decay = cfg["lr_schedule"], float(cfg.get("lr_decay", 1.0))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "exponential":  # seed 002: tf.train.exponential_decay(lr, step, 1, decay)
            return decay ** step
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(model: torch.nn.Module, tcfg: Dict[str, Any]):
    """The configured optimizer (Adam or AdamW with ``adam_betas``, or RMSprop) and its learning-rate schedule.
    ``weight_decay`` is Adam's and RMSprop's L2 term, AdamW's decoupled decay."""
    name = tcfg.get("optimizer", "adam")
    own = {"betas": tuple(float(b) for b in tcfg.get("adam_betas", (0.9, 0.999)))} if name in ("adam", "adamw") else {}
    make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}[name]
    optimizer = make(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]), **own)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tcfg))


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of training batch ``step``: a pure function of (seed, step)."""
    per_epoch = max(1, n // batch_size)
    epoch, within = divmod(step, per_epoch)
    perm = _epoch_permutation(n, seed, epoch)
    if n < batch_size:
        return perm
    return perm[within * batch_size:(within + 1) * batch_size]


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, finished: bool, extra: Dict[str, Any]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "finished": finished, **extra}
    atomic_write(path, lambda p: torch.save(state, p))


CHECKPOINT_KEYS = ("model", "step", "finished", "shape", "config")
RESUME_KEYS = ("optimizer", "scheduler")


def load_checkpoint(path: Path, map_location="cpu", need=CHECKPOINT_KEYS) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a folder means its checkpoint.pt).

    Only tensors and plain data are read (``weights_only=True``): a file whose pickle would build any
    other object, run code included, is refused before anything in it runs. Checkpoints may come from
    other machines (a shared runs root, W&B artifacts), so nothing else is ever unpickled.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist; train it with `python train.py --config <yaml>` "
                              f"or leave ood.checkpoint unset so main_ood.py trains first.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"Checkpoint {path} holds objects other than tensors and plain data (loading it could "
                              f"run code), so it was not loaded; retrain it with `python train.py` or "
                              f"`python main_ood.py` from its config.yaml.") from exc
    except Exception as exc:  # truncated or corrupt file
        raise CheckpointError(f"Checkpoint {path} could not be read ({type(exc).__name__}); delete it and train "
                              f"again.") from exc
    missing = [k for k in need if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"Checkpoint {path} lacks {', '.join(map(repr, missing))}, so it is not a checkpoint "
                              f"written by this project's training; retrain it with `python train.py --config <yaml>`.")
    return state


def _restore(model, optimizer, scheduler, ckpt_path: Path, device, log, scaler=None) -> int:
    """Load the run's checkpoint into model, optimizer, schedule (and fp16's gradient scaler) when there is one; the
    step to go on from."""
    if not ckpt_path.exists():
        return 0
    from genood.integrity import file_problem
    if file_problem(ckpt_path) is not None:  # cut short from outside (our writes are atomic): keep it aside, never read it as a checkpoint
        aside = ckpt_path.with_name(f"{ckpt_path.name}.damaged-{int(time.time())}")
        ckpt_path.rename(aside)
        log(f"checkpoint {ckpt_path} is damaged (not a complete archive); moved to {aside.name}, training from step 0")
        return 0
    state = load_checkpoint(ckpt_path, map_location=device, need=CHECKPOINT_KEYS + RESUME_KEYS)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    log(f"resuming from step {state['step']} ({ckpt_path})")
    return int(state["step"])


def _loss(model, images: torch.Tensor, step: int, total: int, cfg: Dict[str, Any], hooks, device,
          setting: "StepSetting") -> torch.Tensor:
    """The objective on training batch ``step``: a pure function of (seed, step), the weights and the numeric
    setting (precision, memory layout); float32 whatever the networks ran in."""
    seed, bs = int(cfg["run"]["seed"]), int(cfg["training"]["batch_size"])
    idx = torch.from_numpy(batch_indices(step, images.shape[0], bs, seed))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    batch = images[idx]
    for hook in hooks:
        batch = hook.batch(batch, gen)
    # stored 8-bit data is dequantized; real-valued data (synthetic manifolds) is used as is
    x = (dequantize_uniform(batch.float(), gen) if batch.dtype == torch.uint8 else batch).to(device)
    if setting.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # randomness inside training_loss (diffusion times and noise) is a pure function of (seed, step) too
    torch.manual_seed((seed * 1_000_003 + step) % (2 ** 63) + 7)
    if hasattr(model, "set_training_step"):  # schedules inside the objective (VAEs: KL warm-up, free bits)
        model.set_training_step(step, total)
    with precision_mod.autocast(device, setting.dtype):
        loss = setting.objective(x).float().mean()
        dim = int(np.prod(images.shape[1:]))
        for hook in hooks:
            loss = loss + hook.penalty(model, dim) + hook.term(model, step, seed, device)
    return loss.float()


@dataclass
class StepSetting:
    """How the training step computes: the autocast dtype (None = float32), memory layout, the objective (the
    model's ``training_loss``, compiled or not) and the fp16 gradient scaler."""
    dtype: Optional[torch.dtype]
    channels_last: bool
    objective: Callable[[torch.Tensor], torch.Tensor]
    scaler: Any = None
    compiled: bool = False
    compile_seconds: Optional[float] = None

    @property
    def precision(self) -> str:
        return precision_mod.dtype_name(self.dtype)

    def after_step(self, started: float, log: Callable[[str], None]) -> None:
        """After a step begun at ``started`` (perf_counter): the first compiled step's time is the compile time."""
        if self.compiled and self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
            log(f"compile: the first compiled step took {self.compile_seconds:.1f}s")

    def state(self) -> Dict[str, Any]:
        """What the checkpoint keeps of the setting (fp16's gradient scaler)."""
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def finish(self, model) -> None:
        """The model leaves training in eval mode and the ordinary memory layout (scoring is unchanged)."""
        model.eval()
        if self.channels_last:
            model.to(memory_format=torch.contiguous_format)


def training_dtype(cfg: Dict[str, Any], device: torch.device) -> Optional[torch.dtype]:
    """``training.precision`` resolved for ``device`` and the model's family (``auto``: the family's choice where
    bf16 is native); None is fp32."""
    spec = runconfig.family_spec(cfg["model"].get("family", "flow"))
    return precision_mod.resolve(str(cfg["training"].get("precision") or "fp32"), device, spec.auto_precision)


def step_setting(model, cfg: Dict[str, Any], device: torch.device, log: Callable[[str], None] = print) -> StepSetting:
    """Resolve ``training.precision``, ``training.channels_last`` and ``training.compile`` for ``model`` on ``device``
    (one sentence, :class:`runconfig.ConfigError`, for a precision the device cannot run); logs what was chosen."""
    tcfg = cfg["training"]
    family = cfg["model"].get("family", "flow")
    spec = runconfig.family_spec(family)
    asked = str(tcfg.get("precision") or "fp32")
    dtype = training_dtype(cfg, device)
    why = ""
    if asked == "auto":
        native = precision_mod.native_bf16(device)
        why = (f" (auto: {'native' if native else 'no native'} bf16 on this {device.type}"
               + (f"; the {family} family keeps fp32 under auto: {spec.auto_precision_reason}" if native and spec.auto_precision != "bf16" else "")
               + ")")
    channels_last = bool(tcfg.get("channels_last")) and len(getattr(model, "shape", ())) == 3
    if channels_last:
        model.to(memory_format=torch.channels_last)
    compiled = bool(tcfg.get("compile"))
    objective = torch.compile(model.training_loss) if compiled else model.training_loss
    log(f"training precision: {precision_mod.dtype_name(dtype)}{why}"
        + (", channels-last" if channels_last else "") + (", compiled objective" if compiled else ""))
    return StepSetting(dtype, channels_last, objective, precision_mod.grad_scaler(dtype), compiled)


def train(model: torch.nn.Module, images: torch.Tensor, cfg: Dict[str, Any], run_directory: Path,
          log: Callable[[str], None] = print, callbacks: Optional[List[Callable[[int, float], None]]] = None) -> TrainResult:
    """Train ``model`` on ``images`` (uint8 (N,C,H,W), or float (N,D) vectors) per ``cfg['training']``, resuming if possible.

    Writes ``checkpoint.pt`` into ``run_directory`` (the caller's choice, so a write root) every ``checkpoint_every``
    steps and at the end (``finished=True``). The objective is ``model.training_loss(x).mean()`` (flows: bits/dim,
    diffusions: denoising score matching, ...) changed by the training hooks the configuration turns on
    (:mod:`models.training_hooks`): every family shares this loop, its checkpoints, resume and NaN guard.
    ``callbacks`` get ``(step, loss)`` after every step.
    """
    from genood.models.training_hooks import active_hooks
    allow_writes(Path(run_directory))
    tcfg, total = cfg["training"], int(cfg["training"]["steps"])
    device = pick_device(cfg["run"]["device"])
    ckpt_path = Path(run_directory) / CHECKPOINT
    torch.manual_seed(int(cfg["run"]["seed"]))
    model.to(device)
    optimizer, scheduler = make_optimizer(model, tcfg)
    setting = step_setting(model, cfg, device, log)
    start = _restore(model, optimizer, scheduler, ckpt_path, device, log, setting.scaler)
    if start >= total:
        setting.finish(model)
        return TrainResult(steps=total, resumed_from=start, final_loss=float("nan"), seconds=0.0, images_per_second=0.0,
                           precision=setting.precision)
    hooks = active_hooks(tcfg, images)
    loss_name = getattr(model, "loss_name", "loss")
    every, clip = max(1, int(tcfg["checkpoint_every"])), float(tcfg["grad_clip"] or 0.0)
    extra, last_good, ema, done = {"shape": list(images.shape[1:]), "config": cfg, "precision": setting.precision}, start, None, start
    model.train()
    bar, t0 = _progress(tcfg, total, start), time.perf_counter()
    try:
        for step in range(start, total):
            t_step = time.perf_counter()
            loss = _loss(model, images, step, total, cfg, hooks, device, setting)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise _diverged(model, loss_name, value, step, last_good, ckpt_path)
            _optimizer_step(model, loss, optimizer, setting.scaler, clip)
            scheduler.step()
            setting.after_step(t_step, log)
            ema, done = value if ema is None else 0.98 * ema + 0.02 * value, step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({loss_name: f"{value:.3f}", "avg": f"{ema:.3f}"}, lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False)
            if done % every == 0 or done == total:
                save_checkpoint(ckpt_path, model, optimizer, scheduler, done, done == total, {**extra, **setting.state()})
                last_good = done
            if _call_back(callbacks, done, value):
                if last_good != done:
                    save_checkpoint(ckpt_path, model, optimizer, scheduler, done, False, {**extra, **setting.state()})
                break
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    setting.finish(model)
    log(f"trained steps {start}->{done} of {total} in {seconds:.1f}s ({setting.precision}), final {loss_name} (running avg) {ema:.4f}")
    return TrainResult(steps=done, resumed_from=start, final_loss=float(ema), seconds=seconds,
                       images_per_second=(done - start) * int(tcfg["batch_size"]) / max(seconds, 1e-9),
                       precision=setting.precision)


def _optimizer_step(model, loss: torch.Tensor, optimizer, scaler, clip: float) -> None:
    """Backward, clipping and the optimizer's step; with fp16's gradient scaler the gradients are scaled for the
    backward and unscaled before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _diverged(model, loss_name: str, value: float, step: int, last_good: int, ckpt_path: Path) -> TrainingDiverged:
    return TrainingDiverged(f"Training diverged at step {step} ({loss_name} = {value}); the last good checkpoint (step "
                            f"{last_good}) is kept in {ckpt_path}; lower training.lr and rerun to resume"
                            f"{getattr(model, 'divergence_hint', '')}.")


def _progress(tcfg: Dict[str, Any], total: int, start: int):
    if not tcfg.get("progress", True):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)


def _check_run_keys_resolved(cfg: Dict[str, Any]) -> None:
    presets = {p.stem for p in runconfig.PRESET_DIR.glob("*.yaml")}
    for key in runconfig.family_spec(cfg["model"]["family"]).run_keys:
        if str(cfg["model"].get(key) or "") in presets:
            raise runconfig.ConfigError(f"model.{key} names the preset {cfg['model'][key]!r}, a run still to be found "
                                        f"or trained: pass the configuration through "
                                        f"genood.models.runs.resolve_run_keys before fit.")


def fit(cfg: Dict[str, Any], run_directory: Path, train_images, log: Callable[[str], None] = print,
        callbacks: Optional[List[Callable[[int, float], None]]] = None):
    """Build the configured model for uint8 images (N,H,W,C), train it (resuming), save a sample grid.

    ``train_images`` is the whole training split: ``data.val_fraction`` of it (``data.splits.holdout``)
    is left out here and becomes the OOD job's ``in_val`` split.

    Model keys that name another run (a family's ``run_keys``) must already be checkpoint paths: the callers
    resolve them first (:func:`genood.models.runs.resolve_run_keys`, which finds or trains that run).

    Returns ``(model, TrainResult)``; the model is in eval mode on its training device.
    """
    from genood.models.registry import build_model
    from genood.models.sample_grid import image_grid, samples_to_uint8

    _check_run_keys_resolved(cfg)
    from genood.threads import apply_threads
    apply_threads(cfg, log)
    seed = int(cfg["run"]["seed"])
    from genood.data.splits import holdout
    from genood.runconfig import holdout_seed
    keep_train, _ = holdout(len(train_images), float(cfg["data"].get("val_fraction") or 0.0), holdout_seed(cfg))  # in_val never trains
    images = torch.from_numpy(np.ascontiguousarray(train_images[keep_train]))
    if images.dtype == torch.uint8:  # (N,H,W,C) stored images -> (N,C,H,W)
        images = images.permute(0, 3, 1, 2).contiguous()
    n_sub = cfg["data"].get("train_subsample")
    if n_sub:
        keep = np.sort(np.random.default_rng(seed).permutation(images.shape[0])[: int(n_sub)])
        images = images[torch.from_numpy(keep)]
    torch.manual_seed(seed)
    model = build_model(tuple(images.shape[1:]), cfg["model"])
    label = "/".join(str(cfg["model"][k]) for k in ("family", *runconfig.family_spec(cfg["model"]["family"]).run_name))
    log(f"model: {label}, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"data {tuple(images.shape)}")
    if hasattr(model, "configure"):  # the run's settings (and the family's checks of them) before training
        model.configure(cfg)
    for cb in callbacks or []:  # callbacks that read the model (OOD curves) get it before training
        if hasattr(cb, "attach"):
            cb.attach(model)
    result = train(model, images, cfg, run_directory, log=log, callbacks=callbacks)
    n_grid = int(cfg["training"].get("sample_grid") or 0)
    grid_path = Path(run_directory) / "figures" / "samples.png"
    finished = result.steps >= int(cfg["training"]["steps"])  # a run stopped early (StopTraining) draws no samples yet
    if n_grid and len(model.shape) == 3 and finished and (result.resumed_from < result.steps or not grid_path.exists()):
        gen = torch.Generator().manual_seed(seed + 17)
        image_grid(samples_to_uint8(model.sample(n_grid, generator=gen)), grid_path)
    return model, result


def load_trained(path: Path, map_location="cpu"):
    """Rebuild a model from a checkpoint file or run directory written by :func:`train`."""
    from genood.models.registry import build_model

    state = load_checkpoint(path, map_location=map_location)
    cfg = state["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"Checkpoint {path} has no model section in its 'config'; retrain it with "
                              f"`python train.py --config <yaml>`.")
    model = build_model(tuple(state["shape"]), cfg["model"])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"Checkpoint {path}'s weights do not fit the model its config describes ({first}); "
                              f"retrain it with `python train.py --config <yaml>`.") from exc
    model.eval()
    return model, state


def ood_curves(cfg: Dict[str, Any], directory: Path, shape, log, tracker) -> list:
    """[the OOD-curves callback] when ``training.ood_curve_every`` > 0 (see :mod:`models.ood_curves`), else []."""
    if not int(cfg["training"].get("ood_curve_every") or 0):
        return []
    from genood.models.ood_curves import OodCurves

    if len(shape) != 3:
        raise runconfig.ConfigError("training.ood_curve_every scores images of the in-distribution and OOD test sets; "
                                    "this data holds vectors: set it to 0.")

    return [OodCurves(cfg, directory, tuple(shape), log, tracker)]
