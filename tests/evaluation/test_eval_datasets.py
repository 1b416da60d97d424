"""Named evaluation sets from the data folder, the run's held-out prompts, and the errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.config import EvalConfig
from rlaif.evaluation.datasets import DataError, load_eval_prompts, load_named_set, set_path
from rlaif.records import PromptItem
from rlaif.store import ArtifactStore, StoreError, write_jsonl


def test_xstest_draw_is_balanced_and_seeded(packaged_data: Path) -> None:
    prompts = load_named_set("xstest", packaged_data, "dev", 10, seed=0)
    assert [p.kind for p in prompts].count("safe_lookalike") == 5
    assert [p.kind for p in prompts].count("harmful") == 5
    assert all(p.id.startswith("xstest:xstest-") and p.dataset == "xstest" for p in prompts)
    assert load_named_set("xstest", packaged_data, "dev", 10, seed=0) == prompts
    assert load_named_set("xstest", packaged_data, "dev", 10, seed=1) != prompts


def test_every_named_set_loads_with_its_kind(packaged_data: Path) -> None:
    kinds = {"red_team": {"red_team"}, "helpful": {"helpful"}, "advbench": {"harmful"}}
    for name, expected in kinds.items():
        prompts = load_named_set(name, packaged_data, "dev", 3, seed=0)
        assert len(prompts) == 3 and {p.kind for p in prompts} == expected
    assert load_named_set("red_team", packaged_data, "dev", 1, seed=0)[0].axes == ("harmless",)


def test_missing_data_dir_and_missing_files_say_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set RLAIF_DATA_DIR"):
        set_path(None, "xstest_prompts", "dev", "eval.extra_sets 'xstest'")
    with pytest.raises(DataError, match=r"xstest_prompts\.test\.jsonl does not exist"):
        load_named_set("xstest", tmp_path, "test", 4, seed=0)
    with pytest.raises(DataError, match="unknown evaluation set"):
        load_named_set("../etc/passwd", tmp_path, "dev", 4, seed=0)


def test_bad_lines_are_named(tmp_path: Path) -> None:
    (tmp_path / "advbench_behaviors.dev.jsonl").write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"advbench_behaviors\.dev\.jsonl:2: prompt"):
        load_named_set("advbench", tmp_path, "dev", 4, seed=0)
    (tmp_path / "xstest_prompts.dev.jsonl").write_text('{"prompt": "x", "label": "maybe", "id": "q"}\n')
    with pytest.raises(DataError, match="label must be 'safe' or 'unsafe', got 'maybe'"):
        load_named_set("xstest", tmp_path, "dev", 4, seed=0)
    (tmp_path / "red_team_prompts.dev.jsonl").write_text("not json\n")
    with pytest.raises(DataError, match=r"red_team_prompts\.dev\.jsonl:1: invalid JSON"):
        load_named_set("red_team", tmp_path, "dev", 4, seed=0)


def test_heldout_prompts_come_first_then_the_named_sets(tmp_path: Path, packaged_data: Path) -> None:
    store = ArtifactStore(tmp_path)
    cfg = EvalConfig(extra_sets=["advbench"], prompts_per_set=2, max_prompts=1)
    with pytest.raises(StoreError, match="eval_prompts.jsonl does not exist"):
        load_eval_prompts(store, "run1", cfg, packaged_data, seed=0)
    write_jsonl(
        store.path("run1", "inputs", "eval_prompts.jsonl"),
        [PromptItem(id="a", prompt="Hi"), PromptItem(id="b", prompt="Yo")],
    )
    prompts = load_eval_prompts(store, "run1", cfg, packaged_data, seed=0)
    assert [p.dataset for p in prompts] == ["heldout", "advbench", "advbench"]
    assert prompts[0].id == "heldout:a" and prompts[0].axes == ("harmless", "helpful")
