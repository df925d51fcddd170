"""Train a density model on the train split of ``data.in_distribution``; resumable.

    python train.py --config configurations/train_fmnist_rq_nsf_tiny.yaml [dotted.key=value ...]

Writes ``<runs_root>/<sweep_id>/<run-name>/`` with config.yaml, checkpoint.pt (model,
optimizer, schedule, step), figures/samples.png and run.log. Rerunning the same command
after a crash resumes from the last checkpoint.
"""
from __future__ import annotations

import sys

from genood.commands import config_command


def _job(cfg):
    from genood.models.runs import run_training

    return run_training(cfg)


def main(argv=None) -> int:
    return config_command(__doc__, argv, _job)


if __name__ == "__main__":
    sys.exit(main())
