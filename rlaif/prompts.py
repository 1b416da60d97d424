"""Prompt sets: load JSONL (or a JSON list), validate, de-duplicate, split into train and held-out prompts."""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlaif.records import PromptItem

MAX_PROMPT_CHARS = 8000
MAX_PROMPTS = 100_000


class PromptSetError(ValueError):
    """Every problem found in a prompt set, each naming the line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


# A "\ud800" escape in JSON decodes to a lone surrogate: a str that cannot be encoded as UTF-8 (so not hashed,
# stored or sent), refused with its line instead.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NESTED = 100  # a failed parse that ran out of stack is reported where nesting passes this many levels
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings (skipped) and brackets


def json_problem(text: str, exc: ValueError | RecursionError, start: int = 0) -> tuple[int, str]:
    """(1-based line, reason) of a failed `json.loads(text)` or `raw_decode(text, start)`.

    A JSONDecodeError carries both. The two other ways json fails carry no position, so the line is found by a
    scan that stops at the culprit: nesting past the interpreter's recursion limit (RecursionError), and an
    integer longer than Python's int digit limit (a ValueError, 4300 digits by default).
    """
    if isinstance(exc, json.JSONDecodeError):
        return exc.lineno, exc.msg
    position, reason = start, str(exc)
    if isinstance(exc, RecursionError):
        depth, reason = 0, "nested too deeply"
        for match in _JSON_TOKENS.finditer(text, start):
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(match.group(), 0)
            if depth > _NESTED:
                position = match.start()
                break
    elif "integer string conversion" in reason:
        limit = sys.get_int_max_str_digits()
        found = re.compile(rf"\d{{{limit + 1},}}").search(text, start)
        position = found.start() if found else start
        reason = f"a number longer than {limit} digits"
    return text.count("\n", 0, position) + 1, reason


def normalise(prompt: str) -> str:
    """De-duplication key: NFKC, straight quotes, collapsed whitespace, lower case, no trailing ' .?!'."""
    text = unicodedata.normalize("NFKC", prompt)
    text = text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.rstrip(" .?!")


def prompt_id(prompt: str) -> str:
    return "p-" + hashlib.sha1(normalise(prompt).encode("utf-8")).hexdigest()[:12]


def parse_prompt_items(
    rows: Iterable[Any], source: str = "<request>", lines: Sequence[int] | None = None
) -> tuple[list[PromptItem], int]:
    """Validated, de-duplicated prompts from rows (`{"prompt": ..., "id"?: ..., "kind"?: ...}` or plain strings).

    Returns (items, number of duplicates dropped). Raises PromptSetError listing every bad row, each by its
    line in `lines` (a JSONL file's, where blank lines are skipped) or else by its position.
    """
    items: list[PromptItem] = []
    problems: list[str] = []
    seen_keys: set[str] = set()
    seen_ids: set[str] = set()
    duplicates = 0
    for position, row in enumerate(rows, start=1):
        number = lines[position - 1] if lines is not None else position
        if position > MAX_PROMPTS:
            problems.append(f"{source}: more than {MAX_PROMPTS} prompts")
            break
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            problems.append(f"{source}:{number}: prompt: expected an object with a string 'prompt'")
            continue
        text = row["prompt"].strip()
        if not text:
            problems.append(f"{source}:{number}: prompt: empty prompt")
            continue
        if len(text) > MAX_PROMPT_CHARS:
            problems.append(f"{source}:{number}: prompt: longer than {MAX_PROMPT_CHARS} characters")
            continue
        if _SURROGATE.search(text):
            problems.append(f"{source}:{number}: prompt: a \\u escape gives a lone surrogate, which is not text")
            continue
        key = normalise(text)
        if key in seen_keys:
            duplicates += 1
            continue
        item_id = str(row.get("id") or prompt_id(text))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", item_id):
            problems.append(f"{source}:{number}: id: {item_id[:40]!r} is not a valid id (letters, digits, _.:-)")
            continue
        if item_id in seen_ids:
            problems.append(f"{source}:{number}: id: duplicate id {item_id!r} for a different prompt")
            continue
        kind = row.get("kind", "harmful")
        if kind not in ("harmful", "helpful"):
            problems.append(f"{source}:{number}: kind: {str(kind)[:40]!r} is not 'harmful' or 'helpful'")
            continue
        seen_keys.add(key)
        seen_ids.add(item_id)
        items.append(PromptItem(id=item_id, prompt=text, kind=kind))
        if len(problems) > 100:
            break
    if problems:
        raise PromptSetError(source, problems)
    if not items:
        raise PromptSetError(source, [f"{source}: no prompts"])
    return items, duplicates


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Prompts from a .jsonl file (one object per line) or a .json list; errors name the file and line."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PromptSetError(str(path), [f"{path}:{line}: <document>: not UTF-8 text (byte {exc.start})"]) from None
    lines: list[int] | None = None
    if path.suffix == ".json":
        try:
            rows: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:
            line, reason = json_problem(text, exc)
            raise PromptSetError(str(path), [f"{path}:{line}: <document>: invalid JSON: {reason}"]) from None
        if not isinstance(rows, list):
            raise PromptSetError(str(path), [f"{path}:1: <document>: expected a JSON list of prompts"])
    else:
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as exc:
                reason = json_problem(line, exc)[1]
                raise PromptSetError(str(path), [f"{path}:{number}: <line>: invalid JSON: {reason}"]) from None
            lines.append(number)
    items, _ = parse_prompt_items(rows, source=str(path), lines=lines)
    return items[:limit] if limit else items


def split_holdout(items: list[PromptItem], fraction: float, seed: int) -> tuple[list[PromptItem], list[PromptItem]]:
    """(train, held-out): a seeded split by id, so the same prompt set always splits the same way."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = sorted(items, key=lambda item: item.id)
    random.Random(seed).shuffle(order)
    n_holdout = max(1, round(len(order) * fraction))
    held = {item.id for item in order[:n_holdout]}
    return [i for i in items if i.id not in held], [i for i in items if i.id in held]
