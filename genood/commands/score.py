"""Score in-distribution, OOD and generated samples with a density model; write the run directory.

    python main_ood.py --config configurations/ood_fmnist_vs_mnist_rq_nsf_tiny.yaml [dotted.key=value ...]

Trains the model first when no checkpoint exists (ood.checkpoint unset), resuming a
partial one.
"""
from __future__ import annotations

import sys

from genood.commands import config_command


def _job(cfg):
    from genood.ood.runner import run_ood

    return run_ood(cfg)


def main(argv=None) -> int:
    return config_command(__doc__, argv, _job)


if __name__ == "__main__":
    sys.exit(main())
