"""Sweeps: meta-configuration expansion, the local SQLite backend, W&B sweeps, agents."""
