"""The model zoo: reference models trained by this project, shipped as safetensors with a manifest each.

``zoo/reference.yaml`` lists the reference tier: each entry a seed's recipe (a preset and the data it trains on)
and the CPU budget it may take here. ``genood-zoo train <name>`` trains one as far as its budget allows, across as
many sessions as it takes: the run lives in ``<runs_root>/zoo/<run-name>/`` like any training run, and at every
checkpoint its resume point (weights, optimizer, schedule, step: the run's checkpoint.pt, read back with
``weights_only=True``) and a ledger of the wall time spent (``zoo/resume/<name>.json``) are copied into
``zoo/resume/``, which is committed, so a new machine resumes where the last one stopped. When the recipe's steps
or the budget are done, ``publish`` writes the final weights as ``zoo/<name>.safetensors`` (fp32) and the
manifest ``zoo/<name>.json``: family, preset, the resolved configuration and its hash, data checksums, steps done
of the recipe, wall time and machine, the commits that trained it, held-out bits/dim on 500 test images, the
headline AUROC, the sha256 of the weights; the resume point leaves.

``ood.checkpoint: zoo:<name>`` scores with a zoo model: the weights are checked against the manifest's sha256
on every load and read with safetensors (nothing is unpickled). Names are one path component of
``[A-Za-z0-9_.-]`` that does not start with ``-`` or ``.``.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from genood import runconfig
from genood.paths import NAME_CHARS, PROJECT_ROOT, name_problem, shown_name, shown_path

__all__ = ["ZooError", "ZOO_PREFIX", "zoo_dir", "check_name", "reference_entries", "reference_config",
           "manifest", "names", "is_zoo_ref", "find_published", "find_or_train", "open_zoo_model", "zoo_config", "publish", "verify", "adopt",
           "heldout_bits_per_dim", "heldout_record", "VERIFY_IMAGES", "VERIFY_BATCH",
           "Ledger", "train_reference", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES"]

ZOO_PREFIX = "zoo:"
MAX_FILE_BYTES = 12 * 1024 * 1024   # a weights file in the tree
MAX_TOTAL_BYTES = 80 * 1024 * 1024  # all of them together
VERIFY_IMAGES = 500
VERIFY_BATCH = 100  # the held-out measurement's batch: a prefix of batches is the same computation
MAX_NAME = 64


class ZooError(runconfig.ConfigError):
    """A zoo name, entry or file is wrong; one sentence that says what to run."""


def zoo_dir() -> Path:
    return PROJECT_ROOT / "zoo"


def check_name(name: Any, what: str = "zoo model name") -> str:
    """``name`` if it is one safe path component (:func:`genood.paths.name_problem`) of at most 64 characters,
    else a ZooError."""
    if name_problem(name) or len(name) > MAX_NAME:
        raise ZooError(f"The {what} {shown_name(name)!r} must be 1-{MAX_NAME} characters of {NAME_CHARS}, not "
                       f"starting with '-' or '.'; see `genood-zoo list` for the names there are.")
    return name


def _read_yaml(path: Path) -> Dict[str, Any]:
    return runconfig.load_yaml(path) if path.exists() else {}


def reference_entries() -> Dict[str, Dict[str, Any]]:
    """The reference tier as ``zoo/reference.yaml`` declares it: name -> entry."""
    raw = _read_yaml(zoo_dir() / "reference.yaml").get("models") or {}
    if not isinstance(raw, dict):
        raise ZooError("zoo/reference.yaml: 'models' must map names to entries.")
    for name, entry in raw.items():
        check_name(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ZooError(f"zoo/reference.yaml: entry {name!r} needs a 'config' mapping (a preset and its data).")
    return raw


def _entry(name: str) -> Dict[str, Any]:
    entries = reference_entries()
    if check_name(name) not in entries:
        raise ZooError(f"There is no reference model {name!r} in zoo/reference.yaml; known: "
                       f"{', '.join(sorted(entries)) or 'none'}.")
    return entries[name]


def reference_config(name: str, overrides=()) -> Dict[str, Any]:
    """The resolved training configuration of reference model ``name`` (runs under ``<runs_root>/zoo/``)."""
    user = runconfig.copy_tree(_entry(name)["config"])
    user.setdefault("run", {})["sweep_id"] = "zoo"
    user.setdefault("tracking", {}).setdefault("wandb", False)
    return runconfig.resolve(user, list(overrides))


def names() -> List[str]:
    """Published zoo models (a manifest beside its weights)."""
    return sorted(p.stem for p in zoo_dir().glob("*.json") if (p.with_suffix(".safetensors")).exists())


def manifest(name: str) -> Dict[str, Any]:
    path = zoo_dir() / f"{check_name(name)}.json"
    if not path.exists():
        known = names()
        raise ZooError(f"There is no zoo model {name!r} (no {shown_path(path)}); known: "
                       f"{', '.join(known) or 'none yet'}; `genood-zoo list` shows them.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZooError(f"The zoo manifest {path} could not be read ({type(exc).__name__}); restore it with "
                       f"`git checkout -- {shown_path(path)}`.") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "sha256" not in data:
        raise ZooError(f"The zoo manifest {path} lacks its config or sha256; restore it with git.")
    return data


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_zoo_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(ZOO_PREFIX)


def zoo_config(value: str) -> Dict[str, Any]:
    """The training configuration a ``zoo:<name>`` reference was trained with."""
    return manifest(value[len(ZOO_PREFIX):])["config"]


def open_zoo_model(value: str, map_location="cpu"):
    """``zoo:<name>`` -> (model in eval mode, state) with state like a checkpoint's (step, finished, shape,
    config); the weights' sha256 is checked against the manifest first, and only safetensors is read."""
    from safetensors.torch import load_file

    from genood.models.registry import build_model

    name = value[len(ZOO_PREFIX):]
    info = manifest(name)
    path = zoo_dir() / f"{name}.safetensors"
    if not path.exists():
        raise ZooError(f"The weights of zoo model {name!r} ({shown_path(path)}) are missing; restore "
                       f"them with `git checkout -- zoo/` (or `git lfs pull` where the tree uses LFS).")
    if sha256(path) != info["sha256"]:
        raise ZooError(f"The weights of zoo model {name!r} do not match the sha256 in its manifest (the file is "
                       f"corrupted or was replaced); restore them with `git checkout -- {shown_path(path)}`.")
    model = build_model(tuple(info["shape"]), info["config"]["model"])
    try:
        model.load_state_dict(load_file(str(path), device=str(map_location)))
    except (RuntimeError, KeyError) as exc:
        raise ZooError(f"The weights of zoo model {name!r} do not fit the model its manifest describes "
                       f"({str(exc).splitlines()[0]}); republish it with `genood-zoo publish {name}`.") from None
    model.eval()
    state = {"step": info["steps_done"], "finished": True, "shape": info["shape"], "config": info["config"]}
    return model, state


def _identity_key(cfg: Dict[str, Any]) -> str:
    return json.dumps(runconfig.model_identity(cfg), sort_keys=True, default=str)


def find_published(cfg: Dict[str, Any]) -> Optional[str]:
    """The published zoo model whose model identity (architecture, training, data, seed) is ``cfg``'s, or None."""
    want = _identity_key(cfg)
    for name in names():
        try:
            if _identity_key(manifest(name)["config"]) == want:
                return name
        except (ZooError, KeyError, TypeError):
            continue
    return None


def find_or_train(cfg: Dict[str, Any], runs_root: Path, log: Callable[[str], None], **kwargs):
    """:func:`models.runs.find_or_train` for the extra models a score needs (background models, ensemble members),
    taking a published zoo model of the same identity first when the evaluated model itself comes from the zoo
    (``ood.checkpoint: zoo:<name>``), so zoo runs pair zoo models with each other."""
    from genood.models.runs import find_or_train as find_run_or_train
    if is_zoo_ref((cfg.get("ood") or {}).get("checkpoint")):
        name = find_published(cfg)
        if name is not None:
            info = manifest(name)
            log(f"{kwargs.get('what', 'extra model')}: zoo model {name} (step {info['steps_done']:,} of "
                f"{info['steps_recipe']:,} of its recipe)")
            return open_zoo_model(ZOO_PREFIX + name)[0], zoo_dir()
    return find_run_or_train(cfg, runs_root, log, **kwargs)


def _heldout_batches(model, cfg: Dict[str, Any], n: int) -> List[Tuple[float, int]]:
    """(mean bits/dim, images) of each batch of ``VERIFY_BATCH`` among the first ``n`` in-distribution test images
    (seeded evaluation dequantization). Batches are fixed so a prefix of them is the same computation as in the
    full measurement (an adaptive ODE solver's steps depend on the whole batch)."""
    import numpy as np
    import torch

    from genood.data.registry import load_split
    from genood.data.transforms import eval_dequantization_noise, match_shape

    test = load_split(cfg["data"]["in_distribution"], "test")
    shape = tuple(cfg["data"]["shape"] or test.shape_chw)
    images = match_shape(test.images, shape)[:n]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = x + eval_dequantization_noise(len(x), shape, int(cfg["run"]["seed"]), "zoo_verify",
                                      cfg["data"]["eval_dequantization"])
    device = next(model.parameters()).device
    with torch.no_grad():
        return [(float(model.bits_per_dim(x[i:i + VERIFY_BATCH].to(device)).cpu().double().mean()),
                 len(x[i:i + VERIFY_BATCH])) for i in range(0, len(x), VERIFY_BATCH)]


def _image_mean(batches: List[Tuple[float, int]]) -> float:
    """The mean over images of (batch mean, images) pairs."""
    return float(sum(b * k for b, k in batches) / sum(k for _, k in batches))


def heldout_bits_per_dim(model, cfg: Dict[str, Any], n: int = VERIFY_IMAGES) -> float:
    """Mean bits/dim of the first ``n`` in-distribution test images (seeded evaluation dequantization)."""
    return _image_mean(_heldout_batches(model, cfg, n))


def heldout_record(model, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's held-out fields: the mean bits/dim on the first ``VERIFY_IMAGES`` test images, each batch's
    mean (so a quick check can verify a prefix of batches exactly), how many images, and the seconds it took."""
    start = time.monotonic()
    batches = _heldout_batches(model, cfg, VERIFY_IMAGES)
    return {"heldout_bits_per_dim": round(_image_mean(batches), 6), "heldout_images": sum(k for _, k in batches),
            "heldout_batches": [round(b, 6) for b, _ in batches],
            "heldout_seconds": round(time.monotonic() - start, 1)}


def _machine(threads: int) -> Dict[str, Any]:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class Ledger:
    """``zoo/resume/<name>.json``: the wall time and steps each session spent on a reference model."""

    def __init__(self, name: str):
        self.path = zoo_dir() / "resume" / f"{check_name(name)}.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": 0.0, "sessions": []}

    @property
    def seconds(self) -> float:
        return float(self.data.get("seconds", 0.0))

    @property
    def step(self) -> Optional[int]:
        """The step the last session reached, or None before the first."""
        rows = self.data.get("sessions") or []
        return int(rows[-1].get("to_step") or 0) if rows else None

    def record(self, session: Dict[str, Any], seconds: float) -> None:
        """Replace the current session's row (the last, when it has the same start) and the running total."""
        rows = self.data["sessions"]
        if rows and rows[-1].get("id") == session["id"]:
            rows.pop()
        rows.append(session)
        self.data["seconds"] = seconds
        from genood import rundir
        rundir.write_json(self.path, self.data)


def _git_commit() -> Optional[str]:
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _Budget:
    """A training callback: after every checkpoint, copy the resume point into zoo/resume/ and update the ledger;
    stop (:class:`StopTraining`) once this session's minutes or the model's whole budget are spent."""

    def __init__(self, name: str, directory: Path, every: int, minutes: Optional[float], budget_s: float,
                 threads: int, log: Callable[[str], None], precision: Optional[str] = None):
        self.name, self.directory, self.every, self.log = name, Path(directory), max(1, every), log
        self.ledger, self.t0 = Ledger(name), time.time()
        self.prior = self.ledger.seconds
        self.limit = min(budget_s - self.prior, float("inf") if minutes is None else minutes * 60.0)
        self.session = {"id": uuid.uuid4().hex[:12], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)), "commit": _git_commit(),
                        "machine": _machine(threads), "precision": precision, "from_step": None, "to_step": None,
                        "seconds": 0.0}

    def __call__(self, step: int, loss: float) -> None:
        from genood.models.training import StopTraining
        if self.session["from_step"] is None:
            self.session["from_step"] = step - 1
        if step % self.every == 0:
            self.save(step)
        if time.time() - self.t0 >= self.limit:
            self.log(f"zoo {self.name}: budget reached at step {step} ({(self.prior + time.time() - self.t0) / 3600:.2f} h "
                     f"of training in all); stopping with a resume point")
            raise StopTraining()

    def save(self, step: int) -> None:
        """Copy the run's checkpoint (and its OOD curves) into zoo/resume/ and write the ledger."""
        from genood import rundir
        from genood.models.ood_curves import CURVES_FILE
        from genood.models.training import CHECKPOINT
        resume = zoo_dir() / "resume"
        for src, dst in ((CHECKPOINT, f"{self.name}.pt"), (CURVES_FILE, f"{self.name}.curves.parquet")):
            if (self.directory / src).exists():
                rundir.atomic_write(resume / dst, lambda p, s=src: shutil.copyfile(self.directory / s, p))
        elapsed = time.time() - self.t0
        self.session.update(to_step=step, seconds=round(elapsed, 1))
        self.ledger.record(dict(self.session), round(self.prior + elapsed, 1))


def _adopt_resume_point(name: str, directory: Path, log: Callable[[str], None]) -> None:
    """Put zoo/resume/<name>.pt into the run directory when it is further along than the run's own checkpoint."""
    from genood.models.training import CHECKPOINT, load_checkpoint
    src = zoo_dir() / "resume" / f"{name}.pt"
    if not src.exists():
        return
    theirs = load_checkpoint(src)["step"]  # weights_only: refuses anything but tensors and plain data
    dst = Path(directory) / CHECKPOINT
    ours = load_checkpoint(dst)["step"] if dst.exists() else -1
    if theirs > ours:
        from genood import rundir
        rundir.atomic_write(dst, lambda p: shutil.copyfile(src, p))
        curves = zoo_dir() / "resume" / f"{name}.curves.parquet"
        if curves.exists():
            from genood.models.ood_curves import CURVES_FILE
            rundir.atomic_write(Path(directory) / CURVES_FILE, lambda p: shutil.copyfile(curves, p))
        log(f"zoo {name}: resuming from the committed resume point (step {theirs})")


def _session_precision(cfg: Dict[str, Any]) -> str:
    """The precision this session trains in (as training resolves it on this machine): a model resumed on another
    machine may change precision between sessions, and each ledger row says which."""
    from genood import precision as precision_mod
    from genood.models.training import pick_device, training_dtype
    return precision_mod.dtype_name(training_dtype(cfg, pick_device(str(cfg["run"].get("device") or "auto"))))


def train_reference(name: str, minutes: Optional[float] = None, threads: int = 1, overrides=(),
                    log: Callable[[str], None] = print) -> Tuple[Path, bool]:
    """Train reference model ``name`` for at most ``minutes`` of this session (and its budget in all); returns
    (run directory, whether training is over: the recipe's steps or the whole budget done)."""
    from genood import rundir
    from genood.models.runs import run_training
    from genood.models.training import CHECKPOINT, load_checkpoint

    entry = _entry(name)
    cfg = reference_config(name, [f"run.num_threads={int(threads)}", *overrides])
    if runconfig.model_identity(cfg) != runconfig.model_identity(reference_config(name)):
        raise ZooError(f"The overrides {' '.join(overrides)} change what reference model {name!r} learns; only "
                       f"speed-only keys (e.g. training.progress, run.device) may be set here: change the recipe "
                       f"in zoo/reference.yaml instead.")
    budget_s = float(entry.get("budget_hours", 3.0)) * 3600.0
    directory = rundir.run_dir(cfg, runconfig.run_name(cfg, "train"))
    _adopt_resume_point(name, directory, log)
    budget = _Budget(name, directory, int(cfg["training"]["checkpoint_every"]), minutes, budget_s, int(threads), log,
                     _session_precision(cfg))
    if budget.limit <= 0 and (directory / CHECKPOINT).exists():
        log(f"zoo {name}: its budget of {budget_s / 3600:.1f} h is spent")
        return directory, True
    run_training(cfg, callbacks=[budget])
    state = load_checkpoint(directory / CHECKPOINT)
    budget.save(int(state["step"]))
    over = bool(state["finished"]) or Ledger(name).seconds >= budget_s - 1.0
    return directory, over


def _identity_difference(got: Dict[str, Any], want: Dict[str, Any]) -> Optional[str]:
    """The first dotted key whose value differs between two model identities, with both values; None if equal."""
    a, b = runconfig.flatten(got), runconfig.flatten(want)
    key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
    return None if key is None else f"{key} is {a.get(key)!r} there and {b.get(key)!r} in the recipe"


def _logged_training_seconds(directory: Path) -> Optional[float]:
    """The training wall time a run's log states (the sum of its 'trained steps a->b of n in Ts' lines: one a
    session), or None when it states none."""
    import re
    log_path = Path(directory) / "run.log"
    if not log_path.is_file():
        return None
    found = re.findall(r"trained steps \d+->\d+ of \d+ in ([0-9.]+)s", log_path.read_text(errors="replace"))
    return round(sum(float(t) for t in found), 1) if found else None


def adopt(name: str, run_directory: Path, log: Callable[[str], None] = print) -> Path:
    """Make a finished training run made elsewhere (a sweep's run directory) the training of reference model
    ``name``, when it learned exactly the entry's recipe (the same model identity: model, training, data and
    seed): its checkpoint (read with ``weights_only``) and provenance go to the entry's run directory and a
    ledger row says where it came from, which commit trained it and the wall time its log states; ``publish``
    then makes the zoo entry. Returns the entry's run directory."""
    from genood import rundir
    from genood.models.training import CHECKPOINT, load_checkpoint

    _entry(name)  # a name zoo/reference.yaml holds, before anything is read
    src = Path(run_directory)
    if not (src / CHECKPOINT).is_file():
        raise ZooError(f"{shown_path(src)} has no {CHECKPOINT}: give the directory of a finished training run "
                       f"(runs/<sweep>/<run>/).")
    if (zoo_dir() / f"{name}.json").exists() or Ledger(name).step is not None:
        raise ZooError(f"Reference model {name!r} is already published or training here (zoo/{name}.json or "
                       f"zoo/resume/{name}.json); remove those files to replace it by an adopted run.")
    state = load_checkpoint(src / CHECKPOINT)
    cfg = reference_config(name)
    differs = _identity_difference(runconfig.model_identity(state["config"]), runconfig.model_identity(cfg))
    if differs:
        raise ZooError(f"The run in {shown_path(src)} did not train reference model {name!r}'s recipe ({differs}); "
                       f"adopt a run of that recipe or change the entry in zoo/reference.yaml.")
    if not state.get("finished"):
        raise ZooError(f"The run in {shown_path(src)} stopped at step {state['step']} of "
                       f"{cfg['training']['steps']}; finish it (run it again) before adopting it.")
    directory = rundir.run_dir(cfg, runconfig.run_name(cfg, "train"))
    directory.mkdir(parents=True, exist_ok=True)
    for file in (CHECKPOINT, "provenance.json"):
        if (src / file).is_file():
            rundir.atomic_write(directory / file, lambda p, f=file: shutil.copyfile(src / f, p))
    provenance = json.loads((src / "provenance.json").read_text()) if (src / "provenance.json").is_file() else {}
    seconds = _logged_training_seconds(src)
    session = {"id": uuid.uuid4().hex[:12], "adopted_from": shown_path(src), "commit": provenance.get("git_commit"),
               "git_dirty": provenance.get("git_dirty"), "machine": None, "precision": state.get("precision"),
               "from_step": 0, "to_step": int(state["step"]), "seconds": seconds}
    Ledger(name).record(session, seconds or 0.0)
    log(f"zoo {name}: adopted the finished run {shown_path(src)} (step {state['step']}, "
        f"{'unstated' if seconds is None else f'{seconds:.0f} s'} of training); `genood-zoo publish {name}` makes "
        f"the zoo entry")
    return directory


def publish(name: str, log: Callable[[str], None] = print, headline: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Final weights of reference model ``name`` -> zoo/<name>.safetensors + zoo/<name>.json; the resume point
    leaves. ``headline``: the AUROC the reproduction measured for it (score, pair, value, interval)."""
    import torch
    from safetensors.torch import save_file

    from genood import rundir
    from genood.models.training import CHECKPOINT, load_trained

    cfg = reference_config(name)
    directory = rundir.run_dir(cfg, runconfig.run_name(cfg, "train"))
    _adopt_resume_point(name, directory, log)  # a clone holds only the committed resume point
    if not (directory / CHECKPOINT).exists():
        raise ZooError(f"Reference model {name!r} has no trained run in {directory}; train it with "
                       f"`genood-zoo train {name}` first.")
    model, state = load_trained(directory / CHECKPOINT)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    path = zoo_dir() / f"{name}.safetensors"
    rundir.atomic_write(path, lambda p: save_file(tensors, str(p)))
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        path.unlink()
        raise ZooError(f"The weights of {name!r} take {size / 2**20:.1f} MB, over the zoo's "
                       f"{MAX_FILE_BYTES / 2**20:.0f} MB a file; publish a smaller preset.")
    ledger = Ledger(name)
    provenance = json.loads((directory / "provenance.json").read_text()) if (directory / "provenance.json").exists() else {}
    info = {"name": name, "seed": _entry(name).get("seed"), "family": cfg["model"]["family"],
            "preset": _entry(name)["config"].get("preset"), "config": state["config"],
            "config_hash": hashlib.sha256(json.dumps(runconfig.model_identity(state["config"]), sort_keys=True,
                                                     default=str).encode()).hexdigest()[:16],
            "shape": list(state["shape"]), "parameters": int(sum(t.numel() for t in tensors.values())),
            "data_checksums": provenance.get("data_files", {}), "steps_done": int(state["step"]),
            "steps_recipe": int(cfg["training"]["steps"]), "precision": state.get("precision", "fp32"),
            "wall_seconds": ledger.seconds, "sessions": ledger.data.get("sessions", []),
            "commits": sorted({s.get("commit") for s in ledger.data.get("sessions", []) if s.get("commit")}),
            **heldout_record(model, state["config"]), "headline": headline or (manifest(name).get("headline") if
                                                                      (zoo_dir() / f"{name}.json").exists() else None),
            "curves": _curves_rows(directory), "sha256": sha256(path), "bytes": path.stat().st_size}
    total = sum(p.stat().st_size for p in zoo_dir().glob("*.safetensors"))
    if total > MAX_TOTAL_BYTES:
        log(f"warning: the zoo's weights take {total / 2**20:.1f} MB, over its {MAX_TOTAL_BYTES / 2**20:.0f} MB")
    rundir.write_json(zoo_dir() / f"{name}.json", info)
    budget_s = float(_entry(name).get("budget_hours", 3.0)) * 3600.0
    over = bool(state["finished"]) or ledger.seconds >= budget_s - 1.0
    for leftover in (zoo_dir() / "resume").glob(f"{name}.*"):
        if state["finished"] or (over and leftover.suffix != ".json"):
            leftover.unlink()
    if not over:
        log(f"zoo {name}: {ledger.seconds / 3600:.2f} of its {budget_s / 3600:.1f} h budget spent, so its resume point "
            f"stays in zoo/resume/ and `genood-zoo train {name}` goes on from it")
    log(f"zoo {name}: published {shown_path(path)} ({info['bytes'] / 2**20:.1f} MB, step "
        f"{info['steps_done']} of {info['steps_recipe']}, {info['heldout_bits_per_dim']:.4f} bits/dim)")
    return info


def set_headline(name: str, headline: Dict[str, Any]) -> None:
    """Record the headline AUROC the reproduction measured for published model ``name`` in its manifest (the
    weights and their sha256 are untouched)."""
    from genood import rundir
    info = manifest(name)
    if info.get("headline") == dict(headline):
        return  # a table refreshed without new numbers rewrites no manifest
    info["headline"] = dict(headline)
    rundir.write_json(zoo_dir() / f"{name}.json", info)


def _curves_rows(directory: Path) -> List[Dict[str, Any]]:
    from genood.models.ood_curves import CURVES_FILE
    path = Path(directory) / CURVES_FILE
    if not path.exists():
        return []
    import pandas as pd
    return json.loads(pd.read_parquet(path).to_json(orient="records"))


def verify(name: str, bits: bool = True, images: Optional[int] = None) -> Dict[str, Any]:
    """Check zoo model ``name``: its sha256, that it loads, and (``bits``) its bits/dim on the manifest's test
    images within 0.01 of the manifest. ``images``: check only the first that many (a multiple of the batch,
    ``VERIFY_BATCH``) against the manifest's per-batch means. Returns what was measured; a ZooError when a check
    fails."""
    model, _ = open_zoo_model(ZOO_PREFIX + name)
    info = manifest(name)
    out = {"name": name, "sha256": "ok", "loads": "ok"}
    if bits:
        total = int(info.get("heldout_images", VERIFY_IMAGES))
        n = total if images is None else int(images)
        if n != total:
            if not (0 < n < total and n % VERIFY_BATCH == 0):
                raise ZooError(f"--images must be a multiple of {VERIFY_BATCH} from {VERIFY_BATCH} to {total} for "
                               f"zoo model {name!r}, got {images}.")
            if not info.get("heldout_batches"):
                raise ZooError(f"The manifest of zoo model {name!r} has no per-batch bits/dim, so only all {total} "
                               f"images can be verified; run `genood-zoo verify {name}` without --images.")
            want = float(sum(info["heldout_batches"][:n // VERIFY_BATCH]) / (n // VERIFY_BATCH))
        else:
            want = float(info["heldout_bits_per_dim"])
        got = heldout_bits_per_dim(model, info["config"], n)
        out.update(bits_per_dim=got, manifest_bits_per_dim=want, images=n)
        if abs(got - want) > 0.01:
            raise ZooError(f"Zoo model {name!r} gives {got:.4f} bits/dim on its first {n} test images, not the "
                           f"manifest's {want:.4f}; its weights or the data changed: restore them with git.")
    return out
