"""rlaif/peak_memory.py: a stage's own peak RSS in its StageResult, also when an earlier stage in the same
process used more (Linux resets the peak through /proc/self/clear_refs)."""

from __future__ import annotations

import mmap
import sys

import pytest

from rlaif.peak_memory import PEAK_RSS_KEY, peak_rss_mb, records_peak_rss, reset_peak_rss
from rlaif.stages import StageResult

MIB = 2**20


@records_peak_rss
def _big_stage(mib: int) -> StageResult:
    # An anonymous mapping of its own, unmapped when it is closed: malloc may keep a freed bytearray in its heap
    # (its mmap threshold grows after earlier large frees in a long test session), and then RSS never drops.
    with mmap.mmap(-1, mib * MIB) as block:
        for offset in range(0, len(block), 4096):  # touch every page, so it is resident
            block[offset] = 1
        size = len(block)
    return StageResult(stage="big", counts={"bytes": size})


@records_peak_rss
def _small_stage() -> StageResult:
    return StageResult(stage="small")


def test_the_result_carries_the_stage_peak() -> None:
    big = _big_stage(160)
    assert big.stage == "big" and big.counts == {"bytes": 160 * MIB}  # the result itself is untouched
    assert big.extra[PEAK_RSS_KEY] >= 160  # at least the block it held
    assert peak_rss_mb() >= big.extra[PEAK_RSS_KEY] - 1  # (the peak so far includes it until the next reset)


@pytest.mark.skipif(sys.platform != "linux", reason="the peak can be reset on Linux only")
def test_a_later_small_stage_is_not_charged_with_the_earlier_peak() -> None:
    big = _big_stage(160)
    small = _small_stage()
    assert reset_peak_rss()
    # the block was freed when the big stage returned: the small stage's peak is the RSS without it
    assert small.extra[PEAK_RSS_KEY] <= big.extra[PEAK_RSS_KEY] - 100
