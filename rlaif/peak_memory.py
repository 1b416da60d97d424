"""Peak resident memory of a stage, for the stage result (`extra["peak_rss_mb"]`) and `rlaif compare`.

`resource.getrusage(RUSAGE_SELF).ru_maxrss` is the peak of the whole process since it started, so in a worker
process that runs one stage after another it would charge a small stage with the peak of a big one before it.
On Linux the peak (VmHWM) can be reset: writing 5 to /proc/self/clear_refs sets it to the current RSS, so
`reset_peak_rss()` at the start of a stage and `peak_rss_mb()` at its end measure that stage alone. Elsewhere
(macOS) it falls back to ru_maxrss, the peak since the process started (an upper bound).

    from rlaif.peak_memory import records_peak_rss

    @records_peak_rss          # the returned StageResult gets extra["peak_rss_mb"]
    def run_stage(...) -> StageResult: ...
"""

from __future__ import annotations

import functools
import re
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from rlaif.stages import StageResult

PEAK_RSS_KEY = "peak_rss_mb"  # in StageResult.extra (or metrics): what rlaif compare shows per stage
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

P = ParamSpec("P")


def reset_peak_rss() -> bool:
    """Set this process's peak RSS to its current RSS (Linux); False where the peak cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: since the last reset_peak_rss() on Linux, since the start
    of the process elsewhere."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match is not None:
        return int(match.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # (bytes on macOS, KiB on Linux)


def records_peak_rss(run: Callable[P, StageResult]) -> Callable[P, StageResult]:
    """Decorate a function that runs a stage: its StageResult gets extra["peak_rss_mb"], the stage's own peak."""

    @functools.wraps(run)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> StageResult:
        reset_peak_rss()
        result = run(*args, **kwargs)
        result.extra[PEAK_RSS_KEY] = round(peak_rss_mb(), 1)
        return result

    return wrapper
