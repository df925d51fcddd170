"""The command lines behind train.py, main_ood.py and sweep.py (and the genood-* console commands)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict

__all__ = ["config_command"]


def config_command(doc: str, argv, job: Callable[[Dict[str, Any]], Any]) -> int:
    """``--config <yaml> [dotted.key=value ...]``: load and resolve the configuration, run ``job(cfg)`` and print what
    it returns (the run directory); known problems end in one sentence (:func:`genood.entrypoint.guarded`)."""
    from genood import entrypoint

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run configuration YAML (see configurations/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.steps=200")
    args = parser.parse_args(argv)

    def run():
        from genood import runconfig

        print(job(runconfig.load(args.config, args.overrides)))
    return entrypoint.guarded(run)
