"""The model zoo: reference training across sessions through zoo/resume/, publishing safetensors with a manifest,
loading by ``zoo:<name>`` (sha256 checked, nothing unpickled), and the shipped models themselves."""
import json
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from genood import rundir, runconfig
from genood.models import zoo
from tests.conftest import ROOT, TINY_MODEL


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo folder of its own with one reference entry: the tiny flow on an 8x8 npz dataset (300 test images:
    three verification batches), 8 steps."""
    images = np.random.default_rng(3).integers(0, 256, size=(1500, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images)
    np.savez(tmp_path / "other.npz", images=(255 - images[:40]).astype(np.uint8))
    entry = {"seed": "test", "budget_hours": 1.0, "config": {
        "model": dict(TINY_MODEL), "run": {"runs_root": str(tmp_path / "runs")},
        "data": {"in_distribution": f"npz:{tmp_path / 'set.npz'}", "ood": f"npz:{tmp_path / 'other.npz'}"},
        "training": {"steps": 8, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 2, "progress": False,
                     "sample_grid": 0, "ood_curve_every": 4, "ood_curve_points": 16}}}

    def make(name):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "reference.yaml").write_text(yaml.safe_dump({"models": {"tiny": entry}}))
        monkeypatch.setattr(zoo, "zoo_dir", lambda: folder)
        rundir.allow_writes(folder)  # a zoo folder of the test's own, as the project's zoo/ is by default
        return folder
    return make


def test_training_stopped_by_its_budget_resumes_on_a_new_machine_and_publishes_the_same_weights(tiny_zoo, tmp_path):
    """Session 1 stops at its minutes with a resume point in zoo/resume/; the runs folder is then lost (a new
    machine: only the committed zoo/ remains); session 2 resumes from zoo/resume/ and finishes. The published
    weights equal those of one uninterrupted training, and the resume point leaves."""
    whole = tiny_zoo("whole")
    zoo.train_reference("tiny", log=lambda m: None)
    want = zoo.publish("tiny", log=lambda m: None)
    shutil.rmtree(tmp_path / "runs")

    cut = tiny_zoo("cut")
    logs = []
    directory, over = zoo.train_reference("tiny", minutes=1e-9, log=logs.append)
    assert not over and any("budget reached at step 1" in m for m in logs)
    assert (cut / "resume" / "tiny.pt").exists()
    ledger = json.loads((cut / "resume" / "tiny.json").read_text())
    assert ledger["sessions"][0]["to_step"] == 1 and ledger["seconds"] > 0
    # each session says the precision it trained in (training.precision resolved on its machine, as training does)
    import torch

    from genood import runconfig
    from genood.precision import dtype_name, resolve
    cfg = zoo.reference_config("tiny")
    family_auto = runconfig.family_spec(cfg["model"]["family"]).auto_precision
    assert ledger["sessions"][0]["precision"] == dtype_name(resolve(str(cfg["training"]["precision"]),
                                                                   torch.device("cpu"), family_auto))
    shutil.rmtree(tmp_path / "runs")  # the new machine has the committed zoo/ only

    logs = []
    _, over = zoo.train_reference("tiny", log=logs.append)
    assert over and any("resuming from the committed resume point (step 1)" in m for m in logs)
    got = zoo.publish("tiny", log=lambda m: None)
    assert got["sha256"] == want["sha256"] and got["steps_done"] == got["steps_recipe"] == 8
    assert not list((cut / "resume").glob("tiny.*"))  # a finished training leaves no resume point
    assert len(got["sessions"]) == 2 and got["wall_seconds"] >= ledger["seconds"]
    assert [r["step"] for r in got["curves"] if r["auroc"] is not None] == [4, 8]
    for key in ("family", "preset", "config", "config_hash", "data_checksums", "steps_done", "steps_recipe",
                "wall_seconds", "sessions", "commits", "heldout_bits_per_dim", "headline", "sha256", "parameters"):
        assert key in got, key
    assert (whole / "tiny.safetensors").read_bytes() == (cut / "tiny.safetensors").read_bytes()


def test_zoo_model_loads_verifies_and_scores_like_its_run(tiny_zoo, tmp_path):
    """ood.checkpoint: zoo:<name> scores exactly as the training run's own checkpoint does."""
    import pandas as pd

    folder = tiny_zoo("z")
    directory, _ = zoo.train_reference("tiny", log=lambda m: None)
    zoo.publish("tiny", log=lambda m: None)
    info = zoo.manifest("tiny")
    assert zoo.verify("tiny")["bits_per_dim"] == pytest.approx(info["heldout_bits_per_dim"], abs=1e-6)
    # the per-batch means: their mean is the manifest's number, and a prefix of batches verifies on its own
    assert info["heldout_images"] == 300 and len(info["heldout_batches"]) == 300 // zoo.VERIFY_BATCH
    assert sum(info["heldout_batches"]) / len(info["heldout_batches"]) == pytest.approx(info["heldout_bits_per_dim"],
                                                                                      abs=1e-5)
    quick = zoo.verify("tiny", images=200)
    assert quick["images"] == 200 and quick["manifest_bits_per_dim"] == pytest.approx(
        sum(info["heldout_batches"][:2]) / 2, abs=1e-12)
    assert quick["bits_per_dim"] == pytest.approx(quick["manifest_bits_per_dim"], abs=1e-5)
    for bad in (0, 150, info["heldout_images"] + 100):
        with pytest.raises(zoo.ZooError, match="must be a multiple of 100"):
            zoo.verify("tiny", images=bad)
    del info["heldout_batches"]
    rundir.write_json(folder / "tiny.json", info)
    with pytest.raises(zoo.ZooError, match="has no per-batch bits/dim"):
        zoo.verify("tiny", images=100)
    assert zoo.verify("tiny")["images"] == 300  # all its images still verify
    from genood.ood.runner import run_ood
    common = runconfig.copy_tree(zoo.reference_entries()["tiny"]["config"])
    common["ood"] = {"n_in_train": 16, "n_in_val": 16, "n_in_test": 16, "n_ood": 16, "n_generated": 0, "bootstrap": 0,
                     "figures": False, "png": False, "baselines": []}
    common["tracking"] = {"wandb": False}
    frames = []
    for ckpt, sweep in ((str(directory), "by_path"), ("zoo:tiny", "by_zoo")):
        cfg = runconfig.resolve(common, [f"ood.checkpoint={ckpt}", f"run.sweep_id={sweep}"])
        out = run_ood(cfg, echo=False)
        frames.append(pd.read_parquet(out / "scores.parquet").sort_values(["split", "index"]).reset_index(drop=True))
    assert frames[0]["log_likelihood"].tolist() == frames[1]["log_likelihood"].tolist()
    assert (folder / "tiny.safetensors").stat().st_size < zoo.MAX_FILE_BYTES


def test_corrupted_or_unknown_zoo_model_is_one_sentence_and_runs_nothing(tiny_zoo, tmp_path):
    folder = tiny_zoo("z")
    zoo.train_reference("tiny", log=lambda m: None)
    zoo.publish("tiny", log=lambda m: None)
    blob = bytearray((folder / "tiny.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (folder / "tiny.safetensors").write_bytes(bytes(blob))
    with pytest.raises(zoo.ZooError, match="sha256"):
        zoo.open_zoo_model("zoo:tiny")
    with pytest.raises(zoo.ZooError, match="no zoo model 'nope'"):
        zoo.open_zoo_model("zoo:nope")
    for bad in ("../escape", "-rf", "a/b", "", "x" * 80, "name\x00"):
        with pytest.raises(zoo.ZooError, match="must be 1-64 characters"):
            zoo.manifest(bad)


def test_command_line_refuses_bad_zoo_input_with_exit_2(tmp_path):
    """Through the real console entry point: an unknown model and a hostile name each end in one sentence, exit 2."""
    for args in (["show", "no_such_model"], ["verify", "../../etc"], ["train", "no_such_model"],
                 ["train", "pixelcnn_fmnist", "--minutes", "-3"], ["verify", "flow_tiny_fmnist", "--images", "150"],
                 ["adopt", "flow_tiny_fmnist", str(tmp_path)], ["adopt", "../x", str(tmp_path)]):
        out = subprocess.run([sys.executable, "-m", "genood.commands.zoo", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"preset": "flow_rq_nsf_tiny", "run": {"runs_root": str(tmp_path / "runs")},
                                        "ood": {"checkpoint": "zoo:no_such_model"}, "tracking": {"wandb": False}}))
    out = subprocess.run([sys.executable, str(ROOT / "main_ood.py"), "--config", str(cfg_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no zoo model 'no_such_model'" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_overrides_that_change_the_recipe_are_refused(tiny_zoo):
    tiny_zoo("z")
    with pytest.raises(zoo.ZooError, match="change what reference model 'tiny' learns"):
        zoo.train_reference("tiny", overrides=["training.lr=0.5"], log=lambda m: None)


def test_reference_entries_resolve_to_their_presets():
    """Every entry of the shipped zoo/reference.yaml is a valid configuration of the preset it names."""
    entries = zoo.reference_entries()
    assert entries
    for name, entry in entries.items():
        cfg = zoo.reference_config(name)
        preset = runconfig.resolve({"preset": entry["config"]["preset"]})
        assert cfg["model"] == preset["model"], name
        assert cfg["run"]["sweep_id"] == "zoo"


# A model whose full held-out measurement took longer than this when it was published is checked on its first
# batch of test images only (against that batch's recorded mean; `genood-zoo verify` still checks all of them):
# the diffusion's ODE likelihood takes about 10 minutes for 500 images on two cores, a third of the CI budget.
QUICK_VERIFY_AFTER_S = 120.0


@pytest.mark.parametrize("name", zoo.names() or ["(none published)"])
def test_shipped_zoo_model_verifies(name):
    """Each shipped model: its sha256 matches, it loads from safetensors, and its bits/dim on the manifest's test
    images (500; the first 100 for a model slower than QUICK_VERIFY_AFTER_S) is within 0.01 of the manifest; the
    files keep the zoo's size limits."""
    total = sum(p.stat().st_size for p in zoo.zoo_dir().glob("*.safetensors"))
    assert total <= zoo.MAX_TOTAL_BYTES
    if name == "(none published)":
        assert not list(zoo.zoo_dir().glob("*.safetensors"))  # weights without a manifest would be unverifiable
        return
    assert (zoo.zoo_dir() / f"{name}.safetensors").stat().st_size <= zoo.MAX_FILE_BYTES
    info = zoo.manifest(name)
    assert len(info["heldout_batches"]) * zoo.VERIFY_BATCH == info["heldout_images"] == zoo.VERIFY_IMAGES
    quick = float(info["heldout_seconds"]) > QUICK_VERIFY_AFTER_S
    out = zoo.verify(name, images=zoo.VERIFY_BATCH if quick else None)
    assert out["images"] == (zoo.VERIFY_BATCH if quick else zoo.VERIFY_IMAGES)
    assert abs(out["bits_per_dim"] - out["manifest_bits_per_dim"]) <= 0.01


def test_reproduction_table_measures_published_rows_and_shows_training_ones(tiny_zoo, tmp_path):
    """genood-reproduce: a row whose zoo model is published is measured by its OOD job (the detector's AUROC and
    interval from metrics.json, equal to a direct run's); a row whose model is still training shows the step it
    reached and the last point of its OOD curves; the Markdown table names the published number's source."""
    from genood.reports import reproduction

    folder = tiny_zoo("z")
    ref = yaml.safe_load((folder / "reference.yaml").read_text())
    ref["models"]["tiny_b"] = json.loads(json.dumps(ref["models"]["tiny"]))
    ref["models"]["tiny_b"]["config"]["run"]["seed"] = 1
    (folder / "reference.yaml").write_text(yaml.safe_dump(ref))
    zoo.train_reference("tiny", log=lambda m: None)
    zoo.publish("tiny", log=lambda m: None)
    zoo.train_reference("tiny_b", minutes=1e-9, log=lambda m: None)  # stops at step 1: still training
    cfg = runconfig.copy_tree(ref["models"]["tiny"]["config"])
    cfg["ood"] = {"checkpoint": "zoo:tiny", "scores": ["log_likelihood"], "n_in_train": 16, "n_generated": 0,
                  "bootstrap": 50, "figures": False, "png": False, "baselines": []}
    rows = [{"id": "tiny_ll", "seed": "t", "method": "likelihood", "pair": ["set", "other"], "detector": "log_likelihood",
             "label_free": True, "published": {"auroc": 0.5, "target": 0.48, "source": "a made-up paper, Table 9"},
             "models": ["tiny"], "config": cfg, "headline": True},
            {"id": "tiny_b_ll", "seed": "t", "method": "likelihood", "pair": ["set", "other"], "detector": "log_likelihood",
             "published": {"auroc": None}, "models": ["tiny_b"], "config": cfg}]
    (folder / "reproductions.yaml").write_text(yaml.safe_dump({"rows": rows}))
    results = reproduction.reproduce(log=lambda m: None)
    measured, training = results
    assert measured["status"]["ready"] and 0.0 <= measured["ours"]["auroc"] <= 1.0
    lo, hi = measured["ours"]["auroc_ci"]
    assert lo <= measured["ours"]["auroc"] <= hi
    assert not training["status"]["ready"] and training["ours"] is None
    assert training["status"]["models"][0]["steps_done"] == 1 and training["status"]["models"][0]["state"] == "training"
    text = (folder / "REPRODUCTION.md").read_text()
    assert "a made-up paper, Table 9" in text and f"{measured['ours']['auroc']:.3f} [" in text
    assert "1 / 8 (training" in text
    shown = reproduction._committed()
    assert [r["id"] for r in shown] == ["tiny_ll", "tiny_b_ll"]
    # the headline row's number is now in its model's manifest, and the weights still verify
    headline = zoo.manifest("tiny")["headline"]
    assert headline["row"] == "tiny_ll" and headline["auroc"] == measured["ours"]["auroc"]
    assert zoo.verify("tiny", bits=False)["sha256"] == "ok"
    # a row declared after the table was made, while another row is measured: it joins the table, unmeasured,
    # with where its models stand, and the measured rows keep their numbers
    rows.append(dict(rows[0], id="tiny_late", headline=False))
    (folder / "reproductions.yaml").write_text(yaml.safe_dump({"rows": rows}))
    again = reproduction.reproduce(select=["tiny_b_ll"], log=lambda m: None)
    assert [r["id"] for r in again] == ["tiny_ll", "tiny_b_ll", "tiny_late"]
    assert again[0]["ours"] == measured["ours"] and again[2]["ours"] is None and again[2]["status"]["ready"]
    table = [ln for ln in (folder / "REPRODUCTION.md").read_text().splitlines() if ln.startswith("| t |")]
    assert len(table) == 3 and "not measured yet" in table[2] and "8 / 8" in table[2]


def test_a_zoo_foreground_takes_its_background_model_from_the_zoo(tiny_zoo, capsys):
    """likelihood_ratio with ood.checkpoint: zoo:<fg> uses the published zoo model of the background's identity
    (no training of its own); the ratio equals foreground minus that model's log-likelihood."""
    import pandas as pd

    from genood.ood.runner import run_ood

    folder = tiny_zoo("z")
    ref = yaml.safe_load((folder / "reference.yaml").read_text())
    ref["models"]["tiny_bg"] = json.loads(json.dumps(ref["models"]["tiny"]))
    ref["models"]["tiny_bg"]["config"]["training"]["mutation_rate"] = 0.2
    (folder / "reference.yaml").write_text(yaml.safe_dump(ref))
    for name in ("tiny", "tiny_bg"):
        zoo.train_reference(name, log=lambda m: None)
        zoo.publish(name, log=lambda m: None)
    cfg = runconfig.copy_tree(ref["models"]["tiny"]["config"])
    cfg["ood"] = {"checkpoint": "zoo:tiny", "scores": ["log_likelihood", "likelihood_ratio", "background_log_likelihood"],
                  "n_in_train": 16,
                  "n_in_val": 16, "n_generated": 0, "bootstrap": 0, "figures": False, "png": False, "baselines": []}
    cfg["likelihood_ratio"] = {"selection": "none", "mutation_rate": 0.2, "l2_penalty": 0.0}
    cfg["tracking"] = {"wandb": False}
    out = run_ood(runconfig.resolve(cfg), echo=True)
    assert "zoo model tiny_bg" in capsys.readouterr().err
    assert not list((Path(ref["models"]["tiny"]["config"]["run"]["runs_root"]) / "background").glob("*"))
    table = pd.read_parquet(out / "scores.parquet")
    assert np.isfinite(table["likelihood_ratio"]).all()
    np.testing.assert_allclose(table["likelihood_ratio"], table["log_likelihood"] - table["background_log_likelihood"],
                               rtol=0, atol=1e-6)


def test_shipped_reproduction_rows_resolve_and_name_reference_models():
    """Every row of zoo/reproductions.yaml is a valid OOD configuration scoring a zoo model of the reference tier
    (or, for a row no CPU model serves, one that trains its own: the GPU sweep's), and carries its published
    number's source."""
    from genood.reports import reproduction

    entries = zoo.reference_entries()
    for row in reproduction.rows():
        cfg = runconfig.resolve(row["config"])
        assert row["published"]["source"], row["id"]
        if not row["models"]:
            assert cfg["ood"]["checkpoint"] is None, row["id"]
            continue
        assert cfg["ood"]["checkpoint"] == f"zoo:{row['models'][0]}", row["id"]
        assert all(m in entries for m in row["models"]), row["id"]
        assert row["published"]["source"], row["id"]
        assert runconfig.model_identity(cfg) == runconfig.model_identity(zoo.reference_config(row["models"][0])), row["id"]


def test_publish_on_a_fresh_clone_takes_the_committed_resume_point(tiny_zoo, tmp_path):
    """A clone holds zoo/resume/ but no runs/: publishing there uses the committed resume point."""
    folder = tiny_zoo("fresh")
    zoo.train_reference("tiny", minutes=1e-9, log=lambda m: None)
    shutil.rmtree(tmp_path / "runs")
    logs = []
    got = zoo.publish("tiny", log=logs.append)
    assert got["steps_done"] == 1 and (folder / "tiny.safetensors").exists()
    assert any("resuming from the committed resume point (step 1)" in m for m in logs)


def test_each_seeds_reproduction_sweep_runs_exactly_its_rows_jobs():
    """meta_configurations/reproduce/<seed>.yaml: every run is the full-recipe job (config + gpu overrides, no
    checkpoint) of at least one row of that seed, and every row of the seed has its run there."""
    from genood.orchestration import metaconfig as mc
    from genood.reports import reproduction

    by_seed = {}
    for row in reproduction.rows():
        by_seed.setdefault(str(row["seed"]), []).append(row)
    for seed, seed_rows in by_seed.items():
        meta = mc.load(ROOT / "meta_configurations" / "reproduce" / f"{seed}.yaml")
        runs = {reproduction.job_key(runconfig.resolve(r.config)) for r in mc.expand(meta)}
        wanted = {reproduction.job_key(reproduction.gpu_job(row)) for row in seed_rows}
        assert runs == wanted, seed
        assert all(r.config["ood"]["checkpoint"] is None for r in mc.expand(meta)), seed


def test_reproduction_table_of_a_sweep_finds_rows_by_configuration(tiny_zoo, tmp_path):
    """genood-reproduce --sweep: a row's run is found among a sweep's runs by its configuration (not its name);
    the table takes its AUROC, interval and step from that run; a row without a run says so."""
    from genood.ood.runner import run_ood
    from genood.reports import reproduction

    folder = tiny_zoo("s")
    ref = yaml.safe_load((folder / "reference.yaml").read_text())
    cfg = runconfig.copy_tree(ref["models"]["tiny"]["config"])
    cfg["ood"] = {"checkpoint": "zoo:tiny", "scores": ["log_likelihood", "bits_per_dim"], "n_in_train": 16,
                  "n_generated": 0, "bootstrap": 50, "figures": False, "png": False, "baselines": []}
    other = runconfig.deep_merge(runconfig.copy_tree(cfg), {"run": {"seed": 5}})
    rows = [{"id": "here", "seed": "t", "method": "likelihood", "pair": ["set", "other"], "detector": "log_likelihood",
             "published": {"auroc": 0.5, "source": "a made-up paper"}, "models": ["tiny"], "config": cfg,
             "gpu": {"ood": {"bootstrap": 60}}},
            {"id": "absent", "seed": "t", "method": "likelihood", "pair": ["set", "other"], "detector": "log_likelihood",
             "published": {"auroc": None}, "models": [], "config": other}]
    (folder / "reproductions.yaml").write_text(yaml.safe_dump({"rows": rows}))
    job = reproduction.gpu_job(rows[0])
    assert job["ood"]["checkpoint"] is None and job["ood"]["bootstrap"] == 60
    # the sweep's run: the same job under another name and sweep, trained by the run itself
    job = runconfig.deep_merge(job, {"run": {"name": "renamed-by-the-sweep", "sweep_id": "local-0000abcd"},
                                     "tracking": {"wandb": False}})
    directory = run_ood(runconfig.resolve(job), echo=False)
    results = reproduction.sweep_results(directory.parent, log=lambda m: None)
    here, absent = results
    metrics = json.loads((directory / "metrics.json").read_text())["log_likelihood"]
    assert here["ours"]["auroc"] == metrics["auroc"] and here["ours"]["auroc_ci"] == metrics["auroc_ci"]
    assert here["status"]["models"][0]["steps_done"] == 8
    assert absent["ours"] is None and absent["status"]["models"][0]["state"] == "not in this sweep"
    text = (directory.parent / "REPRODUCTION.md").read_text()
    assert f"{metrics['auroc']:.3f} [" in text and "not in this sweep" in text and "the runs of" in text
    assert not (folder / "REPRODUCTION.md").exists()  # the zoo's own table is untouched


def test_reproduce_sweep_that_is_not_a_folder_is_one_sentence(tmp_path):
    out = subprocess.run([sys.executable, "-m", "genood.reports.reproduction", "--sweep", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "is not a folder" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_publishing_mid_budget_keeps_the_resume_point_and_training_goes_on(tiny_zoo):
    """A model published while budget is left (a session's snapshot) keeps zoo/resume/<name>.pt, so the next
    session resumes from it; publishing once the training is over removes it."""
    folder = tiny_zoo("mid")
    zoo.train_reference("tiny", minutes=1e-9, log=lambda m: None)
    logs = []
    first = zoo.publish("tiny", log=logs.append)
    assert first["steps_done"] == 1 and (folder / "resume" / "tiny.pt").exists()
    assert any("resume point stays" in m for m in logs)
    logs = []
    _, over = zoo.train_reference("tiny", log=logs.append)
    assert over
    last = zoo.publish("tiny", log=lambda m: None)
    assert last["steps_done"] == 8 and not list((folder / "resume").glob("tiny.*"))


def _trained_elsewhere(tmp_path, overrides=()):
    """The tiny entry's recipe trained as an ordinary run of a sweep of its own (not through the zoo)."""
    from genood.models.runs import run_training
    user = runconfig.copy_tree(zoo._entry("tiny")["config"])
    user.setdefault("run", {})["sweep_id"] = "elsewhere"
    user.setdefault("tracking", {})["wandb"] = False
    return run_training(runconfig.resolve(user, list(overrides)), echo=False)


def test_adopting_a_finished_run_of_the_recipe_publishes_the_weights_zoo_training_gives(tiny_zoo, tmp_path):
    """A run trained in a sweep with exactly the entry's recipe becomes the entry: the published weights equal
    those of `genood-zoo train`, and the manifest's session says where they came from and what they took."""
    tiny_zoo("trained")
    zoo.train_reference("tiny", log=lambda m: None)
    want = zoo.publish("tiny", log=lambda m: None)
    folder = tiny_zoo("adopted")
    run = _trained_elsewhere(tmp_path)
    logs = []
    zoo.adopt("tiny", run, log=logs.append)
    assert any("adopted the finished run" in m for m in logs)
    got = zoo.publish("tiny", log=lambda m: None)
    assert got["sha256"] == want["sha256"] and got["steps_done"] == 8 and got["config_hash"] == want["config_hash"]
    (session,) = got["sessions"]
    assert session["adopted_from"].endswith(run.name) and session["to_step"] == 8 and session["seconds"] > 0
    assert session["commit"] == json.loads((run / "provenance.json").read_text())["git_commit"]
    assert got["wall_seconds"] == session["seconds"] and got["data_checksums"]
    assert not list((folder / "resume").glob("tiny.*"))
    with pytest.raises(zoo.ZooError, match="already published"):
        zoo.adopt("tiny", run, log=lambda m: None)


def test_adopting_a_run_of_another_recipe_or_an_unfinished_one_is_one_sentence(tiny_zoo, tmp_path):
    from genood.models.training import CHECKPOINT
    folder = tiny_zoo("refused")
    other = _trained_elsewhere(tmp_path, ["training.lr=0.0005"])
    with pytest.raises(zoo.ZooError, match=r"did not train reference model 'tiny'.s recipe \(training.lr is 0.0005 there"):
        zoo.adopt("tiny", other, log=lambda m: None)
    with pytest.raises(zoo.ZooError, match="has no checkpoint.pt"):
        zoo.adopt("tiny", tmp_path, log=lambda m: None)
    with pytest.raises(zoo.ZooError, match="no reference model 'nosuch'"):
        zoo.adopt("nosuch", other, log=lambda m: None)
    run = _trained_elsewhere(tmp_path)
    import torch
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["finished"], state["step"] = False, 4
    torch.save(state, run / CHECKPOINT)
    with pytest.raises(zoo.ZooError, match="stopped at step 4 of 8; finish it"):
        zoo.adopt("tiny", run, log=lambda m: None)
    assert not list(folder.glob("resume/*")) and not list(folder.glob("*.json"))  # nothing written by a refusal
