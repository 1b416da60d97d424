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


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "p.jsonl",
            '{"prompt": "a"}\n\n' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "\n",
            "3: <line>: invalid JSON: nested too deeply",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "id": ' + "7" * 5000 + "}\n",
            "1: <line>: invalid JSON: a number longer than 4300 digits",
        ),
        ("p.jsonl", '{"prompt": "a"}\n\n{"prompt": "b \\ud800"}\n', "3: prompt: a \\u escape gives a lone surrogate"),
        ("p.json", '[\n"a",\n' + "[" * 50_000 + "]" * 50_000 + "\n]", "3: <document>: invalid JSON: nested too deeply"),
        ("p.json", '[\n"a",\n' + "7" * 5000 + "\n]", "3: <document>: invalid JSON: a number longer than 4300 digits"),
        ("p.json", '{"prompts": ["a"]}', "1: <document>: expected a JSON list of prompts"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "2: <document>: not UTF-8 text (byte 28)"),
    ],
)
def test_json_python_cannot_parse_names_file_and_line(
    tmp_path: Path, name: str, text: str | bytes, problem: str
) -> None:
    """What json.loads raises besides JSONDecodeError (RecursionError, the int digit limit), a lone surrogate
    and bytes that are not UTF-8: each a PromptSetError naming the file and line, as the CLI prints it."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PromptSetError) as info:
        load_prompts(path)
    (reported,) = info.value.problems
    assert reported.startswith(f"{path}:{problem}"), reported


def test_prompts_carry_a_kind_harmful_by_default() -> None:
    items, _ = parse_prompt_items(
        [{"prompt": "How do I pick a lock?"}, {"prompt": "Boil an egg?", "kind": "helpful"}, "Plain string?"]
    )
    assert [item.kind for item in items] == ["harmful", "helpful", "harmful"]
    with pytest.raises(PromptSetError, match=r"<request>:2: kind: 'friendly' is not 'harmful' or 'helpful'"):
        parse_prompt_items([{"prompt": "a"}, {"prompt": "b", "kind": "friendly"}])
