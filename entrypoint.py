"""Shared behaviour of the command-line entry points: known problems end in one sentence."""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(RuntimeError):
    """A problem with the user's input or environment, already phrased as one sentence."""


def guarded(job: Callable[[], None]) -> int:
    """Run ``job``; print known user-facing errors as one line (no traceback) and return an exit code."""
    from data.formats import FormatError
    from data.mirror import MirrorError
    from data.registry import DatasetNotFoundError, UnknownDatasetError
    from models.training import CheckpointError, TrainingDiverged
    from runconfig import ConfigError

    known = (UserError, ConfigError, DatasetNotFoundError, UnknownDatasetError, FormatError, MirrorError, CheckpointError, TrainingDiverged)
    try:
        job()
    except known as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyError as exc:  # unknown score names and the like carry a full sentence
        if exc.args and isinstance(exc.args[0], str) and " " in exc.args[0]:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130
    return 0
