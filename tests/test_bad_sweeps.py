"""Bad input on the sweep side (issue 30, part 4): a meta-configuration with a bad axis, duplicate aliases, an
empty `values`, an axis on an unknown key or a bad value, hostile names, through `dysweep_create` and the agent;
sweep ids typed on the command line; names a shared store or W&B hands back. Each is one sentence with exit
status 2 (or a run marked failed with the sentence), and nothing is written outside the runs root."""
import json

import pytest
import yaml

from genood import entrypoint, paths, rundir
from genood.commands import sweep
from genood.orchestration import metaconfig
from genood.orchestration.store import open_store, store_locator

FLOW = {"preset": "flow_rq_nsf_tiny", "data": {"in_distribution": "fmnist", "ood": "mnist"}}


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def place(tmp_path, monkeypatch):
    """(runs root, a folder beside it that must stay empty); `dysweep_create` finds the runs root in OOD_RUNS_ROOT."""
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setenv("OOD_RUNS_ROOT", str(runs))
    monkeypatch.delenv("OOD_SWEEP_STORE", raising=False)
    return runs, outside


def _meta_file(tmp_path, meta):
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(meta, allow_unicode=True))
    return path


BAD_METAS = [
    ("a bad axis (values not a list)", {"job": "ood", "base_config": FLOW,
                                         "sweep_configuration": {"training": {"lr": {"sweep": True, "values": 0.1}}}},
     "sweep_configuration.training.lr.values"),
    ("an empty values list", {"job": "ood", "base_config": FLOW,
                              "sweep_configuration": {"training": {"lr": {"sweep": True, "values": []}}}},
     "sweep_configuration.training.lr.values"),
    ("duplicate aliases", {"job": "ood", "base_config": FLOW, "sweep_configuration": {"training": {"lr": {
        "sweep": True, "values": [0.1, 0.2], "sweep_alias": ["same", "same"]}}}}, "sweep_alias"),
    ("aliases of the wrong length", {"job": "ood", "base_config": FLOW, "sweep_configuration": {"training": {"lr": {
        "sweep": True, "values": [0.1, 0.2], "sweep_alias": ["one"]}}}}, "sweep_alias"),
    ("an axis on an unknown key", {"job": "ood", "base_config": FLOW,
                                   "sweep_configuration": {"training": {"lrr": {"sweep": True, "values": [0.1, 0.2]}}}},
     "training.lrr"),
    ("an axis value out of range", {"job": "ood", "base_config": FLOW, "sweep_configuration": {
        "training": {"lr": {"sweep": True, "values": [0.001, float("nan")]}}}}, "training.lr"),
    ("an axis value of the wrong type", {"job": "ood", "base_config": FLOW, "sweep_configuration": {
        "training": {"batch_size": {"sweep": True, "values": [8, "many"]}}}}, "training.batch_size"),
    ("an unknown top-level key", {"job": "ood", "base_config": FLOW, "sweep_configuration": {}, "sweeep": 1}, "sweeep"),
    ("an unknown job", {"job": "../../bin/sh", "base_config": FLOW, "sweep_configuration": {}}, "job"),
    ("a hostile run name in the base config", {"job": "ood", "base_config": dict(FLOW, run={"name": "../../escape"}),
                                               "sweep_configuration": {}}, "run.name"),
]


@pytest.mark.parametrize("what,meta,key", BAD_METAS, ids=[b[0] for b in BAD_METAS])
def test_a_bad_meta_configuration_is_one_sentence_and_creates_nothing(what, meta, key, place, tmp_path, capsys):
    runs, outside = place
    assert sweep.dysweep_create(["--config", str(_meta_file(tmp_path, meta)), "--backend", "local"]) == entrypoint.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], (what, err)
    assert _files(runs) == [] and _files(outside) == []


def test_hostile_aliases_become_safe_run_names_and_the_agent_writes_only_inside_the_runs_root(place, tmp_path):
    """Aliases are free text (a user's labels): '../..', '-rf', NUL, '/' and unicode become one safe component each
    run; the agent runs them all and every file lies under the runs root."""
    runs, outside = place
    hostile = ["../../outside/x", "-rf", "nul\x00byte", "a/b\\c", "ü ñ 日本", ".hidden", "x" * 300]
    meta = {"job": "sleep", "base_config": {"sleep": 0.0},
            "sweep_configuration": {"value": {"sweep": True, "values": [i / 10 for i in range(len(hostile))],
                                              "sweep_alias": hostile}}}
    assert sweep.dysweep_create(["--config", str(_meta_file(tmp_path, meta)), "--backend", "local"]) == 0
    store = open_store(store_locator(runs), runs_root=runs)
    try:
        sweep_id = store.sweeps()[0]["id"]
        names = [r["name"] for r in store.runs(sweep_id)]
    finally:
        store.close()
    assert len(set(names)) == len(hostile) and all(paths.name_problem(n) is None for n in names), names
    assert sweep.main(["--runs-root", str(runs), "agent", sweep_id]) == 0
    store = open_store(store_locator(runs), runs_root=runs)
    try:
        assert {r["status"] for r in store.runs(sweep_id)} == {"finished"}
    finally:
        store.close()
    assert _files(outside) == []
    assert sorted(p.name for p in (runs / sweep_id).iterdir() if p.name != "agents") == sorted(names)


@pytest.mark.parametrize("ref", ["local-../../outside", "../outside", "-rf", "a/b", "local-x\x00y", "e/p/../x", ""])
@pytest.mark.parametrize("command", ["agent", "status", "rerun", "aggregate", "report", "launch"])
def test_a_hostile_sweep_id_on_the_command_line_is_one_sentence_and_makes_no_folder(command, ref, place, capsys):
    runs, outside = place
    extra = ["--local", "--agents", "1"] if command == "launch" else []
    assert sweep.main(["--runs-root", str(runs), command, *extra, "--", ref]) == entrypoint.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "sweep id" in err[0], err
    assert not runs.exists() and _files(outside) == []


def test_a_hostile_name_handed_back_by_the_store_fails_that_run_without_writing(place, tmp_path):
    """Another machine wrote a run into the shared store whose configuration names a folder outside the runs root:
    the agent marks it failed with the sentence, runs the good one, and nothing lands outside."""
    runs, outside = place
    meta = {"job": "sleep", "base_config": {"sleep": 0.0}, "sweep_configuration": {}}
    assert sweep.dysweep_create(["--config", str(_meta_file(tmp_path, meta)), "--backend", "local"]) == 0
    store = open_store(store_locator(runs), runs_root=runs)
    try:
        sweep_id = store.sweeps()[0]["id"]
        good = store.runs(sweep_id)[0]
        config = json.loads(json.dumps(good["config"]))
        for field, value in (("name", "../../outside/escape"), ("sweep_id", "../outside")):
            bad = json.loads(json.dumps(config))
            bad["run"][field] = value
            store.add_run(sweep_id, {"name": f"hostile-{field}", "params": {}, "digest": f"d-{field}", "config": bad})
    finally:
        store.close()
    assert sweep.main(["--runs-root", str(runs), "agent", sweep_id]) == 0
    store = open_store(store_locator(runs), runs_root=runs)
    try:
        status = {r["name"]: (r["status"], r.get("error") or "") for r in store.runs(sweep_id)}
    finally:
        store.close()
    assert status[good["name"]][0] == "finished"
    for field in ("name", "sweep_id"):
        state, error = status[f"hostile-{field}"]
        assert state == "failed" and "must be one file-name component" in error, status
    assert _files(outside) == [] and not (tmp_path / "escape").exists()


def test_a_meta_configuration_path_from_wandb_cannot_leave_the_checkout(tmp_path):
    """W&B hands the agent the meta-configuration's path (another machine chose it): it must lie in the checkout."""
    from genood.orchestration import wandb_backend
    with pytest.raises(paths.UnsafeName, match="outside"):
        wandb_backend.config_from_wandb({wandb_backend.META_PARAM: "../../../../etc/passwd"}, tmp_path / "checkout")


def test_every_write_is_refused_outside_the_write_roots(tmp_path):
    """The one function every file goes through: a target outside the runs root (and the registered folders) is
    refused before anything is written, also through a symbolic link inside the root."""
    runs = rundir.runs_root({"run": {"runs_root": str(tmp_path / "runs")}})
    runs.mkdir(parents=True)
    (runs / "link").symlink_to(tmp_path)
    for target in (tmp_path / "elsewhere.json", runs / ".." / "up.json", runs / "link" / "through.json"):
        with pytest.raises(paths.UnsafeName, match="outside the runs root"):
            rundir.write_json(target, {"x": 1})
    rundir.write_json(runs / "single" / "ok.json", {"x": 1})
    assert _files(tmp_path) == [runs.relative_to(tmp_path) / "single" / "ok.json"]


def test_run_names_of_a_grid_are_safe_for_any_alias():
    meta = metaconfig.parse({"job": "sleep", "base_config": {}, "sweep_configuration": {
        "value": {"sweep": True, "values": [1, 2, 3], "sweep_alias": ["..", "/", "-"]}}})
    names = [r.name for r in metaconfig.expand(meta)]
    assert len(set(names)) == 3 and all(paths.name_problem(n) is None for n in names), names
