"""Train a density model on the train split of ``data.in_distribution``; resumable.

    python train.py --config configurations/train_fmnist_rq_nsf_tiny.yaml [dotted.key=value ...]

Writes ``<runs_root>/<sweep_id>/<run-name>/`` with config.yaml, checkpoint.pt (model,
optimizer, schedule, step), figures/samples.png and run.log. Rerunning the same command
after a crash resumes from the last checkpoint.
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
        from genood.models.training import run_training

        cfg = runconfig.load(args.config, args.overrides)
        print(run_training(cfg))

    return entrypoint.guarded(job)


if __name__ == "__main__":
    sys.exit(main())
