"""Sweeps under real faults: the PostgreSQL server stopped and restarted mid-sweep, a SQLite file held locked,
agents SIGKILLed in a storm, a full file system, truncated run files, a scheduler with no controller.
Every fault is what a real one does (the server process stopped, SIGKILL, a full tmpfs, a truncated file);
nothing of the store or the file system is mocked."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml

from genood.orchestration.jobs import _state_digest, sleep_state
from genood.orchestration.storm import check_sweep, kill_storm, writers_overlap
from genood.orchestration.store import STORE_ENV, open_store, store_locator
from tests.conftest import ROOT, TINY_MODEL


def sweep_cli(root, *args, env=None, check=True, timeout=600):
    out = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return out


def create(root, meta, tmp_path, env=None):
    path = tmp_path / f"meta-{len(list(tmp_path.glob('meta-*')))}.yaml"
    path.write_text(yaml.safe_dump(meta))
    return sweep_cli(root, "create", "--config", str(path), "--backend", "local", env=env).stdout.strip().splitlines()[-1]


def agent(root, sweep_id, *extra, env=None):
    env = dict(env or os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--runs-root", str(root), "agent", sweep_id, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_meta(n_runs, steps, seconds):
    """A grid of the checkpointed sleep job: ``steps`` atomic state saves over ``seconds`` per run."""
    return {"job": "sleep", "method": "grid", "base_config": {"sleep": seconds, "steps": steps},
            "sweep_configuration": {"seed": {"sweep": True, "values": list(range(n_runs))}}}


def rows(root, sweep_id, locator=None):
    store = open_store(locator or store_locator(root), runs_root=root)
    try:
        return store.runs(sweep_id)
    finally:
        store.close()


def wait_running(root, sweep_id, n=1, locator=None, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(r["status"] == "running" for r in rows(root, sweep_id, locator)) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("no run started")


def assert_clean(root, sweep_id, env_locator=None):
    """Every run finished exactly once, no two writers in one run directory, final states bit-equal to an
    uninterrupted computation."""
    if env_locator:
        os.environ[STORE_ENV] = env_locator
    try:
        report = check_sweep(root, sweep_id)
    finally:
        if env_locator:
            del os.environ[STORE_ENV]
    assert report["lost"] == [] and report["overlapping_writers"] == [] and report["differing"] == [], report
    return report


def test_the_checks_themselves_catch_interleaved_writers_and_wrong_states():
    assert not writers_overlap(["1 t0", "1 step 1", "2 t1", "2 step 2", "2 step 3"])  # 1 killed, 2 resumed
    assert writers_overlap(["1 t0", "1 step 1", "2 t1", "1 step 2", "2 step 2"])      # 1 still writing
    a, b = sleep_state(0, 5), sleep_state(1, 5)
    assert _state_digest(a) != _state_digest(b) and _state_digest(a) == _state_digest(sleep_state(0, 5))
    manual = np.zeros(64)
    for k in range(5):
        manual = 0.5 * manual + np.random.default_rng([0, k]).standard_normal(64)
    assert np.array_equal(manual, a)


# ---- 1. store outages ---------------------------------------------------------------------------------------
def test_a_postgresql_restart_mid_sweep_is_waited_out_and_nothing_runs_twice(tmp_path, own_postgres):
    root = tmp_path / "runs"
    env = dict(os.environ, **{STORE_ENV: own_postgres.new_database()})
    sid = create(root, steps_meta(4, steps=16, seconds=6.0), tmp_path, env=env)
    procs = [agent(root, sid, "--lease", "2", env=env) for _ in range(2)]
    wait_running(root, sid, 2, locator=env[STORE_ENV])
    own_postgres.halt()
    time.sleep(6)  # longer than the lease: the runs' leases expire while their agents keep working
    own_postgres.resume()
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        errs.append(err)
    said = "\n".join(errs)
    assert "unavailable while" in said and "is back after" in said
    report = assert_clean(root, sid, env[STORE_ENV])
    assert report["resumed_runs"] == 0  # the writers kept their runs: nothing restarted


def test_a_locked_sqlite_file_is_waited_out(tmp_path):
    root = tmp_path / "runs"
    sid = create(root, steps_meta(4, steps=10, seconds=8.0), tmp_path)  # long enough to outlast a slow holder start
    procs = [agent(root, sid, "--store-outage-limit", "16", "--lease", "4") for _ in range(2)]  # a heartbeat every 1 s
    wait_running(root, sid, 1)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(9); db.execute('COMMIT')",
                               str(root / "sweeps.sqlite")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    said = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        said.append(err)
    holder.wait(timeout=30)
    said = "\n".join(said)
    assert "unavailable while" in said and "(database is locked); retrying in" in said
    assert_clean(root, sid)


def test_a_run_whose_lease_expired_while_its_writer_lives_is_left_to_the_writer(tmp_path, monkeypatch):
    """After an outage longer than the lease, another agent may claim a run whose first agent is still working
    on it: the newcomer finds the run directory locked and leaves it alone; the writer's heartbeat takes the
    row back and its finish counts. The writer here is this test process holding the lock."""
    from genood import rundir
    monkeypatch.delenv(STORE_ENV, raising=False)
    root = tmp_path / "runs"
    sid = create(root, steps_meta(2, steps=2, seconds=0.2), tmp_path)
    store = open_store(store_locator(root), runs_root=root)
    try:
        held = store.claim(sid, "writer-A", lease_seconds=0.5)  # A's lease will lapse while it "works"
        directory = root / sid / held.name
        with rundir.run_lock(directory):
            time.sleep(0.6)
            newcomer = agent(root, sid, "--lease", "1.5")
            deadline = time.time() + 60
            while time.time() < deadline:
                by_name = {r["name"]: r for r in store.runs(sid)}
                if by_name[held.name]["agent"] not in (None, "writer-A") and any(
                        r["status"] == "finished" for r in by_name.values()):
                    break
                time.sleep(0.1)
            row = {r["name"]: r for r in store.runs(sid)}[held.name]
            assert row["status"] == "running" and row["claims"] == 2 and row["agent"] != "writer-A"
            assert not (directory / "executions.log").exists()  # the newcomer never ran it
            assert store.heartbeat(sid, held.name, "writer-A", 30.0)  # the writer takes the row back
            assert {r["name"]: r for r in store.runs(sid)}[held.name]["agent"] == "writer-A"
            store.finish(sid, held.name, "writer-A", str(directory), None)
        _, err = newcomer.communicate(timeout=120)
        assert newcomer.returncode == 0, err
        assert f"left {held.name} to the process still writing it" in err
        assert [r["status"] for r in store.runs(sid)] == ["finished", "finished"]
        assert not (directory / "executions.log").exists()
    finally:
        store.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_outage_longer_than_the_limit_ends_the_agent_in_one_sentence_and_the_run_resumes(tmp_path, store, request):
    root = tmp_path / "runs"
    env = dict(os.environ)
    env.pop(STORE_ENV, None)
    if store == "postgresql":
        server = request.getfixturevalue("own_postgres")
        env[STORE_ENV] = server.new_database()
    sid = create(root, steps_meta(1, steps=8, seconds=10.0), tmp_path, env=env)  # still running when the store goes
    p = agent(root, sid, "--lease", "2", "--store-outage-limit", "2", env=env)
    wait_running(root, sid, 1, locator=env.get(STORE_ENV))
    if store == "postgresql":
        server.halt()
    else:
        holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                                   "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                                   "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(600)",
                                   str(root / "sweeps.sqlite")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("agent: ")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: The sweep store") and "--store-outage-limit" in lines[0]
    # it names what the agent was doing when the store went: one of the calls an agent makes around a run
    assert any(doing in lines[0] for doing in ("recording", "renewing", "claiming", "checking that this agent still holds"))
    if store == "postgresql":
        server.resume()
    else:
        holder.kill()
        holder.wait()
    time.sleep(2.5)  # the dead agent's lease expires
    second = agent(root, sid, "--lease", "2", env=env)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert_clean(root, sid, env.get(STORE_ENV))


# ---- 2. kill storm --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_kill_storm_loses_and_duplicates_nothing(tmp_path, store, request, monkeypatch):
    if store == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_server").new_database())
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    root = tmp_path / "runs"
    sid = create(root, steps_meta(12, steps=12, seconds=1.5), tmp_path)
    injected = kill_storm(root, sid, agents=3, every=1.5, duration=60, lease=1.5, seed=1, say=lambda s: None)
    assert injected["kills"] >= 3 and all(code == 0 for code in injected["exit_codes"]), injected
    report = assert_clean(root, sid)
    assert report["runs"] == 12 and report["resumed_runs"] >= 1, report


def test_a_training_run_killed_twice_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """The storm's promise for real training: SIGKILL at two checkpoints, resumed by fresh agents, the final
    weights equal (bitwise, one thread each) those of the same run done without interruption."""
    import torch
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    meta = {"job": "train", "method": "grid", "base_config": {
        "model": dict(TINY_MODEL), "tracking": {"wandb": False}, "data": {"in_distribution": f"npz:{tmp_path / 'a.npz'}"},
        "training": {"steps": 80, "batch_size": 8, "checkpoint_every": 5, "progress": False, "sample_grid": 0}},
        "sweep_configuration": {"run": {"seed": {"sweep": True, "values": [3]}}}}
    weights = {}
    for label, kills in (("plain", 0), ("killed", 2)):
        root = tmp_path / label
        sid = create(root, meta, tmp_path)
        (name,) = [r["name"] for r in rows(root, sid)]
        ckpt = root / sid / name / "checkpoint.pt"
        seen = 0
        for _ in range(kills):
            p = agent(root, sid, "--lease", "1")
            deadline = time.time() + 120
            while time.time() < deadline:
                step = torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else 0
                if step > seen:
                    break
                time.sleep(0.02)
            p.send_signal(signal.SIGKILL)
            p.wait()
            seen = torch.load(ckpt, weights_only=True)["step"]
            assert seen < 80
            time.sleep(1.2)
        p = agent(root, sid, "--lease", "1")
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        (row,) = rows(root, sid)
        assert row["status"] == "finished" and row["claims"] == kills + 1
        weights[label] = torch.load(ckpt, weights_only=True)["model"]
        if kills:
            assert (root / sid / name / "run.log").read_text().count("resuming from step") == kills
    assert weights["plain"].keys() == weights["killed"].keys()
    for k in weights["plain"]:
        assert torch.equal(weights["plain"][k], weights["killed"][k]), k


# ---- 3. full disk ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs mounted for this test (tests run as root, as in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    assert out.returncode == 0, f"mounting a tmpfs needs root: {out.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_hands_the_run_back_with_one_sentence_and_an_agent_with_space_finishes_it(tmp_path, small_fs, monkeypatch):
    monkeypatch.delenv(STORE_ENV, raising=False)
    root = small_fs / "runs"
    store = str(tmp_path / "store.sqlite")  # the store lives elsewhere; the runs root fills up
    sid = create(root, steps_meta(1, steps=40, seconds=8.0), tmp_path, env=dict(os.environ, **{STORE_ENV: store}))
    env = dict(os.environ, **{STORE_ENV: store})
    p = agent(root, sid, env=env)
    (name,) = [r["name"] for r in rows(root, sid, store)]
    state = root / sid / name / "state.npz"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    filler = _fill(small_fs)
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("agent: ")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: No space left on device writing ") and name in lines[0]
    assert "went back to the queue" in lines[0]
    (row,) = rows(root, sid, store)
    assert row["status"] == "queued" and row["failures"] == 0
    with np.load(state, allow_pickle=False) as f:  # the last good state is whole
        step = int(f["step"])
        kept = f["state"].copy()
    assert 0 < step < 40 and np.array_equal(kept, sleep_state(0, step))
    assert not [p for p in (root / sid / name).iterdir() if p.name.endswith(".tmp")]  # no partial temporaries left
    filler.unlink()
    second = agent(root, sid, env=env)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    (row,) = rows(root, sid, store)
    assert row["status"] == "finished"
    metrics = json.loads((root / sid / name / "metrics.json").read_text())
    assert metrics["state"]["sha256"] == _state_digest(sleep_state(0, 40))


def test_a_full_disk_under_the_sqlite_store_is_one_sentence(tmp_path, small_fs, monkeypatch):
    monkeypatch.delenv(STORE_ENV, raising=False)
    root = tmp_path / "runs"
    store = small_fs / "store.sqlite"
    env = dict(os.environ, **{STORE_ENV: str(store)})
    sid = create(root, steps_meta(400, steps=1, seconds=0.0), tmp_path, env=env)
    _fill(small_fs)
    p = agent(root, sid, env=env)
    _, err = p.communicate(timeout=300)
    lines = [line for line in err.splitlines() if not line.startswith("agent: ")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: No space left on device writing {store}") and "(the sweep store)" in lines[0]


# ---- 4. corrupt or partial artifacts ---------------------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def finished_ood_sweep(tmp_path_factory):
    """Two finished tiny OOD runs (checkpoint, scores.parquet, metrics.json, LID spectra)."""
    tmp = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp / f"{name}.npz", images=rng.integers(0, 256, size=(48, 8, 8), dtype=np.uint8))
    meta = {"job": "ood", "method": "grid", "base_config": {
        "model": dict(TINY_MODEL), "tracking": {"wandb": False}, "data": {"ood": f"npz:{tmp / 'b.npz'}"},
        "training": {"steps": 20, "batch_size": 8, "checkpoint_every": 10, "progress": False, "sample_grid": 0},
        "ood": {"scores": ["log_likelihood", "lid"], "n_generated": 8, "png": False, "figures": False, "bootstrap": 20},
        "lid": {"n_per_split": 4}},
        "sweep_configuration": {"run": {"seed": {"sweep": True, "values": [0, 1]}},
                                "data": {"in_distribution": f"npz:{tmp / 'a.npz'}"}}}
    root = tmp / "runs"
    env = {k: v for k, v in os.environ.items() if k != STORE_ENV}
    sid = create(root, meta, tmp, env=env)
    p = agent(root, sid, env=env)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return root, sid, env


@pytest.mark.parametrize("victim", ["scores.parquet", "metrics.json", "checkpoint.pt", "lid_spectra"])
def test_a_damaged_file_makes_aggregate_and_report_skip_the_run_with_one_sentence(finished_ood_sweep, victim, capsys,
                                                                                  monkeypatch):
    import shutil

    from genood.commands.sweep import main as sweep_main
    root, sid, env = finished_ood_sweep
    monkeypatch.delenv(STORE_ENV, raising=False)
    runs = rows(root, sid, str(root / "sweeps.sqlite"))
    target_dir = Path(runs[0]["run_dir"])
    files = sorted((target_dir / "lid_spectra").glob("*.npz")) if victim == "lid_spectra" else [target_dir / victim]
    assert files and files[0].exists()
    backup = files[0].read_bytes()
    _truncate(files[0])
    try:
        for command in ("aggregate", "report") if victim == "scores.parquet" else ("aggregate",):
            assert sweep_main(["--runs-root", str(root), command, sid]) == 0  # in process: no interpreter start-up
            said = capsys.readouterr().err
            skipped = [line for line in said.splitlines() if line.startswith("Skipped run")]
            assert skipped == [f"Skipped run {target_dir.name}: {files[0]} is damaged ({skipped[0].split('(', 1)[1]}"]
            assert f"`python sweep.py rerun {sid} {target_dir.name}`" in skipped[0]
        table = __import__("pandas").read_csv(root / sid / "aggregate.csv")
        assert set(table["run"]) == {Path(runs[1]["run_dir"]).name}
    finally:
        files[0].write_bytes(backup)
        shutil.rmtree(root / sid / "report.html", ignore_errors=True)


def test_a_rerun_of_a_damaged_run_recomputes_it_and_never_reads_the_partial_files(finished_ood_sweep):
    root, sid, env = finished_ood_sweep
    runs = rows(root, sid, str(root / "sweeps.sqlite"))
    run_dir = Path(runs[0]["run_dir"])
    before = json.loads((run_dir / "metrics.json").read_text())
    for path in [run_dir / "checkpoint.pt", run_dir / "scores.parquet", *sorted((run_dir / "lid_spectra").glob("*.npz"))]:
        _truncate(path)
    assert "re-queued 1 run(s)" in sweep_cli(root, "rerun", sid, run_dir.name, env=env).stdout
    p = agent(root, sid, env=env)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    log = (run_dir / "run.log").read_text()
    assert "is damaged" in log and "training from step 0" in log
    assert list(run_dir.glob("checkpoint.pt.damaged-*"))
    assert "unreadable" in log  # the truncated LID caches were recomputed, not resumed
    from genood.integrity import damaged_files
    assert [p for p, _ in damaged_files(run_dir) if "damaged-" not in p.name] == []
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["log_likelihood"]["auroc"] == pytest.approx(before["log_likelihood"]["auroc"], abs=1e-12)


# ---- 5. submission failures ------------------------------------------------------------------------------------
def test_a_slurm_client_without_a_controller_is_one_sentence_and_the_sweep_is_unchanged(tmp_path):
    root = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in (STORE_ENV, "SLURM_CONF")}  # a client with no configuration
    conf = tmp_path / "slurm.conf"  # a controller that is not running: nothing listens on its port
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=localhost Default=YES\n")
    sid = create(root, steps_meta(2, steps=2, seconds=0.1), tmp_path, env=env)
    before = rows(root, sid)
    for extra in ({}, {"SLURM_CONF": str(conf)}):
        out = sweep_cli(root, "launch", sid, "--slurm", "--agents", "2", env=dict(env, **extra), check=False, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert lines[0].startswith(f"error: Slurm refused the 2 agent task(s) of {sid} (sbatch: ")
        assert "the sweep is unchanged" in lines[0]
    assert rows(root, sid) == before


def test_integrity_flags_each_kind_of_cut_short_file_and_nothing_whole(tmp_path):
    """Against the files as their writers make them: whole files pass, each one cut short is named."""
    import pandas as pd
    import torch

    from genood.integrity import damaged_files, file_problem
    run = tmp_path / "run"
    (run / "lid_spectra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"x": {"auroc": 0.5}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"a": [1, 2, 3]}))
    pd.DataFrame({"v": np.arange(1000.0)}).to_parquet(run / "scores.parquet")
    torch.save({"model": {"w": torch.randn(64, 64)}, "step": 3}, run / "checkpoint.pt")
    np.savez(run / "lid_spectra" / "in_test.npz", spectra=np.random.default_rng(0).random((16, 64)))
    (run / ".scores.parquet.abc.tmp").write_bytes(b"partial")  # an atomic write in progress: not a run file
    assert damaged_files(run) == []
    for name in ("metrics.json", "scores.parquet", "checkpoint.pt", "lid_spectra/in_test.npz"):
        path = run / name
        whole = path.read_bytes()
        for keep in (0.0, 0.3, 0.9):
            path.write_bytes(whole[: int(len(whole) * keep)])
            assert file_problem(path) is not None, (name, keep)
            assert [p for p, _ in damaged_files(run)] == [path]
        path.write_bytes(whole)
        assert file_problem(path) is None
    (run / "config.yaml").write_text("a: [1, 2")  # yaml cut short
    assert [p.name for p, _ in damaged_files(run)] == ["config.yaml"]


def _session_members(sid: int) -> List[int]:
    """Pids of live (not zombie) processes of session ``sid``."""
    from genood.ood.png_export import live_processes
    return [pid for pid, fields in live_processes() if int(fields[3]) == sid]  # fields: state, ppid, pgrp, session


def test_a_chromium_that_does_not_answer_in_time_costs_a_warning_and_leaves_no_process(tmp_path, monkeypatch):
    """PNG export runs in a child session with a deadline: in time, the PNGs are real images of the asked size;
    past it (here a deadline no Chromium can meet), the child and its browser are killed, the run keeps its HTML
    figures and gets one warning, and no export process is left behind."""
    import struct

    import plotly.graph_objects as go

    from genood import rundir
    from genood.ood import figures, png_export

    rundir.allow_writes(tmp_path)  # this test's folders stand for a run's figures/ folder
    figs = {"a": go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2])).update_layout(width=420, height=300),
            "b": go.Figure(go.Bar(x=["x", "y"], y=[1, 2]))}
    warnings: List[str] = []
    written = figures.write_figures(figs, tmp_path / "ok", png=True, warn=warnings.append)
    assert not warnings and {p.name for p in written} == {"a.html", "b.html", "a.png", "b.png"}
    for name, size in (("a", (420, 300)), ("b", (900, 520))):
        head = (tmp_path / "ok" / f"{name}.png").read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == size

    monkeypatch.setattr(png_export, "BASE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(png_export, "PER_FIGURE_TIMEOUT_S", 0.0)
    written = figures.write_figures(figs, tmp_path / "late", png=True, warn=warnings.append)
    assert {p.name for p in written} == {"a.html", "b.html"} and len(warnings) == 1
    assert "PngTimeout" in warnings[0] and "within 0 s" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "late").iterdir() if p.suffix == ".png") == []
    assert png_export.last_child and not _session_members(png_export.last_child)  # nothing of it lives on


def test_a_deadline_while_chromium_renders_leaves_none_of_the_exports_descendants_alive(tmp_path):
    """A deadline that comes while Chromium renders (400,000 points take it about 45 s): the browser was among the
    child's descendants (its launcher gives it a session of its own), and after the deadline none of them is left."""
    import threading

    import plotly.graph_objects as go

    from genood import rundir
    from genood.ood import png_export

    rundir.allow_writes(tmp_path)
    (tmp_path / "late").mkdir()
    x = np.random.default_rng(0).normal(size=400_000)
    big = go.Figure(go.Scatter(x=x, y=x[::-1], mode="markers"))
    seen, box = {}, {}

    def render():
        try:
            png_export.export([big], [tmp_path / "late" / ".big.png"], [(600, 400)], timeout=15.0, attempts=1)
        except Exception as exc:  # the outcome is checked below
            box["exc"] = exc
    png_export.last_child = None
    worker = threading.Thread(target=render)
    worker.start()
    while worker.is_alive():
        root = png_export.last_child
        for pid in (png_export.process_tree(root) if root else []):
            try:
                seen[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes()
            except OSError:
                pass
        time.sleep(0.2)
    assert isinstance(box.get("exc"), png_export.PngTimeout)
    assert any(b"chrom" in cmd for cmd in seen.values()), seen
    live = {pid for pid, _ in png_export.live_processes()}
    alive = []
    for pid, cmd in seen.items():
        try:
            if pid in live and (Path("/proc") / str(pid) / "cmdline").read_bytes() == cmd:  # not a reused pid
                alive.append(pid)
        except OSError:
            pass
    assert not alive  # (write_figures removes what a killed export may have left at its temporary names)
