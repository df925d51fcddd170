"""OOD scores, metrics and the runner that turns a configuration into a run directory."""
