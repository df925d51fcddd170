"""Command-line pieces shared by ``python -m genood.reports.aggregate`` and ``python -m genood.reports.report``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genood.reports.collect import run_dirs_under
from genood.reports.suite import selection_tokens

__all__ = ["parse_roots"]


def parse_roots(prog: str, doc: str, out_help: str, argv=None):
    """``(args, run directories)`` of a command taking folders of runs and ``--out``; None after a clear
    error when a folder does not exist."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--select-on", action="append", metavar="GROUPS_OR_SETS",
                        help="choose one label-free detector on these OOD groups or sets (comma-separated) and report it "
                             "on every other set (default with an OOD suite: near,corruption; shifts are never selected on)")
    args = parser.parse_args(argv)
    args.select_on = selection_tokens(args.select_on)
    missing = [r for r in args.roots if not r.exists()]
    if missing:
        print(f"error: {missing[0]} does not exist; give a folder holding run directories (e.g. runs/demo).", file=sys.stderr)
        return None
    return args, run_dirs_under(args.roots)
