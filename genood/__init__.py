"""genood: likelihood-based out-of-distribution detection with deep generative models, run at sweep scale.

Subpackages: ``data`` (datasets and derived OOD sets), ``models`` (density-model families), ``ood`` (scores,
LID, detectors, the runner), ``orchestration`` (sweeps, agents, stores, launchers), ``reports`` (tables,
figures, report.html); modules ``runconfig``, ``rundir``, ``tracking``; ``commands`` holds the command lines;
``api`` is the Python API, its names available here (``genood.open_model``, ``genood.score``, ...).
"""
__version__ = "0.1.0"

# The Python API (genood.api), re-exported lazily: ``import genood`` stays light, and a submodule importing a
# sibling through the package never pulls the whole API in.
_API = ("Model", "Scores", "Run", "open_model", "load_dataset", "score", "metrics", "histogram", "open_run",
        "run_ood", "open_sweep", "zoo_models")
__all__ = ["__version__", "Model", "Scores", "Run", "open_model", "load_dataset", "score", "metrics", "histogram",
           "open_run", "run_ood", "open_sweep", "zoo_models"]


def __getattr__(name):
    if name in _API:
        from genood import api
        return getattr(api, name)
    raise AttributeError(f"module 'genood' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
