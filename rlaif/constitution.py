"""Constitutions: the principles a run critiques, revises and judges by.

A constitution is a YAML (or JSON) document; `constitutions/README.md` documents the format.
`load_constitution()` validates it with pydantic and reports *every* problem at once as
`file:line: field: message`, mapping each pydantic error location back to the YAML node it came from.
Each constitution has a content SHA-256 (of its canonical JSON), so a run pins the exact version it used.

    rlaif constitutions check constitutions/*.yaml
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

Tag = Literal["helpful", "honest", "harmless"]
PrincipleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]

MAX_CONSTITUTION_BYTES = 1_000_000
# Every valid constitution has fewer nodes than this: one at every limit (512 principles with 3 tags each,
# 16 + 16 examples) has 7,467 (tests/test_constitution.py builds it). Composing costs some 25 us a node, so
# the limit is also what bounds the time a hostile document can take: about a quarter of a second.
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 32
MAX_PRINCIPLES = 512


class Principle(BaseModel):
    """One principle: how to critique and revise under it (SL-CAI), and how to judge by it (RL-CAI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: PrincipleId = Field(
        description="Stable identifier, unique within the constitution (lower-case, digits, - and _)."
    )
    tags: list[Tag] = Field(min_length=1, description="Which of helpful/honest/harmless the principle is about.")

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError(f"duplicate tags in {tags}")
        return tags

    critique: Text = Field(description="Critique request: asks the model to point out what is wrong with its answer.")
    revision: Text = Field(description="Revision request: asks the model to rewrite its answer to fix the critique.")
    comparison: Text = Field(
        description="Comparison question for the judge, e.g. 'Which response is less harmful?'. "
        "The options (A) and (B) are appended by the judge."
    )


class CritiqueExample(BaseModel):
    """A worked critique-and-revision example, prepended as few-shot context (Bai et al. 2022, sec. 3.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Text = Field(description="The user's request.")
    response: Text = Field(description="The assistant's first answer.")
    principle: PrincipleId = Field(description="Id of the principle whose critique and revision requests were used.")
    critique: Text = Field(description="The critique written under that principle.")
    revision: Text = Field(description="The revised answer.")


class ComparisonExample(BaseModel):
    """A worked judge example: a prompt with a better and a worse response (few-shot context for the judge)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Text = Field(description="The user's request.")
    better: Text = Field(description="The response the judge should prefer.")
    worse: Text = Field(description="The response the judge should not prefer.")


class Constitution(BaseModel):
    """A named set of principles with optional few-shot examples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = Field(
        description="Short name of the constitution."
    )
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] = Field(
        default="", description="What the constitution is for."
    )
    principles: list[Principle] = Field(min_length=1, max_length=MAX_PRINCIPLES, description="The principles.")
    critique_examples: list[CritiqueExample] = Field(
        default_factory=list, max_length=16, description="Few-shot critique-and-revision examples."
    )
    comparison_examples: list[ComparisonExample] = Field(
        default_factory=list, max_length=16, description="Few-shot examples for the judge."
    )

    @model_validator(mode="after")
    def _check_ids(self) -> Constitution:
        errors = _cross_reference_problems(self.model_dump())
        if errors:
            # A ValueError's message becomes one pydantic error; the loader splits it back per field.
            raise ValueError("\n".join(errors))
        return self

    @property
    def sha256(self) -> str:
        """Content hash of the canonical JSON form: equal for equal content whatever the YAML layout."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def principle(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise KeyError(f"constitution {self.name!r} has no principle {principle_id!r}")

    def select(self, selectors: Sequence[str] | None) -> list[Principle]:
        """Principles matching any selector: a principle id, or `tag:<tag>`. None or empty selects all."""
        if not selectors:
            return list(self.principles)
        ids = {p.id for p in self.principles}
        tags = {"helpful", "honest", "harmless"}
        unknown = [s for s in selectors if not (s in ids or (s.startswith("tag:") and s[4:] in tags))]
        if unknown:
            raise ValueError(
                f"unknown principle selector(s) {unknown} for constitution {self.name!r}: "
                f"use a principle id ({', '.join(sorted(ids)[:5])}, ...) or tag:helpful|honest|harmless"
            )
        chosen = [p for p in self.principles if p.id in selectors or any(f"tag:{t}" in selectors for t in p.tags)]
        if not chosen:
            raise ValueError(f"selectors {list(selectors)} match no principle of constitution {self.name!r}")
        return chosen


def _cross_reference_problems(data: Any) -> list[str]:
    """Duplicate principle ids and examples naming unknown principles, as 'field: message' lines.

    Works on raw (possibly invalid) data too, so the loader can report these alongside field errors.
    """
    if not isinstance(data, dict):
        return []
    principles = data.get("principles") if isinstance(data.get("principles"), list) else []
    examples = data.get("critique_examples") if isinstance(data.get("critique_examples"), list) else []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for index, principle in enumerate(principles):
        pid = principle.get("id") if isinstance(principle, dict) else None
        if not isinstance(pid, str):
            continue
        if pid in seen:
            errors.append(f"principles[{index}].id: duplicate principle id {pid!r} (first at principles[{seen[pid]}])")
        seen.setdefault(pid, index)
    for index, example in enumerate(examples):
        ref = example.get("principle") if isinstance(example, dict) else None
        if isinstance(ref, str) and seen and ref not in seen:
            errors.append(f"critique_examples[{index}].principle: unknown principle id {ref!r}")
    return errors


def sample_principles(principles: Sequence[Principle], k: int, rng: random.Random) -> list[Principle]:
    """k principles drawn independently (with replacement), as the paper samples one per round or label."""
    if not principles:
        raise ValueError("cannot sample from an empty list of principles")
    return [rng.choice(list(principles)) for _ in range(k)]


class ConstitutionError(ValueError):
    """Every problem found in one constitution document, each as `source:line: field: message`."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------- loading with line numbers


class _LimitError(yaml.YAMLError):
    """A limit hit while composing: reported as `source:line: field: message`, not as invalid YAML."""

    def __init__(self, field: str, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.field, self.message, self.mark = field, message, mark


# A "\ud800" escape in a double-quoted scalar gives a lone surrogate: a str that cannot be encoded as UTF-8
# (so not hashed, stored or sent), refused with its line instead.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs, absurd nesting and oversized documents while composing them.

    PyYAML's composer recurses once per nesting level, so `[[[[...` thousands deep would end in a
    RecursionError. Composing is also slow (pure Python, some 25 us a node): a 1 MB list of 490k items took
    13 s and 270 MB when the nodes were counted only once the whole document was composed. So depth, node
    count (an alias counts as the whole subtree it repeats, as it will once constructed) and the number of
    principles are checked here, as each node is composed, and composing stops at the first limit hit.
    Every error a value's construction raises (a timestamp like 2001-13-45, an over-long integer) becomes a
    YAMLError at that node's line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[object] = []  # key or index of each node being composed, from the root down
        self._nodes = 0
        self._expanded: dict[str, int] = {}  # anchor -> nodes in its subtree (aliases in it expanded)

    def _count(self, nodes: int, mark: yaml.Mark, alias: bool) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            why = ", counting aliases expanded (an alias bomb?)" if alias else ""
            raise _LimitError("<document>", f"more than {MAX_YAML_NODES} YAML nodes{why}", mark)

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            # (An alias to a node still being composed counts 1: the walk in _compose_checked bounds its cycle.)
            self._count(self._expanded.get(event.anchor, 1), event.start_mark, alias=True)
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        self._path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            if len(self._path) > MAX_YAML_DEPTH:
                raise _LimitError("<document>", f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
            if len(self._path) == 3 and self._path[1] == "principles" and self._path[2] == MAX_PRINCIPLES:
                message = f"more than {MAX_PRINCIPLES} principles (this is principle {MAX_PRINCIPLES + 1})"
                raise _LimitError("principles", message, event.start_mark)
            self._count(1, event.start_mark, alias=False)
            before = self._nodes
            node = super().compose_node(parent, index)  # type: ignore[arg-type]
            if event.anchor is not None:  # type: ignore[attr-defined]
                self._expanded[event.anchor] = self._nodes - before + 1  # type: ignore[attr-defined]
            return node
        finally:
            self._path.pop()

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode) and _SURROGATE.search(node.value):
            raise yaml.constructor.ConstructorError(
                None, None, "a \\u escape gives a lone surrogate, which is not text", node.start_mark
            )
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # SafeConstructor raises ValueError, KeyError, AttributeError... on bad scalars
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            value = node.value[:40] if isinstance(node, yaml.ScalarNode) else "this node"
            # (The message of the int digit limit goes on with advice for the server's code: cut it there.)
            reason = str(exc).partition("; use sys.set_int_max_str_digits")[0] if isinstance(exc, ValueError) else ""
            problem = f"cannot read {value!r} as YAML {kind}" + (f": {reason}" if reason else "")
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """`source:line: field: message` for an error of the loader (a limit, a syntax or a construction error)."""
    if isinstance(exc, _LimitError):
        return f"{source}:{exc.mark.line + 1}: {exc.field}: {exc.message}"
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{source}:{line}: <document>: invalid YAML: {problem}"


def _compose_checked(loader: _BoundedLoader, source: str) -> yaml.Node | None:
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise ConstitutionError(source, [_yaml_problem(exc, source)]) from None
    if node is None:
        return None
    # Walk the node graph counting nodes *with* alias expansion: composing counted them already, but an
    # alias inside its own anchor makes a cycle, which this walk cuts at the depth or node limit.
    count = 0
    duplicates: list[tuple[int, str]] = []
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConstitutionError(
                source, [f"{source}:1: <document>: more than {MAX_YAML_NODES} YAML nodes (alias bomb?)"]
            )
        if depth > MAX_YAML_DEPTH:
            line = current.start_mark.line + 1
            raise ConstitutionError(
                source, [f"{source}:{line}: <document>: nested deeper than {MAX_YAML_DEPTH} levels"]
            )
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        line = key.start_mark.line + 1
                        duplicates.append(
                            (line, f"{source}:{line}: {key.value}: duplicate key (YAML keeps only the last)")
                        )
                    keys.add(key.value)
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
    if duplicates:
        raise ConstitutionError(source, [message for _, message in sorted(duplicates)])
    return node


def line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int:
    """1-based line of the YAML node at pydantic location `loc` (the deepest existing ancestor)."""
    if node is None:
        return 1
    current = node
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            for key, value in current.value:
                if key.value == part:
                    child = value
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(current.value):
            child = current.value[part]
        if child is None:
            break
        current = child
    return current.start_mark.line + 1


def format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<document>"


def _parse_loc(path: str) -> list[int | str]:
    """Inverse of _format_loc for messages raised by our own validators ("principles[3].id")."""
    loc: list[int | str] = []
    for chunk in path.replace("]", "").split("."):
        name, *indices = chunk.split("[")
        if name:
            loc.append(name)
        loc.extend(int(i) for i in indices)
    return loc


def _problems(exc: ValidationError, node: yaml.Node | None, source: str) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        loc = list(error["loc"])
        message = error["msg"]
        if error["type"] == "value_error" and ": " in message:
            # Our model validator packs several "field: message" lines into one ValueError.
            for line in message.removeprefix("Value error, ").splitlines():
                field, _, text = line.partition(": ")
                sub_loc = loc + _parse_loc(field)
                problems.append(f"{source}:{line_of(node, sub_loc)}: {format_loc(sub_loc)}: {text}")
            continue
        if error["type"] == "missing":
            message = "field required"
        problems.append(f"{source}:{line_of(node, loc)}: {format_loc(loc)}: {message}")
    return problems


def parse_constitution(text: str | bytes, source: str = "<request>") -> Constitution:
    """Validate a constitution document (YAML or JSON, which is YAML) and return it, or raise ConstitutionError."""
    if isinstance(text, bytes):
        if len(text) > MAX_CONSTITUTION_BYTES:
            raise ConstitutionError(source, [f"{source}:1: <document>: larger than {MAX_CONSTITUTION_BYTES} bytes"])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConstitutionError(
                source, [f"{source}:1: <document>: not UTF-8 text ({exc.reason} at byte {exc.start})"]
            ) from None
    if len(text) > MAX_CONSTITUTION_BYTES:
        raise ConstitutionError(source, [f"{source}:1: <document>: larger than {MAX_CONSTITUTION_BYTES} characters"])
    if "\x00" in text:
        raise ConstitutionError(source, [f"{source}:1: <document>: contains NUL bytes (binary file?)"])
    loader = _BoundedLoader(text)
    try:
        node = _compose_checked(loader, source)
        if node is None:
            raise ConstitutionError(source, [f"{source}:1: <document>: empty document"])
        try:
            data: Any = loader.construct_document(node)  # (the composed node: the text is parsed once)
        except yaml.YAMLError as exc:
            raise ConstitutionError(source, [_yaml_problem(exc, source)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConstitutionError(
            source, [f"{source}:{node.start_mark.line + 1}: <document>: expected a mapping at the top level"]
        )
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, node, source)
    # Field errors stop pydantic before the cross-reference check; run it on the raw data so that
    # *every* problem is reported in one go.
    for line in _cross_reference_problems(data):
        field, _, text = line.partition(": ")
        loc = _parse_loc(field)
        problem = f"{source}:{line_of(node, loc)}: {format_loc(loc)}: {text}"
        if problem not in problems:
            problems.append(problem)
    raise ConstitutionError(source, problems)


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a constitution file; errors name the file, line and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConstitutionError(str(path), [f"{path}:1: <document>: cannot read file: {exc.strerror}"]) from None
    return parse_constitution(raw, source=str(path))


def shipped_constitutions_dir() -> Path:
    """The `constitutions/` folder of this checkout (or the one named by RLAIF_CONSTITUTIONS_DIR)."""
    from rlaif.settings import settings

    return settings.constitutions_dir


def resolve_constitution(name_or_path: str) -> Path:
    """A shipped constitution by name ("harmless") or a path to a file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml", ".json"} and candidate.exists():
        return candidate
    folder = shipped_constitutions_dir()
    for suffix in (".yaml", ".yml", ".json"):
        shipped = folder / f"{name_or_path}{suffix}"
        if shipped.exists():
            return shipped
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise FileNotFoundError(f"no constitution {name_or_path!r}: not a file, and not one of the shipped {names}")
