"""Preference sets: human comparisons ({prompt, chosen, rejected}) for the hybrid preference model.

Bai et al. 2022 (sec. 4.1) train the preference model on human comparisons for helpfulness and AI comparisons for
harmlessness. A preference set is uploaded once (POST /v1/preference-sets), validated and de-duplicated here with
the rules of prompt sets (rlaif/prompts.py: every problem named by its line and field, normalised duplicates
dropped and counted); a run that names one pins its items into `<run>/inputs/human_pairs.jsonl` when it is
created (`pin_preference_set`), so deleting or re-uploading the set never changes a run; the reward model stage
reads them back (`read_human_pairs`) and trains on them as hard labels beside the AI soft labels
(reward_model.human_mix).

    from rlaif.preference_sets import parse_preference_items
    items, duplicates = parse_preference_items([{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlaif.prompts import MAX_PROMPT_CHARS, PromptSetError, normalise
from rlaif.records import HumanPair
from rlaif.stages import HUMAN_PAIRS_FILE, INPUTS
from rlaif.store import ArtifactStore, read_jsonl, read_manifest, write_jsonl, write_manifest

MAX_PAIRS = 100_000  # as many as a prompt set holds prompts (rlaif.prompts.MAX_PROMPTS)
MAX_RESPONSE_CHARS = 16_000  # a response may be longer than a prompt; twice the prompt limit
MAX_PROBLEMS = 100  # rows reported before giving up: enough to see the pattern
FIELDS = ("prompt", "chosen", "rejected")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a "\ud800" escape decodes to a str that is not UTF-8 text


class PreferenceSetError(PromptSetError):
    """Every problem found in a preference set, each naming the line and the field."""


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """The id of a pair that gives none: from its normalised texts, so the same pair always gets the same id."""
    key = "\n".join(normalise(text) for text in (prompt, chosen, rejected))
    return "hp-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def _text_problem(value: Any, field: str) -> str | None:
    """Why `value` cannot be the row's `field` (None when it can)."""
    if not isinstance(value, str):
        return f"{field}: expected a string" if value is not None else f"{field}: missing"
    if not value.strip():
        return f"{field}: empty"
    limit = MAX_PROMPT_CHARS if field == "prompt" else MAX_RESPONSE_CHARS
    if len(value.strip()) > limit:
        return f"{field}: longer than {limit} characters"
    if _SURROGATE.search(value):
        return f"{field}: a \\u escape gives a lone surrogate, which is not text"
    return None


def parse_preference_items(
    rows: Iterable[Any], source: str = "<request>", lines: Sequence[int] | None = None
) -> tuple[list[HumanPair], int]:
    """Validated, de-duplicated human pairs from rows `{"prompt", "chosen", "rejected", "id"?}` (other keys, such as
    an annotator's notes, are ignored).

    Returns (items, number of duplicates dropped: the same three texts, normalised, as an earlier row). Raises
    PreferenceSetError listing every problem of every bad row as `<source>:<line>: <field>: <what>`, by its line in
    `lines` (a JSONL file's, where blank lines are skipped) or else by its position.
    """
    items: list[HumanPair] = []
    problems: list[str] = []
    bad_rows = 0
    seen_keys: set[tuple[str, str, str]] = set()
    seen_ids: set[str] = set()
    duplicates = 0
    for position, row in enumerate(rows, start=1):
        number = lines[position - 1] if lines is not None else position
        if position > MAX_PAIRS:
            problems.append(f"{source}: more than {MAX_PAIRS} pairs")
            break
        if not isinstance(row, dict):
            found = ["<line>: expected an object with string 'prompt', 'chosen' and 'rejected'"]
        else:
            found = [problem for field in FIELDS if (problem := _text_problem(row.get(field), field))]
        if not found:
            texts = [row[field].strip() for field in FIELDS]
            if normalise(texts[1]) == normalise(texts[2]):
                found.append("rejected: the same response as chosen (a pair compares two different responses)")
        if not found:
            key = (normalise(texts[0]), normalise(texts[1]), normalise(texts[2]))
            if key in seen_keys:
                duplicates += 1
                continue
            item_id = str(row.get("id") or pair_id(*texts))
            if not _ID.fullmatch(item_id):
                found.append(f"id: {item_id[:40]!r} is not a valid id (letters, digits, _.:-)")
            elif item_id in seen_ids:
                found.append(f"id: duplicate id {item_id!r} for a different pair")
        if found:
            bad_rows += 1
            problems.extend(f"{source}:{number}: {problem}" for problem in found)
            if bad_rows >= MAX_PROBLEMS:
                break
            continue
        seen_keys.add(key)
        seen_ids.add(item_id)
        items.append(HumanPair(id=item_id, prompt=texts[0], chosen=texts[1], rejected=texts[2]))
    if problems:
        raise PreferenceSetError(source, problems)
    if not items:
        raise PreferenceSetError(source, [f"{source}: no pairs"])
    return items, duplicates


def pin_preference_set(
    store: ArtifactStore, run_id: str, preference_set_id: str, items: Sequence[HumanPair | dict[str, Any]]
) -> Path:
    """Write a run's human pairs to `<run>/inputs/human_pairs.jsonl`; returns the file.

    Called before the inputs' manifest is written, the manifest then lists the file; called after it (a run just
    created), the manifest is written again, last, with the file and `preference_set` added, so the pinned inputs
    stay verifiable either way.
    """
    pairs = [item if isinstance(item, HumanPair) else HumanPair.model_validate(item) for item in items]
    inputs = store.stage_dir(run_id, INPUTS)
    path = inputs / HUMAN_PAIRS_FILE
    write_jsonl(path, pairs)
    manifest = read_manifest(inputs)
    if manifest is not None:
        extra = {key: value for key, value in manifest.items() if key != "files"}
        write_manifest(inputs, {**extra, "preference_set": preference_set_id})
    return path


def read_human_pairs(store: ArtifactStore, run_id: str) -> list[HumanPair] | None:
    """The run's pinned human pairs, or None when the run names no preference set (no human_pairs.jsonl)."""
    path = store.stage_dir(run_id, INPUTS, create=False) / HUMAN_PAIRS_FILE
    return read_jsonl(path, HumanPair) if path.is_file() else None
