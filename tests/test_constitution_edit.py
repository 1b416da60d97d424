"""Principle-level edits and diffs (rlaif/constitution_edit.py) and `rlaif constitutions diff`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from rlaif.constitution import ConstitutionError, Principle, load_constitution, parse_constitution
from rlaif.constitution_edit import PrincipleEdit, apply_edits, diff_constitutions

REPO = Path(__file__).resolve().parent.parent
MINIMAL = REPO / "constitutions" / "minimal.yaml"
KIND = {
    "id": "kind",
    "tags": ["helpful"],
    "critique": "Identify anything unkind in the assistant's last response.",
    "revision": "Rewrite the assistant's response to be kind.",
    "comparison": "Which of these assistant responses is kinder?",
}
EDITS = TypeAdapter(list[PrincipleEdit])


def edit(*changes: dict) -> list[PrincipleEdit]:
    return EDITS.validate_python(list(changes))


def test_edits_apply_in_order_and_the_result_is_what_the_loader_makes() -> None:
    base = load_constitution(MINIMAL)
    patched = apply_edits(
        base,
        edit(
            {"op": "add", "principle": KIND},
            {"op": "tags", "id": "kind", "tags": ["helpful", "harmless"]},  # (sees the principle added before it)
            {"op": "remove", "id": "helpful"},
            {"op": "replace", "principle": {**KIND, "id": "honest", "tags": ["honest"]}},
        ),
    )
    assert [(p.id, p.tags) for p in patched.principles] == [
        ("harmful", ["harmless"]),
        ("honest", ["honest"]),
        ("kind", ["helpful", "harmless"]),
    ]
    assert patched.principle("honest").critique == KIND["critique"]
    assert patched.critique_examples == base.critique_examples
    assert patched.sha256 == parse_constitution(yaml.safe_dump(patched.model_dump())).sha256
    # Inserted after a given principle; an edit that changes nothing gives the same version.
    after = apply_edits(base, edit({"op": "add", "principle": KIND, "after": "harmful"}))
    assert [p.id for p in after.principles] == ["harmful", "kind", "honest", "helpful"]
    same = apply_edits(base, edit({"op": "tags", "id": "honest", "tags": list(base.principle("honest").tags)}))
    assert same.sha256 == base.sha256


def test_changes_naming_no_principle_are_all_reported() -> None:
    base = load_constitution(MINIMAL)
    with pytest.raises(ConstitutionError) as info:
        apply_edits(base, edit({"op": "remove", "id": "nope"}, {"op": "add", "principle": {**KIND, "id": "honest"}}))
    assert info.value.problems == [
        "changes[0].id: no principle 'nope' (the constitution has harmful, honest, helpful)",
        "changes[1].principle.id: principle 'honest' exists already (replace it)",
    ]


def test_an_invalid_result_gets_the_loaders_errors_with_lines() -> None:
    base = load_constitution(MINIMAL)
    with pytest.raises(ConstitutionError) as info:
        apply_edits(base, edit({"op": "remove", "id": "harmful"}), source="<patched>")
    (problem,) = info.value.problems
    line = int(problem.split(":")[1])
    rendered = yaml.safe_dump(
        {**base.model_dump(), "principles": [p.model_dump() for p in base.principles[1:]]},
        sort_keys=False,
        allow_unicode=True,
        width=1 << 30,
    ).splitlines()
    assert problem == f"<patched>:{line}: critique_examples[0].principle: unknown principle id 'harmful'"
    assert rendered[line - 1].strip() == "principle: harmful"  # the line is that of the field at fault


def test_diff_lists_added_removed_changed_and_the_rest() -> None:
    base = load_constitution(MINIMAL)
    honest = base.principle("honest")
    new = base.model_copy(
        update={
            "description": "edited",
            "principles": [
                Principle(**KIND),
                honest.model_copy(update={"tags": ["honest", "helpful"], "critique": "Anything false?"}),
                base.principle("harmful"),
            ],
        }
    )
    delta = diff_constitutions(base, new)
    assert [p.id for p in delta.added] == ["kind"]
    assert [p.id for p in delta.removed] == ["helpful"]
    assert [(c.id, c.fields, c.before, c.after.id) for c in delta.changed] == [
        ("honest", ["tags", "critique"], honest, "honest")
    ]
    assert (delta.reordered, delta.other_changes, delta.empty) == (True, ["description"], False)
    assert diff_constitutions(base, base).empty
    assert [p.id for p in diff_constitutions(None, base).added] == ["harmful", "honest", "helpful"]


def test_cli_diff_of_files_and_shipped_names(tmp_path: Path) -> None:
    document = yaml.safe_load(MINIMAL.read_text())
    document["principles"][1]["tags"] = ["honest", "helpful"]
    document["principles"].append(KIND)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(document, sort_keys=False))

    def diff(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "rlaif", "constitutions", "diff", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO)

    changed = diff("minimal", str(edited))
    assert changed.returncode == 1, changed.stderr  # as diff: 1 when they differ
    assert changed.stdout.splitlines()[1:] == ["+ kind [helpful]", "~ honest: tags"]
    as_json = json.loads(diff("minimal", str(edited), "--json").stdout)
    assert [p["id"] for p in as_json["added"]] == ["kind"] and as_json["changed"][0]["fields"] == ["tags"]
    same = diff("minimal", str(MINIMAL))
    assert (same.returncode, same.stdout.count("\n")) == (0, 1)  # only the header line
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nprinciples: []\n")
    invalid = diff("minimal", str(broken))
    assert invalid.returncode == 2
    assert f"{broken}:2: principles: List should have at least 1 item" in invalid.stderr
    unknown = diff("minimal", "no-such-constitution")
    assert unknown.returncode == 2 and "no constitution 'no-such-constitution'" in unknown.stderr
