"""genood: likelihood-based out-of-distribution detection with deep generative models, run at sweep scale.

Subpackages: ``data`` (datasets and derived OOD sets), ``models`` (density-model families), ``ood`` (scores,
LID, detectors, the runner), ``orchestration`` (sweeps, agents, stores, launchers), ``reports`` (tables,
figures, report.html); modules ``runconfig``, ``rundir``, ``tracking``; ``commands`` holds the command lines.
"""
__version__ = "0.1.0"
