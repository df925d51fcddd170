"""Score in-distribution, OOD and generated samples with a density model; write the run directory.

    python main_ood.py --config configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml [dotted.key=value ...]

Trains the model first when no checkpoint exists (ood.checkpoint unset), resuming a
partial one.
"""
from __future__ import annotations

import argparse
import sys

from genood import entrypoint
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run configuration YAML (see configurations/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.steps=200")
    args = parser.parse_args(argv)

    def job():
        from genood import runconfig
        from genood.ood.runner import run_ood

        cfg = runconfig.load(args.config, args.overrides)
        directory = run_ood(cfg)
        print(directory)

    return entrypoint.guarded(job)


if __name__ == "__main__":
    sys.exit(main())
