"""Meta-configuration expansion against worked examples of dysweep's documented rules."""
import pytest
import yaml

from genood.orchestration import metaconfig as mc
from genood.orchestration import wandb_backend
from genood.runconfig import ConfigError
from tests.conftest import ROOT

DESIGN_EXAMPLE = """
project: likelihood-paradox
method: grid
job: ood
base_config:
  model: {family: flow, preset: tiny, coupling: rq_nsf}
  data: {in_distribution: fmnist, ood: mnist}
  ood: {scores: [log_likelihood]}
sweep_configuration:
  dy__upsert:
    - sweep: true
      sweep_identifier: pair
      sweep_alias: [fmnist_vs_mnist, mnist_vs_fmnist]
      values:
        - {data: {in_distribution: fmnist, ood: mnist}}
        - {data: {in_distribution: mnist, ood: fmnist}}
  model:
    coupling: {sweep: true, values: [rq_nsf, affine]}
"""


def _meta(text, job="sleep"):
    raw = yaml.safe_load(text)
    raw.setdefault("job", job)
    return mc.parse(raw, "example.yaml")


def test_design_example_expands_to_four_runs():
    meta = _meta(DESIGN_EXAMPLE, job="ood")
    assert [a.identifier for a in meta.axes] == ["pair", "coupling"]
    configs = [mc.config_for(meta, c) for c in mc.choices(meta)]
    assert len(configs) == 4
    got = [(c["data"]["in_distribution"], c["data"]["ood"], c["model"]["coupling"]) for c in configs]
    assert got == [("fmnist", "mnist", "rq_nsf"), ("fmnist", "mnist", "affine"),
                   ("mnist", "fmnist", "rq_nsf"), ("mnist", "fmnist", "affine")]
    # base keys the axes do not touch survive (upsert merges, it does not replace)
    assert all(c["model"]["preset"] == "tiny" and c["ood"] == {"scores": ["log_likelihood"]} for c in configs)


def test_axis_value_replaces_but_upsert_merges():
    meta = _meta("""
base_config: {a: {x: 1, y: 2}, b: {x: 1, y: 2}}
sweep_configuration:
  a: {sweep: true, values: [{x: 10}]}
  b:
    dy__upsert:
      - {x: 10}
      - {sweep: true, sweep_identifier: bz, values: [{z: 3}, {y: 20}]}
""")
    configs = [mc.config_for(meta, c) for c in mc.choices(meta)]
    assert configs[0]["a"] == {"x": 10}                      # replaced wholesale
    assert configs[0]["b"] == {"x": 10, "y": 2, "z": 3}      # merged, in list order
    assert configs[1]["b"] == {"x": 10, "y": 20}


def test_upsert_entries_apply_after_ordinary_keys_in_order():
    meta = _meta("""
base_config: {m: {k: 0}}
sweep_configuration:
  m:
    k: 1
    dy__upsert: [{k: 2}, {k: 3}]
""")
    assert mc.config_for(meta, {})["m"]["k"] == 3


def test_default_identifier_is_shortest_unique_suffix_and_aliases():
    meta = _meta("""
base_config: {}
sweep_configuration:
  model: {lr: {sweep: true, values: [0.1, 0.2]}, depth: {sweep: true, values: [1, 2]}}
  optim: {lr: {sweep: true, values: [1, 2]}}
  data: {sub: {sweep: true, sweep_alias: [small, big], values: [{n: 1}, {n: 100}]}}
""")
    assert [a.identifier for a in meta.axes] == ["model.lr", "depth", "optim.lr", "sub"]
    assert meta.axes[3].aliases == ["small", "big"] and meta.axes[0].aliases == ["0.1", "0.2"]
    names = [mc.run_name_for(meta, c, mc.config_for(meta, c)) for c in mc.choices(meta)]
    assert len(names) == 16 == len(set(names)) and names[0].startswith("0.1-1-1-small-")


@pytest.mark.parametrize("text, message", [
    ("base_config: {}\nsweep_configuration: {a: {sweep: true, values: []}}", "'sweep_configuration.a.values' must be a non-empty list"),
    ("base_config: {}\nsweep_configuration: {a: {b: {sweep: true, values: [1, 2], sweep_alias: [x]}}}", "'sweep_configuration.a.b.sweep_alias'"),
    ("base_config: {}\nsweep_configuration: {a: {dy__eval: {expression: 'x'}}}", "'sweep_configuration.a.dy__eval': code in YAML is not executed"),
    ("base_config: {}\nsweep_configuration: {a: {sweep: true, values: [1], valuez: 3}}", "'sweep_configuration.a' is an axis"),
    ("base_config: {}\nsweep_configuration: {}\nmethod: grud", "'method' must be one of"),
    ("base_config: {}\nsweep_configuration: {}\nbase_confg: {}", "unknown top-level key(s) base_confg"),
    ("base_config: {}\nsweep_configuration:\n  a: {sweep: true, sweep_identifier: x, values: [1]}\n  b: {sweep: true, sweep_identifier: x, values: [1]}", "identifier 'x' is used twice"),
])
def test_bad_meta_configurations_name_their_path(text, message):
    with pytest.raises(ConfigError) as err:
        _meta(text)
    assert message in str(err.value)


def test_bad_run_key_fails_before_queueing_with_run_and_dotted_path():
    meta = _meta("""
base_config: {preset: flow_rq_nsf_tiny}
sweep_configuration:
  training: {stepz: {sweep: true, values: [1, 2]}}
""", job="ood")
    with pytest.raises(ConfigError, match=r"run \(stepz=1\): Unknown config key 'training.stepz'"):
        mc.expand(meta)


SHIPPED = {  # file -> (job, runs)
    "ood/demo_tiny.yaml": ("ood", 2),
    "gpu/gpu_check.yaml": ("ood", 2),
    "ood/flow_tiny_seeds.yaml": ("ood", 6),
    "ood/grayscale_likelihood.yaml": ("ood", 8),
    "ood/rgb_likelihood.yaml": ("ood", 32),
    "ood/flow_lid_likelihood.yaml": ("ood", 4),
    "ood/flow_lid_curve.yaml": ("ood", 4),
    "training/grayscale_flows.yaml": ("train", 20),
    "training/rgb_flows.yaml": ("train", 16),
    "ood/diffusion_lid_likelihood_tiny.yaml": ("ood", 4),
    "ood/diffusion_lid_likelihood_paper.yaml": ("ood", 4),
    "ood/diffusion_likelihood.yaml": ("ood", 8),
    "ood/manifold_lid_estimators.yaml": ("ood", 12),
    "training/diffusions.yaml": ("train", 36),
    "ood/grayscale_baselines.yaml": ("ood", 4),
    "ood/rgb_baselines.yaml": ("ood", 4),
    "training/background_grayscale.yaml": ("train", 36),
    "ood/hvae_pixelcnn_tiny.yaml": ("ood", 4),
    "ood/hvae_llr_paper.yaml": ("ood", 4),
    "ood/pixelcnn_ratio_paper.yaml": ("ood", 4),
    "ood/rgb_hvae_pixelcnn.yaml": ("ood", 4),
    "training/background_pixelcnn.yaml": ("train", 20),
    "ood/suite_tiny.yaml": ("ood", 16),
    "ood/suite_flow_seeds.yaml": ("ood", 12),
    "ood/suite_seed_detectors.yaml": ("ood", 12),
    "ood/suite_zoo_flows.yaml": ("ood", 4),
    "ood/suite_zoo_hvae.yaml": ("ood", 1),
    "ood/suite_zoo_vae.yaml": ("ood", 1),
    "ood/suite_zoo_pixelcnn.yaml": ("ood", 1),
    "ood/suite_zoo_diffusion.yaml": ("ood", 1),
    "ood/suite_zoo_diffusion_mnist.yaml": ("ood", 1),
    "ood/suite_hvae_tiny.yaml": ("ood", 4),
    "ood/suite_hvae_tiny_long.yaml": ("ood", 4),
    "ood/suite_hvae_tiny_orientation.yaml": ("ood", 4),
    "ood/suite_zoo_flows_orientation.yaml": ("ood", 4),
    "ood/suite_zoo_hvae_tiny_orientation.yaml": ("ood", 4),
    "ood/suite_zoo_hvae_tiny_orientation_allval.yaml": ("ood", 2),
    "ood/suite_zoo_hvae_small_orientation.yaml": ("ood", 2),
    "ood/suite_zoo_vae_orientation.yaml": ("ood", 1),
    "ood/suite_zoo_pixelcnn_orientation.yaml": ("ood", 1),
    "ood/suite_hvae_tiny_orientation_seeds.yaml": ("ood", 2),
    "ood/suite_hvae_tiny_orientation_seeds_split.yaml": ("ood", 6),
    "ood/suite_hvae_tiny_orientation_seeds_more.yaml": ("ood", 4),
    "ood/suite_zoo_hvae_tiny_orientation_mnist.yaml": ("ood", 2),
    "reproduce/000.yaml": ("ood", 2),
    "reproduce/001.yaml": ("ood", 4),
    "reproduce/002.yaml": ("ood", 3),
    "reproduce/004.yaml": ("ood", 3),
    "reproduce/xiao2020.yaml": ("ood", 2),
    "ood/coupling_flows_tiny.yaml": ("ood", 4),
    "ood/coupling_flows_suite.yaml": ("ood", 8),
    "ood/coupling_flows_paper.yaml": ("ood", 4),
    "ood/coupling_variants_tiny.yaml": ("ood", 14),
    "ood/negative_training_tiny.yaml": ("ood", 4),
    "ood/feature_flow_tiny.yaml": ("ood", 4),
    "ood/rgb_lid_likelihood.yaml": ("ood", 2),
    # seed 000's own file names, thin files over ours (extends)
    "ood/grayscale_ID_vs_likelihood.yaml": ("ood", 4),
    "ood/rgb_ID_vs_likelihood.yaml": ("ood", 2),
    "ood/rgb_likelihoods_comparison.yaml": ("ood", 32),
    "ood/grayscale_sampling.yaml": ("ood", 4),
    "ood/rgb_sampling.yaml": ("ood", 2),
    "ood/grayscale_rho_r_trend.yaml": ("ood", 4),
    "ood/rgb_rho_r_trend.yaml": ("ood", 2),
    "ood/grayscale_complexity.yaml": ("ood", 4),
    "ood/rgb_complexity.yaml": ("ood", 2),
    "ood/grayscale_ratios.yaml": ("ood", 4),
    "ood/rgb_ratios.yaml": ("ood", 2),
    "ood/grayscale_JEM_vol.yaml": ("ood", 4),
    "ood/rgb_JEM_vol.yaml": ("ood", 2),
    "training/colorful_flows.yaml": ("train", 16),
    "training/grayscale_background_flows.yaml": ("train", 36),
    "training/colorful_background_flows.yaml": ("train", 36),
}


def test_the_seed_sweep_names_are_thin_files_that_score_what_the_seed_experiment_plots():
    """Every sweep seed 000's README names (listed here: the seeds are not part of a clone) exists under its name."""
    named = ["ood/rgb_ID_vs_likelihood.yaml", "ood/grayscale_ID_vs_likelihood.yaml", "ood/rgb_likelihoods_comparison.yaml",
             "ood/rgb_sampling.yaml", "ood/grayscale_sampling.yaml", "ood/rgb_rho_r_trend.yaml",
             "ood/grayscale_rho_r_trend.yaml", "ood/rgb_complexity.yaml", "ood/grayscale_complexity.yaml",
             "ood/rgb_ratios.yaml", "ood/grayscale_ratios.yaml", "ood/rgb_JEM_vol.yaml", "ood/grayscale_JEM_vol.yaml",
             "training/colorful_flows.yaml", "training/grayscale_flows.yaml", "training/colorful_background_flows.yaml",
             "training/grayscale_background_flows.yaml"]
    for rel in named:
        assert (ROOT / "meta_configurations" / rel).exists(), rel
        assert rel in SHIPPED, rel
    scores = lambda rel: {s for r in mc.expand(mc.load(ROOT / "meta_configurations" / rel)) for s in r.config["ood"]["scores"]}
    for kind in ("grayscale", "rgb"):
        assert {"lid", "log_likelihood"} <= scores(f"ood/{kind}_ID_vs_likelihood.yaml")
        assert "fast_lidl" in scores(f"ood/{kind}_rho_r_trend.yaml")
        assert {"sampled_rho_r", "fast_lidl"} <= scores(f"ood/{kind}_sampling.yaml")
        assert "complexity" in scores(f"ood/{kind}_complexity.yaml")
        assert "likelihood_ratio" in scores(f"ood/{kind}_ratios.yaml")
        assert "derivative_norm" in scores(f"ood/{kind}_JEM_vol.yaml")


def test_extends_merges_base_config_and_replaces_the_rest(tmp_path):
    (tmp_path / "parent.yaml").write_text("""
project: p
sweep_name: parent
job: ood
base_config: {preset: flow_tabular, ood: {scores: [log_likelihood], n_ood: 64}}
sweep_configuration:
  run: {seed: {sweep: true, values: [0, 1]}}
""")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("""
extends: ../parent.yaml
sweep_name: child
base_config: {ood: {scores: [log_likelihood, complexity]}}
""")
    meta = mc.load(tmp_path / "sub" / "child.yaml")
    runs = mc.expand(meta)
    assert meta.raw["sweep_name"] == "child" and len(runs) == 2
    assert all(r.config["ood"]["scores"] == ["log_likelihood", "complexity"] and r.config["ood"]["n_ood"] == 64 for r in runs)
    assert mc.describe_axes(meta) == "seed: 0, 1"
    # a child's sweep_configuration replaces the parent's whole: the parent's seed axis is gone, and create says so
    (tmp_path / "sub" / "grandchild.yaml").write_text("""
extends: child.yaml
sweep_configuration:
  ood: {n_ood: {sweep: true, sweep_identifier: n, values: [16, 32, 48, 64, 80]}}
""")
    meta = mc.load(tmp_path / "sub" / "grandchild.yaml")
    assert len(mc.expand(meta)) == 5 and mc.describe_axes(meta) == "n: 16, 32, 48, 64, ... (5 values)"
    assert mc.describe_axes(mc.parse({"base_config": {}, "sweep_configuration": {}, "job": "ood"})) == "no axes (one run)"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        mc.load(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*does not exist"):
        mc.load(tmp_path / "c.yaml")


@pytest.mark.parametrize("rel", sorted(SHIPPED))
def test_every_shipped_meta_configuration_expands(rel):
    meta = mc.load(ROOT / "meta_configurations" / rel)
    job, n = SHIPPED[rel]
    runs = mc.expand(meta)
    assert meta.job == job and len(runs) == n
    assert len({r.name for r in runs}) == n and len({r.digest for r in runs}) == n
    if rel == "ood/demo_tiny.yaml":
        from genood import runconfig
        pairs = [(r.config["data"]["in_distribution"], runconfig.ood_sets(r.config["data"]["ood"])) for r in runs]
        assert [(i, [n for n, g in sets if g == "real"]) for i, sets in pairs] == [("fmnist", ["mnist"]), ("mnist", ["fmnist"])]
        assert all({g for _, g in sets} == {"real", "transform", "far"} for _, sets in pairs)
        assert all(r.config["model"]["coupling"] == "rq_nsf" and r.config["preset"] == "flow_rq_nsf_tiny" for r in runs)
        assert all("lid" in r.config["ood"]["scores"] and r.config["lid"]["n_per_split"] == 16
                   and r.config["lid"]["in_splits"] == ["in_val", "in_test"] for r in runs)
    if rel == "training/grayscale_flows.yaml":
        assert {r.config["data"]["in_distribution"] for r in runs} == {"fmnist", "mnist", "kmnist", "emnist", "omniglot"}


def test_shipped_files_are_all_listed():
    found = {p.relative_to(ROOT / "meta_configurations").as_posix() for p in (ROOT / "meta_configurations").rglob("*.yaml")}
    assert found == set(SHIPPED)


@pytest.mark.parametrize("rel", sorted(SHIPPED))
def test_wandb_flattening_round_trips_exactly(rel):
    path = ROOT / "meta_configurations" / rel
    meta = mc.load(path)
    flat = wandb_backend.sweep_config(meta, f"meta_configurations/{rel}")
    assert flat["method"] == "grid"
    expanded = {r.name: r.config for r in mc.expand(meta)}
    for choice in mc.choices(meta):
        params = {k: v["value"] if "value" in v else v["values"][choice[k]] for k, v in flat["parameters"].items()}
        _, cfg, name = wandb_backend.config_from_wandb(params, ROOT)
        assert expanded[name] == cfg


def test_wandb_backend_fails_fast_without_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(wandb_backend.WandbUnavailable, match="wandb login"):
        wandb_backend.create(mc.load(ROOT / "meta_configurations/ood/demo_tiny.yaml"), "meta_configurations/ood/demo_tiny.yaml")
