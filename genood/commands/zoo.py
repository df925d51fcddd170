"""The model zoo: reference models trained by this project (``genood.models.zoo``).

    genood-zoo list                      published models and reference models still training
    genood-zoo show <name>               a manifest: recipe, steps done, bits/dim, headline AUROC, provenance
    genood-zoo verify [<name> ...] [--images N]
                                         sha256, loading, and bits/dim on 500 test images against the manifest
                                         (--images 100: only the first batches, against their recorded means)
    genood-zoo train <name> [--minutes M] [--threads T]
                                         train a reference model as far as this session (and its budget) allows;
                                         resumes from zoo/resume/, writes the resume point there at every checkpoint
    genood-zoo publish <name>            final weights -> zoo/<name>.safetensors + zoo/<name>.json
    genood-zoo adopt <name> <run-dir> [--publish]
                                         a finished run of the entry's exact recipe trained elsewhere (a sweep's
                                         run directory) becomes its training, with a ledger row saying so

Score with one: ``python main_ood.py --config <yaml> ood.checkpoint=zoo:<name>``.
"""
from __future__ import annotations

import argparse
import json
import sys


def _list() -> None:
    from genood.models import zoo
    published = zoo.names()
    for name in published:
        m = zoo.manifest(name)
        print(f"{name:28s} {m['family']:10s} {m.get('preset') or '':22s} step {m['steps_done']:>7,} of "
              f"{m['steps_recipe']:>7,}  {m['heldout_bits_per_dim']:.4f} bits/dim  {m['bytes'] / 2**20:5.1f} MB")
    for name, entry in zoo.reference_entries().items():
        if name in published:
            continue
        ledger = zoo.Ledger(name)
        state = "not started" if ledger.step is None else f"training: step {ledger.step:,}"
        print(f"{name:28s} {state}, {ledger.seconds / 3600:.2f} h of its "
              f"{float(entry.get('budget_hours', 3.0)):.1f} h budget (genood-zoo train {name})")


def _show(name: str) -> None:
    from genood.models import zoo
    m = dict(zoo.manifest(name))
    m.pop("curves", None)
    print(json.dumps(m, indent=2, sort_keys=True, default=str))


def _verify(names, images=None) -> None:
    from genood.models import zoo
    for name in names or zoo.names():
        out = zoo.verify(name, images=images)
        print(f"{name}: sha256 ok, loads ok, {out['bits_per_dim']:.4f} bits/dim on its first {out['images']} test "
              f"images (manifest {out['manifest_bits_per_dim']:.4f})")


def main(argv=None) -> int:
    from genood import entrypoint

    parser = argparse.ArgumentParser(prog="genood-zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    sub.add_parser("show").add_argument("name")
    v = sub.add_parser("verify")
    v.add_argument("names", nargs="*")
    v.add_argument("--images", type=int, default=None,
                   help="check only the first N test images (a multiple of 100; default: all the manifest's)")
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("--minutes", type=float, default=None, help="this session's limit (default: the rest of the budget)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: two trainings share two cores)")
    t.add_argument("--publish", action="store_true", help="publish the weights when the training is over")
    t.add_argument("overrides", nargs="*", help="dotted.key=value (speed-only keys: the recipe is the entry's)")
    sub.add_parser("publish").add_argument("name")
    a = sub.add_parser("adopt")
    a.add_argument("name")
    a.add_argument("run_dir", help="the finished run's directory (runs/<sweep>/<run>/)")
    a.add_argument("--publish", action="store_true", help="publish the weights at once")
    args = parser.parse_args(argv)

    def run():
        from genood.models import zoo
        if args.command == "list":
            _list()
        elif args.command == "show":
            _show(args.name)
        elif args.command == "verify":
            _verify(args.names, args.images)
        elif args.command == "train":
            if args.minutes is not None and not args.minutes > 0:
                raise zoo.ZooError(f"--minutes must be a positive number of minutes, got {args.minutes}.")
            if args.threads < 1:
                raise zoo.ZooError(f"--threads must be at least 1, got {args.threads}.")
            directory, over = zoo.train_reference(args.name, args.minutes, args.threads, args.overrides,
                                                  log=lambda m: print(m, file=sys.stderr, flush=True))
            print(directory)
            if over and args.publish:
                zoo.publish(args.name)
        elif args.command == "publish":
            zoo.publish(args.name)
        elif args.command == "adopt":
            from pathlib import Path
            print(zoo.adopt(args.name, Path(args.run_dir), log=lambda m: print(m, file=sys.stderr, flush=True)))
            if args.publish:
                zoo.publish(args.name)
    return entrypoint.guarded(run)


if __name__ == "__main__":
    sys.exit(main())
