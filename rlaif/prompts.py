"""Prompt sets: load JSONL (or a JSON list), validate, de-duplicate, split into train and held-out prompts."""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Iterable
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


def normalise(prompt: str) -> str:
    """De-duplication key: NFKC, straight quotes, collapsed whitespace, lower case, no trailing ' .?!'."""
    text = unicodedata.normalize("NFKC", prompt)
    text = text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.rstrip(" .?!")


def prompt_id(prompt: str) -> str:
    return "p-" + hashlib.sha1(normalise(prompt).encode("utf-8")).hexdigest()[:12]


def parse_prompt_items(rows: Iterable[Any], source: str = "<request>") -> tuple[list[PromptItem], int]:
    """Validated, de-duplicated prompts from rows (`{"prompt": ..., "id"?: ...}` or plain strings).

    Returns (items, number of duplicates dropped). Raises PromptSetError listing every bad row.
    """
    items: list[PromptItem] = []
    problems: list[str] = []
    seen_keys: set[str] = set()
    seen_ids: set[str] = set()
    duplicates = 0
    for number, row in enumerate(rows, start=1):
        if number > MAX_PROMPTS:
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
        seen_keys.add(key)
        seen_ids.add(item_id)
        items.append(PromptItem(id=item_id, prompt=text))
        if len(problems) > 100:
            break
    if problems:
        raise PromptSetError(source, problems)
    if not items:
        raise PromptSetError(source, [f"{source}: no prompts"])
    return items, duplicates


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Prompts from a .jsonl file (one object per line) or a .json list."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows: list[Any] = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PromptSetError(str(path), [f"{path}:{number}: <line>: invalid JSON: {exc.msg}"]) from None
    items, _ = parse_prompt_items(rows, source=str(path))
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
