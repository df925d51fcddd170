"""Shared behaviour of the command-line entry points: known problems end in one sentence."""
from __future__ import annotations

import sys
from typing import Callable

__all__ = ["EXIT_USER_ERROR", "UserError", "guarded"]

EXIT_USER_ERROR = 2


class UserError(RuntimeError):
    """A problem with the user's input or environment, already phrased as one sentence."""


def _known_errors() -> tuple:
    """User-facing error classes; torch-backed modules only count if the job imported them."""
    from genood.data.formats import FormatError
    from genood.data.mirror import MirrorError
    from genood.data.registry import DatasetNotFoundError, UnknownDatasetError
    from genood.rundir import DiskFull, RunLocked
    from genood.paths import UnsafeName
    from genood.runconfig import ConfigError

    known = [UserError, ConfigError, UnsafeName, DatasetNotFoundError, UnknownDatasetError, FormatError, MirrorError, RunLocked,
             DiskFull]
    for module, name in (("genood.orchestration.hostcheck", "SingleHostError"), ("genood.orchestration.store_postgres", "StoreUnreachable"),
                         ("genood.orchestration.resilient", "StoreOutage"), ("genood.orchestration.launch", "SubmissionFailed")):
        if module in sys.modules:
            known.append(getattr(sys.modules[module], name))
    training = sys.modules.get("genood.models.training")  # not imported eagerly: torch takes seconds to load
    if training is not None:
        known += [training.CheckpointError, training.TrainingDiverged]
    scores = sys.modules.get("genood.ood.scores")
    if scores is not None:
        known.append(scores.ScoreUnavailable)
    return tuple(known)


def guarded(job: Callable[[], None]) -> int:
    """Run ``job``; print known user-facing errors as one line (no traceback) and return an exit code."""
    try:
        job()
    except BrokenPipeError:  # the reader went away (`sweep.py status | head`): not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second complaint at exit
        return 0
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _known_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) and " " in exc.args[0]:
            print(f"error: {exc.args[0]}", file=sys.stderr)  # unknown score names and the like carry a sentence
            return EXIT_USER_ERROR
        raise
    return 0
