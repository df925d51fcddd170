"""The package's contracts: installable, strict registries, no import cycles, short functions, safe
checkpoints, one writer per run directory, the seed workflow's `dysweep_create`."""
from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genood import rundir, runconfig
from genood.models import training
from genood.registry import DuplicateRegistration, Registry
from tests.conftest import ROOT

PACKAGE = ROOT / "genood"


def _modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known, lazy: bool = True) -> set:
    """Modules of ours that ``path`` imports: at module level, and with ``lazy`` also inside functions and classes
    (an import deferred into a function still ties the two modules together)."""
    deps = set()
    stack = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the module's package, one level up per extra dot
                pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}"
            deps.add(base)
            deps.update(f"{base}.{a.name}" for a in node.names)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return {d for d in deps if d in known and d != name and not name.startswith(d + ".") and d != "genood"}


def _cycles(graph: dict) -> list:
    """Every strongly connected component of more than one module (Tarjan): each holds a circle of some length."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_among_our_modules_of_any_length_lazy_imports_included():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycles(graph) == []


def test_a_circle_would_be_found_at_any_length_and_through_a_lazy_import(tmp_path):
    # the checker itself: a -> b -> c -> a, the last edge inside a function
    (tmp_path / "a.py").write_text("from genood import b\n")
    (tmp_path / "b.py").write_text("import genood.c\n")
    (tmp_path / "c.py").write_text("def f():\n    from genood import a\n")
    known = {"genood.a", "genood.b", "genood.c", "genood"}
    graph = {m: _imports(m, tmp_path / f"{m.split('.')[1]}.py", known) for m in sorted(known - {"genood"})}
    assert graph == {"genood.a": {"genood.b"}, "genood.b": {"genood.c"}, "genood.c": {"genood.a"}}
    assert _cycles(graph) == [["genood.a", "genood.b", "genood.c"]]
    assert _imports("genood.c", tmp_path / "c.py", known, lazy=False) == set()  # module level only: no edge
    assert _cycles({"genood.a": {"genood.b"}, "genood.b": set()}) == []


def _functions(paths):
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_no_function_outside_benchmarks_is_over_60_lines():
    paths = [p for p in ROOT.rglob("*.py")
             if not {".venv", "runs", "benchmarks", ".git", "data_root"} & set(p.relative_to(ROOT).parts)]
    long = sorted(f for f in _functions(paths) if f[0] > 60)
    assert long == []


def test_no_sys_path_edits_anywhere():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if not {".venv", "runs", ".git"} & set(p.relative_to(ROOT).parts)
                 and re.search(r"sys\.path\.(insert|append)", p.read_text()) and p.name != "test_package.py"]
    assert offenders == []


def test_duplicate_registration_names_both_modules():
    reg = Registry("widget")
    reg.add("w", 1, "pkg.first")
    reg.add("w", 1, "pkg.first")  # the same module again (a reload) is not a duplicate
    with pytest.raises(DuplicateRegistration, match=r"widget 'w' is registered twice: in pkg\.first and in pkg\.second"):
        reg.add("w", 2, "pkg.second")


def test_a_second_score_under_a_taken_name_is_refused_naming_both():
    from genood.ood import scores

    assert "log_likelihood" in scores.REGISTRY  # the first lookup discovers the score modules
    with pytest.raises(DuplicateRegistration) as err:
        @scores.register("log_likelihood", higher_is_in=True, unit="nats", description="a clash")
        def clash(model, x, cache):
            return x
    msg = str(err.value)
    assert "in genood.ood.scores.likelihood and in " in msg and "test_package" in msg
    assert scores.REGISTRY.where("log_likelihood") == "genood.ood.scores.likelihood"


def test_registries_discover_their_modules_and_check_capabilities():
    from genood.models.base import CAPABILITIES
    from genood.ood import detectors, lid_stage, scores

    assert {"combined", "best_component", "baselines", "single", "dual_threshold"} <= set(detectors.DETECTORS)
    assert {"jacobian", "flipd", "normal_bundle"} <= set(lid_stage.ESTIMATORS)
    for s in scores.REGISTRY.values():
        assert all(n in CAPABILITIES or n == "log_prob" for alt in s.needs for n in alt), s.name
    with pytest.raises(ValueError, match="not model capabilities"):
        scores.register("needs_a_typo", higher_is_in=True, unit="-", description="-", needs=("genrator",))(lambda *a: None)
    assert "needs_a_typo" not in scores.REGISTRY


def test_a_family_class_is_checked_against_the_protocol():
    from genood.models.base import check_family

    class Half:
        def log_prob(self, x):
            return x
    with pytest.raises(TypeError, match=r"lacks bits_per_dim, sample, training_loss of the model protocol"):
        check_family(Half, "half", "models/half.yaml")


def _trained_checkpoint(tiny_cfg, tmp_path) -> Path:
    import numpy as np
    images = np.random.default_rng(0).integers(0, 256, size=(24, 4, 4, 1), dtype=np.uint8)
    training.fit(tiny_cfg, tmp_path / "ok", images, log=lambda m: None)
    return tmp_path / "ok" / training.CHECKPOINT


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "step": 1, "finished": True, "shape": [1, 4, 4], "config": {}, "x": _Payload(marker)}, bad)
    with pytest.raises(training.CheckpointError) as err:
        training.load_checkpoint(bad)
    assert "objects other than tensors and plain data" in str(err.value) and str(bad) in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_main_ood_refuses_a_code_running_checkpoint_in_one_sentence(tmp_path):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"x": _Payload(marker)}, bad)
    out = subprocess.run([sys.executable, "main_ood.py", f"ood.checkpoint={bad}", f"run.runs_root={tmp_path}",
                          "tracking.wandb=false"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and not marker.exists()
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: Checkpoint") and "Traceback" not in out.stderr


def test_a_checkpoint_missing_keys_or_with_other_weights_is_one_sentence(tiny_cfg, tmp_path):
    good = _trained_checkpoint(tiny_cfg, tmp_path)
    state = torch.load(good, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if k != "config"}, partial)
    with pytest.raises(training.CheckpointError, match=r"lacks 'config', so it is not a checkpoint"):
        training.load_checkpoint(partial)
    other = tmp_path / "other.pt"
    torch.save(dict(state, model={k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}), other)
    with pytest.raises(training.CheckpointError, match=r"weights do not fit the model") as err:
        training.load_trained(other)
    assert "\n" not in str(err.value)
    model, loaded = training.load_trained(good)  # and an intact one still loads with weights_only
    assert loaded["finished"] is True


_HOLDER = """
import sys, time
from genood import rundir
rundir.allow_writes(sys.argv[1])  # the folder this holder was given stands for a run directory
with rundir.run_lock(sys.argv[1], lease=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(directory: Path, lease: float = 120.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), str(lease)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path):
    rundir.allow_writes(tmp_path)  # a run directory the caller chose
    holder = _hold(tmp_path)
    try:
        with pytest.raises(rundir.RunLocked) as err:
            rundir.run_lock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(err.value) and str(tmp_path) in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the owner died without releasing: its record is still in the file, its flock is gone
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    with rundir.run_lock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with rundir.run_lock(tmp_path):  # re-entrant inside one process
            pass
        assert lock.depth == 1
    assert (tmp_path / "run.lock").read_text() == ""


def test_another_hosts_fresh_lease_refuses_and_an_expired_one_is_taken_over(tmp_path):
    rundir.allow_writes(tmp_path)  # a run directory the caller chose
    record = {"host": "elsewhere-node-7", "pid": 4242, "since": time.time(), "lease_until": time.time() + 60}
    (tmp_path / "run.lock").write_text(json.dumps(record))
    with pytest.raises(rundir.RunLocked, match="pid 4242 on elsewhere-node-7"):
        rundir.run_lock(tmp_path).acquire()
    (tmp_path / "run.lock").write_text(json.dumps(dict(record, lease_until=time.time() - 1)))
    with rundir.run_lock(tmp_path, lease=0.4) as lock:
        first = json.loads(lock.path.read_text())["lease_until"]
        time.sleep(0.5)
        assert json.loads(lock.path.read_text())["lease_until"] > first  # the heartbeat renews the lease


def test_two_main_ood_processes_on_one_run_directory(tmp_path):
    cfg = runconfig.resolve({"run": {"runs_root": str(tmp_path)}, "ood": {"scores": ["log_likelihood"]}})
    directory = rundir.run_dir(cfg, runconfig.run_name(cfg, "ood"))
    holder = _hold(directory)
    try:
        out = subprocess.run([sys.executable, "main_ood.py", f"run.runs_root={tmp_path}", "ood.scores=[log_likelihood]",
                              "tracking.wandb=false"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: Run directory {directory} is being written by pid")


def test_a_null_sweep_id_means_single():
    cfg = runconfig.resolve({"run": {"sweep_id": None}})
    assert cfg["run"]["sweep_id"] == "single"


def test_pyproject_pins_equal_requirements():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = set(deps["dependencies"]) | set(deps["optional-dependencies"]["test"])
    reqs = {ln.split("#")[0].split("\t")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()}
    assert pinned == {r for r in reqs if r}


def test_pip_install_into_a_fresh_venv_gives_an_importable_package(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # the dependencies are requirements.txt's business (tested above); here: the package, its data, its commands
    # (pip builds it in an isolated environment with setuptools from the package registry). From a copy of the
    # tracked files, so the build leaves nothing in the checkout.
    import shutil
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_file():
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], check=True, timeout=600,
                   capture_output=True)
    probe = ("import pathlib, genood; p = pathlib.Path(genood.__file__).parent; "
             "print(p); print((p / 'presets' / 'flow_rq_nsf_tiny.yaml').is_file(), (p / 'models' / 'flows.yaml').is_file(),"
             " (p / 'ood' / 'scores' / 'lid.yaml').is_file())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv itself holds
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    where, flags = out.stdout.splitlines()
    assert Path(where).is_relative_to(venv) and flags == "True True True"
    for command in ("genood-train", "genood-ood", "genood-sweep", "dysweep_create", "genood-data"):
        assert (venv / "bin" / command).is_file()


def test_dysweep_create_creates_a_sweep(tmp_path):
    command = Path(sys.executable).parent / "dysweep_create"
    env = dict(os.environ, OOD_RUNS_ROOT=str(tmp_path))
    out = subprocess.run([str(command), "--config", "meta_configurations/ood/demo_tiny.yaml", "--backend", "local"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    sweep_id = out.stdout.strip().splitlines()[-1]
    assert sweep_id.startswith("local-")
    status = subprocess.run([sys.executable, "sweep.py", "status", sweep_id], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=300)
    assert status.returncode == 0 and "2 queued" in status.stdout, status.stdout + status.stderr


def test_dataset_pickles_build_arrays_only(tmp_path):
    import pickle

    import numpy as np

    from genood.data import formats

    good = tmp_path / "data_batch_1"
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    good.write_bytes(pickle.dumps({b"data": images, b"labels": [3, 7]}, protocol=2))
    x, y = formats.read_cifar_batches([good], b"labels")
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [3, 7]
    assert np.array_equal(x[0].transpose(2, 0, 1).reshape(-1), images[0])
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "data_batch_2"
    bad.write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [1]}))
    with pytest.raises(formats.FormatError, match="is not a pickle of arrays and plain data") as err:
        formats.read_cifar_batches([bad], b"labels")
    assert "posix.system" in str(err.value) and not marker.exists()
