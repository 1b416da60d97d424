"""`rlaif watch` / `submit --watch` / `demo` without a terminal: plain lines, one per stage transition, and a
progress line at most every 10 s (the live bars exist only on a TTY)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from rlaif.cli import service


def _run(*stages: tuple[str, str, int, int | None, float | None]) -> dict[str, Any]:
    """A run as GET /v1/runs/{id} returns it (the fields the watcher reads)."""
    return {
        "stages": [
            {"name": n, "status": st, "done": d, "total": t, "seconds": sec, "shards_done": 0, "shards_total": 0,
             "attempts": 1}
            for n, st, d, t, sec in stages
        ]
    }  # fmt: skip


def test_plain_lines_print_each_transition_once_and_throttle_progress(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: clock[0])
    view = service.PlainLines(every_s=10.0)
    view.show(_run(("critique", "running", 0, 6, 0.0), ("sft", "pending", 0, None, None)))
    for second in range(1, 10):  # polled every second: no new line before 10 s have passed
        clock[0] = 100.0 + second
        view.show(_run(("critique", "running", second // 3, 6, float(second)), ("sft", "pending", 0, None, None)))
    clock[0] = 111.0
    view.show(_run(("critique", "running", 4, 6, 11.0), ("sft", "pending", 0, None, None)))
    clock[0] = 112.0
    view.show(_run(("critique", "succeeded", 6, 6, 12.0), ("sft", "running", 0, 4, 0.0)))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[0:00] stage critique: running 0s",
        "[0:00] stage critique: 0/6 done, 0:00 elapsed",
        "[0:11] stage critique: 4/6 done, 0:11 elapsed",
        "[0:12] stage critique: succeeded 12s",
        "[0:12] stage sft: running 0s",
    ]
    assert all(re.match(r"^\[\d+:\d\d\] ", line) for line in lines)
