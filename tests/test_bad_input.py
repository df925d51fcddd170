"""Bad input, as a new user would type it: each case is one sentence naming the key, exit status 2, and nothing
written, least of all outside the runs root (issue 30's list)."""
import pytest

from genood import entrypoint, paths, rundir, runconfig

CASES = [
    ("run.name=../../../../{outside}/escape", "run.name"),
    ("run.sweep_id=../../../{outside}", "run.sweep_id"),
    ("run.name=-rf", "run.name"),
    ("run.name=a/b", "run.name"),
    ("run.sweep_id=..", "run.sweep_id"),
    ("training.lr=nan", "training.lr"),
    ("training.lr=.inf", "training.lr"),
    ("training.lr=0", "training.lr"),
    ("training.batch_size=0", "training.batch_size"),
    ("ood.n_in_test=-1", "ood.n_in_test"),
    ("training.steps=-5", "training.steps"),
    ("training.steps=0", "training.steps"),
    ("run.num_threads=0", "run.num_threads"),
    ("training.checkpoint_every=0", "training.checkpoint_every"),
]


@pytest.mark.parametrize("override,key", CASES)
def test_bad_value_is_one_sentence_naming_the_key_and_writes_nothing(override, key, tmp_path, capsys):
    from genood.commands.score import main

    outside, runs = tmp_path / "outside", tmp_path / "runs"
    outside.mkdir()
    argv = ["--config", "configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml", f"run.runs_root={runs}",
            "tracking.wandb=false", override.format(outside=str(outside).lstrip("/"))]
    assert main(argv) == entrypoint.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"'{key}'" in err[0], err
    assert not runs.exists() and not list(outside.iterdir())


@pytest.mark.parametrize("name", ["../up", "a/b", "-rf", ".hidden", "", "x" * 300, "nul\x00byte", "back\\slash", "sp ace"])
def test_run_dir_refuses_a_name_that_is_not_one_safe_component(name, tmp_path):
    """The one function that makes run directories checks both components and that the result stays inside."""
    cfg = {"run": {"runs_root": str(tmp_path / "runs"), "sweep_id": "single"}}
    with pytest.raises(paths.UnsafeName):
        rundir.run_dir(cfg, name)
    with pytest.raises(paths.UnsafeName):
        rundir.run_dir({"run": {"runs_root": str(tmp_path / "runs"), "sweep_id": name}}, "ok")
    assert not (tmp_path / "runs").exists() or not any(p.name != "single" for p in (tmp_path / "runs").iterdir())


def test_derived_run_names_are_safe_components():
    """Names made from configurations (suites, npz paths, derived sets) pass the same check."""
    for cfg in (runconfig.resolve({"preset": "flow_rq_nsf_tiny", "data": {"ood": ["mnist", "fmnist:hflip"]}}),
                runconfig.resolve({"preset": "pixelcnn_paper", "data": {"in_distribution": "npz:/tmp/some dir/x.npz"}})):
        for kind in ("train", "ood"):
            assert paths.name_problem(runconfig.run_name(cfg, kind)) is None


def test_confined_refuses_a_symlink_out_of_the_root(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(paths.UnsafeName, match="lies outside"):
        paths.confined(root, root / "link" / "run", "run directory")
    assert paths.confined(root, root / "a" / "b", "run directory") == (root / "a" / "b").resolve()
