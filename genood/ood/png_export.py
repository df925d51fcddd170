"""PNG export of plotly figures in a child process, so a Chromium that hangs can be killed.

kaleido drives a headless Chromium; now and then (seen under CPU contention) it never answers and the call waits
forever, which would hold a finished run hostage to its pictures. :func:`export` writes each figure's JSON to a
temporary folder, renders them in ``python -m genood.ood.png_export <spec>`` started in a session of its own, and
on a deadline kills that child's process tree (it and its Chromium, which runs in a session of its own) and tries
once more. The child reads only the JSON
files this process wrote (plotly's figure schema: data, never code).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

BASE_TIMEOUT_S = 120.0       # an attempt's deadline: Chromium's start ...
PER_FIGURE_TIMEOUT_S = 20.0  # ... and this much more a figure (a figure takes about a second here)
ATTEMPTS = 2


last_child = None  # the pid (and session id) of the last export child: the root of what a timeout kills


class PngTimeout(RuntimeError):
    """Chromium did not finish the PNGs in time (the child and its browser were killed)."""


def live_processes() -> Iterator[Tuple[int, List[str]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ...) of every live,
    not zombie, process (Linux)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                yield int(entry.name), fields


def process_tree(pid: int) -> List[int]:
    """``pid`` and every live descendant of it (read from /proc; Linux). Chromium's launcher starts the browser in a
    session of its own, so the child's session alone does not hold it."""
    children: Dict[int, List[int]] = {}
    for child, fields in live_processes():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kill_tree(pid: int) -> None:
    """Kill the export child's process tree (its browser included) and its session."""
    tree = process_tree(pid) if Path("/proc").is_dir() else [pid]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _attempt(spec_path: Path, deadline: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "genood.ood.png_export", str(spec_path)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    global last_child
    last_child = proc.pid
    try:
        _, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)  # the child, the Chromium it started (in a session of the browser's own) and the rest
        proc.communicate()
        raise PngTimeout(f"Chromium did not render the PNGs within {deadline:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (err or "").splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"the PNG export exited with status {proc.returncode}")


def export(figs: Sequence[object], targets: Sequence[Path], sizes: Sequence[Tuple[int, int]],
           timeout: float | None = None, attempts: int = ATTEMPTS) -> None:
    """Render ``figs`` to the PNG files ``targets`` at ``sizes`` (width, height). Raises PngTimeout when every
    attempt ran out of time, RuntimeError with the child's last error line when it failed (e.g. no Chromium)."""
    deadline = float(timeout) if timeout is not None else BASE_TIMEOUT_S + PER_FIGURE_TIMEOUT_S * len(figs)
    with tempfile.TemporaryDirectory(prefix="genood-png-") as tmp:
        spec: List[Dict[str, object]] = []
        for i, (fig, target, (w, h)) in enumerate(zip(figs, targets, sizes)):
            src = Path(tmp) / f"figure{i}.json"
            src.write_text(fig.to_json())
            spec.append({"figure": str(src), "png": str(target), "width": int(w), "height": int(h)})
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for left in range(int(attempts), 0, -1):
            try:
                return _attempt(spec_path, deadline)
            except PngTimeout:
                if left == 1:
                    raise


def main(argv=None) -> int:
    """The child: render the figures the spec file lists."""
    import plotly.io as pio
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    try:
        pio.write_images([pio.read_json(s["figure"]) for s in spec], [s["png"] for s in spec],
                         width=[s["width"] for s in spec], height=[s["height"] for s in spec])
    except Exception as exc:  # no Chromium, or kaleido failed: one line for the parent's warning
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
