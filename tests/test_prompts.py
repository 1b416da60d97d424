"""Prompt sets: validation names the line, duplicates are dropped, the held-out split is seeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.prompts import PromptSetError, load_prompts, normalise, parse_prompt_items, split_holdout


def test_dedupe_by_normalised_text() -> None:
    items, dropped = parse_prompt_items(["How are you?", {"prompt": "how are   you"}, "Tell me a joke."])
    assert [i.prompt for i in items] == ["How are you?", "Tell me a joke."]
    assert dropped == 1
    assert normalise("\u201cHi\u201d  there!") == '"hi" there'


def test_every_bad_row_is_reported() -> None:
    with pytest.raises(PromptSetError) as info:
        parse_prompt_items([{"prompt": ""}, {"text": "x"}, {"prompt": "ok", "id": "../etc"}, "fine"], source="s.jsonl")
    assert info.value.problems == [
        "s.jsonl:1: prompt: empty prompt",
        "s.jsonl:2: prompt: expected an object with a string 'prompt'",
        "s.jsonl:3: id: '../etc' is not a valid id (letters, digits, _.:-)",
    ]


def test_duplicate_ids_for_different_prompts() -> None:
    with pytest.raises(PromptSetError, match="duplicate id 'a'"):
        parse_prompt_items([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])


def test_jsonl_file_with_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(PromptSetError, match=r"p\.jsonl:2: <line>: invalid JSON"):
        load_prompts(path)


def test_holdout_split_is_seeded_and_disjoint() -> None:
    items, _ = parse_prompt_items([f"prompt number {i}" for i in range(20)])
    train, held = split_holdout(items, 0.25, seed=1)
    _, again_held = split_holdout(list(reversed(items)), 0.25, seed=1)
    assert len(held) == 5 and len(train) == 15
    assert {i.id for i in held} == {i.id for i in again_held}
    assert not {i.id for i in train} & {i.id for i in held}
    assert split_holdout(items, 0.0, seed=1) == (items, [])
