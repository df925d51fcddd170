"""Peak memory of the current process, for the benchmarks."""
from __future__ import annotations

import resource


def peak_mb() -> float:
    """This process's peak resident memory in MB (VmHWM). Unlike ru_maxrss, it is not inherited across exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
