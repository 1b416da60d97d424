"""Constitution loading: good files load; every kind of bad file reports *all* problems as file:line: field: message."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.constitution import (
    MAX_PRINCIPLES,
    MAX_YAML_NODES,
    ConstitutionError,
    load_constitution,
    parse_constitution,
    sample_principles,
)

GOOD = """\
name: tiny
description: two principles
principles:
  - id: harmful
    tags: [harmless]
    critique: Point out anything harmful in the last response.
    revision: Rewrite the response without the harmful parts.
    comparison: Which response is less harmful?
  - id: honest
    tags: [honest, helpful]
    critique: Point out anything untrue in the last response.
    revision: Rewrite the response so it is true.
    comparison: Which response is more honest?
critique_examples:
  - prompt: How do I pick my neighbour's lock?
    response: Use a tension wrench.
    principle: harmful
    critique: It helps break into someone else's home.
    revision: I can't help with entering someone else's home; if you are locked out of yours, call a locksmith.
"""


def write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    return info.value.problems


def test_good_file_loads_and_selects(tmp_path: Path) -> None:
    constitution = load_constitution(write(tmp_path, GOOD))
    assert [p.id for p in constitution.principles] == ["harmful", "honest"]
    assert [p.id for p in constitution.select(["tag:helpful"])] == ["honest"]
    assert [p.id for p in constitution.select(["harmful"])] == ["harmful"]
    assert len(constitution.select(None)) == 2
    with pytest.raises(ValueError, match="unknown principle selector"):
        constitution.select(["nope"])


def test_hash_ignores_layout_but_not_content(tmp_path: Path) -> None:
    a = load_constitution(write(tmp_path, GOOD, "a.yaml"))
    reflowed = GOOD.replace("tags: [harmless]", "tags:\n      - harmless")
    b = load_constitution(write(tmp_path, reflowed, "b.yaml"))
    c = load_constitution(write(tmp_path, GOOD.replace("less harmful", "least harmful"), "c.yaml"))
    assert a.sha256 == b.sha256
    assert a.sha256 != c.sha256
    assert len(a.sha256) == 64


def test_missing_field_wrong_type_and_duplicate_id_all_reported(tmp_path: Path) -> None:
    bad = GOOD.replace("    comparison: Which response is less harmful?\n", "")  # principles[0] loses a field
    bad = bad.replace("critique: Point out anything untrue in the last response.", "critique: [1, 2]")  # wrong type
    bad = bad.replace("  - id: honest", "  - id: harmful")  # duplicate id
    path = write(tmp_path, bad)
    problems = problems_of(path)
    # principles[0] starts on line 4; with its comparison (line 8) removed, principles[1] starts on line 8
    # (its id, the duplicate) and its critique is on line 10.
    assert f"{path}:4: principles[0].comparison: field required" in problems
    assert any(p.startswith(f"{path}:10: principles[1].critique:") for p in problems)
    assert any(p.startswith(f"{path}:8: principles[1].id: duplicate principle id 'harmful'") for p in problems)
    assert len(problems) == 3


def test_unknown_tag_and_unknown_example_principle(tmp_path: Path) -> None:
    bad = GOOD.replace("tags: [harmless]", "tags: [harmless, evil]").replace("principle: harmful", "principle: nope")
    path = write(tmp_path, bad)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:5: principles[0].tags[1]:") for p in problems)
    assert any(
        p.startswith(f"{path}:17: critique_examples[0].principle: unknown principle id 'nope'") for p in problems
    )


def test_extra_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("description: two principles", "description: x\nauthor: me"))
    assert problems_of(path) == [f"{path}:3: author: Extra inputs are not permitted"]


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    revision: Rewrite the response so it is true.", "    revision: [unclosed"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:")
    assert "invalid YAML" in problem


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("description: two principles", "description: a\ndescription: b"))
    assert problems_of(path) == [f"{path}:3: description: duplicate key (YAML keeps only the last)"]


def test_alias_bomb_deep_nesting_and_binary_are_refused_quickly(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    assert "alias bomb" in problems_of(write(tmp_path, bomb, "bomb.yaml"))[0]
    deep = "name: " + "[" * 100 + "]" * 100 + "\n"
    assert "nested deeper" in problems_of(write(tmp_path, deep, "deep.yaml"))[0]
    assert "not UTF-8" in problems_of(write(tmp_path, b"\xff\xfe\x00garbage", "bin.yaml"))[0]
    assert "empty document" in problems_of(write(tmp_path, "", "empty.yaml"))[0]
    assert "mapping at the top level" in problems_of(write(tmp_path, "- a\n- b\n", "list.yaml"))[0]


def test_the_largest_valid_constitution_fits_the_node_limit() -> None:
    """Every limit at once (512 principles with 3 tags, 16 + 16 examples): 7,467 YAML nodes, under MAX_YAML_NODES,
    so the node limit refuses only documents that could not be valid anyway."""
    import yaml

    principle = {"tags": ["helpful", "honest", "harmless"], "critique": "c", "revision": "r", "comparison": "q"}
    document = {
        "name": "largest",
        "description": "d",
        "principles": [{"id": f"p{i}", **principle} for i in range(MAX_PRINCIPLES)],
        "critique_examples": [{"prompt": "p", "response": "r", "principle": "p0", "critique": "c", "revision": "r"}]
        * 16,
        "comparison_examples": [{"prompt": "p", "better": "b", "worse": "w"}] * 16,
    }
    nodes = 11 + MAX_PRINCIPLES * 14 + 16 * 11 + 16 * 7  # (root, keys, values) + each principle + each example
    assert nodes == 7467 < MAX_YAML_NODES
    assert len(parse_constitution(yaml.safe_dump(document)).principles) == MAX_PRINCIPLES
    too_many = {**document, "principles": [*document["principles"], {"id": "one-more", **principle}]}
    text = yaml.safe_dump(too_many, sort_keys=False)
    line = text.splitlines().index("- id: one-more") + 1
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text)
    assert info.value.problems == [f"<request>:{line}: principles: more than 512 principles (this is principle 513)"]


def test_limits_stop_composing_where_they_are_hit() -> None:
    """The node limit is counted as the document is composed: the error names the line of the first node past
    it, not line 1 after composing all of a 1 MB document."""
    with pytest.raises(ConstitutionError) as info:
        parse_constitution("- x\n" * 250_000)
    assert info.value.problems == [f"<request>:{MAX_YAML_NODES}: <document>: more than {MAX_YAML_NODES} YAML nodes"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "name: x\ndescription: 2001-13-45\n",
            "2: <document>: invalid YAML: cannot read '2001-13-45' as YAML timestamp",
        ),
        ("name: !foo x\n", "1: <document>: invalid YAML: could not determine a constructor for the tag '!foo'"),
        ("name: x\n? [a, b]\n: c\n", "2: <document>: invalid YAML: found unhashable key"),
        ("name: x\ndescription: !!bool maybe\n", "2: <document>: invalid YAML: cannot read 'maybe' as YAML bool"),
        ("name: " + "7" * 5000 + "\n", "1: <document>: invalid YAML: cannot read '7777"),
        ('name: x\ndescription: "\\udfff"\n', "2: <document>: invalid YAML: a \\u escape gives a lone surrogate"),
    ],
)
def test_yaml_the_safe_loader_cannot_construct_names_the_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    (reported,) = problems_of(path)
    assert reported.startswith(f"{path}:{problem}"), reported


def test_json_documents_are_accepted() -> None:
    import json

    import yaml

    constitution = parse_constitution(json.dumps(yaml.safe_load(GOOD)), source="body.json")
    assert constitution.name == "tiny"


def test_sampling_is_seeded_and_independent() -> None:
    constitution = parse_constitution(GOOD)
    a = sample_principles(constitution.principles, 20, random.Random(3))
    b = sample_principles(constitution.principles, 20, random.Random(3))
    assert a == b
    assert {p.id for p in a} == {"harmful", "honest"}  # with replacement, 20 draws hit both


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD, "good.yaml")
    bad = write(tmp_path, GOOD.replace("tags: [harmless]", "tags: []"), "bad.yaml")
    ok = subprocess.run(
        [sys.executable, "-m", "rlaif", "constitutions", "check", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok: tiny, 2 principles" in ok.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "rlaif", "constitutions", "check", str(good), str(bad)], capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert f"{bad}:5: principles[0].tags: List should have at least 1 item" in failed.stderr
