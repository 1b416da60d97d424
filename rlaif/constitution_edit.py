"""Principle-level edits and diffs of constitutions: what `PATCH /v1/constitutions/{id}`, its `/diff` route and
`rlaif constitutions diff` run.

An edit is a list of changes applied in order: add a principle (at the end or after another), replace one (by
its id), remove one, or set its tags. The result is rendered as YAML and goes through the same loader as an
upload (`parse_constitution`), so a patched version meets every rule and limit an uploaded one does, and its
problems read the same way (`<patched>:line: field: message`, lines of the rendered document).

    rlaif constitutions diff harmless my-harmless.yaml
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rlaif.constitution import Constitution, ConstitutionError, Principle, PrincipleId, Tag, parse_constitution

PRINCIPLE_FIELDS = ("tags", "critique", "revision", "comparison")  # what a changed principle may differ in
OTHER_FIELDS = ("name", "description", "critique_examples", "comparison_examples")


class AddPrinciple(BaseModel):
    """Add a principle whose id the constitution does not have yet."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["add"]
    principle: Principle = Field(description="The new principle.")
    after: PrincipleId | None = Field(default=None, description="Insert it after this principle; null: at the end.")


class ReplacePrinciple(BaseModel):
    """Replace the principle that has this principle's id (all its fields)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["replace"]
    principle: Principle = Field(description="The principle that takes the place of the one with its id.")


class RemovePrinciple(BaseModel):
    """Remove a principle (critique examples that name it then make the result invalid)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["remove"]
    id: PrincipleId = Field(description="Id of the principle to remove.")


class SetTags(BaseModel):
    """Set the tags of a principle."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["tags"]
    id: PrincipleId = Field(description="Id of the principle.")
    tags: list[Tag] = Field(min_length=1, description="Its new tags (replacing the old ones).")


PrincipleEdit = Annotated[AddPrinciple | ReplacePrinciple | RemovePrinciple | SetTags, Field(discriminator="op")]


class ChangedPrinciple(BaseModel):
    """A principle both versions have (same id), with different contents."""

    id: str
    fields: list[str] = Field(description="Which of tags, critique, revision and comparison differ.")
    before: Principle
    after: Principle


class ConstitutionDelta(BaseModel):
    """What changed from one constitution to another, principle by principle."""

    added: list[Principle] = Field(description="Principles only the newer version has, in its order.")
    removed: list[Principle] = Field(description="Principles only the older version has, in its order.")
    changed: list[ChangedPrinciple] = Field(description="Principles of both versions whose contents differ.")
    reordered: bool = Field(description="The principles both versions have are in a different order.")
    other_changes: list[str] = Field(
        description="Other top-level fields that differ: name, description, critique_examples, comparison_examples."
    )

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.reordered or self.other_changes)


def _unknown(principle_id: str, ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
    return f"no principle {principle_id!r} (the constitution has {shown})"


def apply_edits(
    constitution: Constitution, changes: Sequence[PrincipleEdit], source: str = "<patched>"
) -> Constitution:
    """The constitution with `changes` applied in order, validated by the loader; or ConstitutionError.

    A change naming a principle that is not there (or adding one that is) is reported as `changes[i].field:
    message`, every such change at once; otherwise the result's own problems are the loader's, with `source`.
    """
    principles = [principle.model_dump() for principle in constitution.principles]
    problems: list[str] = []
    for index, change in enumerate(changes):
        ids = [principle["id"] for principle in principles]
        where = f"changes[{index}]"
        if isinstance(change, AddPrinciple):
            if change.principle.id in ids:
                problems.append(f"{where}.principle.id: principle {change.principle.id!r} exists already (replace it)")
            elif change.after is not None and change.after not in ids:
                problems.append(f"{where}.after: {_unknown(change.after, ids)}")
            else:
                position = len(principles) if change.after is None else ids.index(change.after) + 1
                principles.insert(position, change.principle.model_dump())
            continue
        target, field = (
            (change.principle.id, "principle.id") if isinstance(change, ReplacePrinciple) else (change.id, "id")
        )
        if target not in ids:
            problems.append(f"{where}.{field}: {_unknown(target, ids)}")
            continue
        at = ids.index(target)
        if isinstance(change, ReplacePrinciple):
            principles[at] = change.principle.model_dump()
        elif isinstance(change, RemovePrinciple):
            del principles[at]
        else:
            principles[at] = {**principles[at], "tags": list(change.tags)}
    if problems:
        raise ConstitutionError(source, problems)
    document = {**constitution.model_dump(), "principles": principles}
    # One line per field (no folding), so the loader's line numbers point at one field each.
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1 << 30)
    return parse_constitution(text, source=source)


def diff_constitutions(old: Constitution | None, new: Constitution) -> ConstitutionDelta:
    """The principles `new` adds, removes and changes relative to `old` (None: an empty one, so all are added)."""
    before = {principle.id: principle for principle in old.principles} if old is not None else {}
    after = {principle.id: principle for principle in new.principles}
    changed = [
        ChangedPrinciple(
            id=principle.id,
            fields=[
                name for name in PRINCIPLE_FIELDS if getattr(before[principle.id], name) != getattr(principle, name)
            ],
            before=before[principle.id],
            after=principle,
        )
        for principle in new.principles
        if principle.id in before and before[principle.id] != principle
    ]
    return ConstitutionDelta(
        added=[principle for principle in new.principles if principle.id not in before],
        removed=[principle for principle in old.principles if principle.id not in after] if old is not None else [],
        changed=changed,
        reordered=[pid for pid in before if pid in after] != [pid for pid in after if pid in before],
        other_changes=[name for name in OTHER_FIELDS if old is not None and getattr(old, name) != getattr(new, name)],
    )
