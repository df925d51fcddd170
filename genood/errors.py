"""Exceptions that several layers raise and catch, kept below all of them (no imports of ours): a configuration
rule in genood.models and the configuration loader in genood.runconfig share :class:`ConfigError` without
importing each other."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration problem, phrased as one sentence for the user."""
