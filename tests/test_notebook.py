"""notebooks/hands_on_guide.ipynb as users run it: top to bottom on a real Jupyter kernel (nbclient + ipykernel),
committed without outputs, and its numbers for a zoo model equal to the command line's."""
import json
import time

import nbformat
import pytest

from genood.models import zoo
from tests.conftest import ROOT, needs_real_data

NOTEBOOK = ROOT / "notebooks" / "hands_on_guide.ipynb"
GUIDE_MODELS = ("flow_tiny_fmnist", "flow_tiny_mnist", "diffusion_tiny_fmnist", "hvae_fmnist", "pixelcnn_fmnist",
                "pixelcnn_fmnist_bg_mu0.2")


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 10
    assert all(c.outputs == [] and c.execution_count is None for c in code), \
        "clear the notebook's outputs before committing (jupyter nbconvert --clear-output --inplace <file>)"
    assert nb.metadata["kernelspec"]["name"] == "python3"


# the cell appended after the guide's own: the command line's run of the same configuration on a zoo model, then
# the same points through the API in the kernel the guide used
_CHECK = r'''
import json, subprocess, sys
from genood import runconfig
cli_root = {root!r}
out = subprocess.run([sys.executable, "main_ood.py", "ood.checkpoint=zoo:flow_tiny_fmnist", "data.in_distribution=fmnist",
                      "data.ood=mnist", "ood.scores=[log_likelihood,complexity]", "ood.n_in_train=50", "ood.n_in_val=100",
                      "ood.n_in_test=100", "ood.n_ood=100", "ood.n_generated=0", "ood.bootstrap=100", "ood.figures=false",
                      "tracking.wandb=false", f"run.runs_root={{cli_root}}"], capture_output=True, text=True, cwd={cwd!r})
assert out.returncode == 0, out.stderr[-2000:]
directory = next(p.parent for p in __import__("pathlib").Path(cli_root).glob("*/*/metrics.json"))
cli = genood.open_run(directory)
cfg = cli.config
pts = {{}}
for split, name, part in (("in_train", "fmnist", "train"), ("in_val", "fmnist", "train"), ("in_test", "fmnist", "test"),
                          ("ood", "mnist", "test")):
    index = cli.scores.loc[cli.scores["split"] == split, "index"].to_numpy()
    pts[split] = genood.load_dataset(name, part).images[index]
mine = genood.score(flow_f, pts, ["log_likelihood", "complexity"], config=cfg)
print(json.dumps({{"cli": cli.scores["log_likelihood"].tolist(), "api": mine.table["log_likelihood"].tolist(),
                  "cli_auroc": cli.metrics.set_index("detector").loc["log_likelihood", "auroc"],
                  "api_auroc": mine.metrics().set_index("detector").loc["log_likelihood", "auroc"]}}))
'''


@needs_real_data
@pytest.mark.skipif(any(not (zoo.zoo_dir() / f"{n}.safetensors").exists() for n in GUIDE_MODELS),
                    reason="the guide's zoo models are not published")
def test_the_notebook_runs_top_to_bottom_on_a_real_kernel_and_matches_the_command_line(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK.format(root=str(tmp_path / "cli"), cwd=str(ROOT))))
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}},
                            allow_errors=False)
    t0 = time.perf_counter()
    client.execute()  # any error in any cell raises CellExecutionError, naming the cell
    seconds = time.perf_counter() - t0
    print(f"notebook executed in {seconds:.0f} s")
    streams = [o for o in nb.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"]
    got = json.loads(streams[-1].text.strip().splitlines()[-1])
    assert got["api"] == pytest.approx(got["cli"], abs=1e-9) and len(got["api"]) == 350
    assert got["api_auroc"] == pytest.approx(got["cli_auroc"], abs=1e-12)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    # what `make docs` writes: the executed notebook as one HTML page (nbconvert), figures included
    from nbconvert import HTMLExporter
    page, _ = HTMLExporter().from_notebook_node(nb)
    assert page.count("Plotly.newPlot") >= 6 and "The likelihood paradox, in both directions" in page
    makefile = (ROOT / "Makefile").read_text()
    assert "nbconvert --to html --execute" in makefile and "notebooks/hands_on_guide.ipynb" in makefile
