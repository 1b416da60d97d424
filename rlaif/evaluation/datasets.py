"""The prompts an evaluation answers: the run's held-out prompts plus named sets from the data folder.

Each prompt has a *kind* that says what it measures:

| set        | file (in the data folder)              | kind                                  | measured                    |
| ---------- | -------------------------------------- | ------------------------------------- | --------------------------- |
| `heldout`  | `<run>/inputs/eval_prompts.jsonl`      | heldout                               | harmlessness + helpfulness  |
| `red_team` | `red_team_prompts.<split>.jsonl`       | red_team                              | harmlessness win rate       |
| `helpful`  | `helpful_prompts.<split>.jsonl`        | helpful                               | helpfulness win rate        |
| `xstest`   | `xstest_prompts.<split>.jsonl`         | harmful (unsafe) / safe_lookalike     | refusal / over-refusal      |
| `advbench` | `advbench_behaviors.<split>.jsonl`     | harmful                               | refusal rate                |

Refusal rates are computed for every kind. Sets are named by a closed choice (`eval.extra_sets`) and resolved in
the folder `RLAIF_DATA_DIR` (`settings.data_dir`): a run config, which may arrive over HTTP, never carries a path.
Draws are seeded and sorted by id first, so the same config evaluates the same prompts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from rlaif.config import EvalConfig
from rlaif.records import Axis, HumanPair, PromptItem
from rlaif.stages import EVAL_PROMPTS_FILE, INPUTS
from rlaif.store import ArtifactStore, StoreError, read_jsonl

SetName = Literal["heldout", "red_team", "helpful", "xstest", "advbench"]
Kind = Literal["heldout", "red_team", "helpful", "harmful", "safe_lookalike"]

SET_FILES: dict[str, str] = {
    "red_team": "red_team_prompts",
    "helpful": "helpful_prompts",
    "xstest": "xstest_prompts",
    "advbench": "advbench_behaviors",
}
HUMAN_PAIRS_FILE = "preference_pairs"
AXES_OF_KIND: dict[str, tuple[Axis, ...]] = {
    "heldout": ("harmless", "helpful"),
    "red_team": ("harmless",),
    "helpful": ("helpful",),
    "harmful": (),
    "safe_lookalike": (),
}


class EvalPrompt(BaseModel):
    """One evaluation prompt with where it came from and what it measures."""

    id: str = Field(description="'<set>:<id in the set>', unique across sets.")
    prompt: str
    dataset: SetName
    kind: Kind

    @property
    def axes(self) -> tuple[Axis, ...]:
        """The win rates this prompt counts towards."""
        return AXES_OF_KIND[self.kind]


class DataError(ValueError):
    """An evaluation set is missing or malformed (the message names the file and line)."""


def set_path(data_dir: Path | None, stem: str, split: str, what: str) -> Path:
    """<data_dir>/<stem>.<split>.jsonl, or DataError saying what to set."""
    if data_dir is None:
        raise DataError(f"{what} needs the data folder: set RLAIF_DATA_DIR to the folder holding {stem}.{split}.jsonl")
    path = Path(data_dir) / f"{stem}.{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{what}: {path} does not exist (RLAIF_DATA_DIR={data_dir})")
    return path


def read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """JSON objects of a JSONL file, each checked to have the required string fields."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
            missing = [
                f
                for f in required
                if not isinstance(row, dict) or not isinstance(row.get(f), str) or not row[f].strip()
            ]
            if missing:
                raise DataError(f"{path}:{number}: {', '.join(missing)}: missing or not a non-empty string")
            rows.append(row)
    return rows


def _draw(rows: list[dict[str, Any]], n: int, seed: int, salt: str) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: str(r.get("id", r["prompt"])))
    if n >= len(ordered):
        return ordered
    return random.Random(f"{seed}:{salt}").sample(ordered, n)


def load_named_set(name: str, data_dir: Path | None, split: str, n: int, seed: int) -> list[EvalPrompt]:
    """n prompts drawn from a named set (XSTest: n // 2 safe and the rest unsafe)."""
    if name not in SET_FILES:
        raise DataError(f"unknown evaluation set {name!r}: choose from {sorted(SET_FILES)}")
    path = set_path(data_dir, SET_FILES[name], split, f"eval.extra_sets {name!r}")
    if name == "xstest":
        rows = read_rows(path, ("prompt", "label"))
        bad = [r for r in rows if r["label"] not in ("safe", "unsafe")]
        if bad:
            raise DataError(
                f"{path}: label must be 'safe' or 'unsafe', got {bad[0]['label']!r} (id {bad[0].get('id')})"
            )
        safe = _draw([r for r in rows if r["label"] == "safe"], n // 2, seed, "xstest-safe")
        unsafe = _draw([r for r in rows if r["label"] == "unsafe"], n - n // 2, seed, "xstest-unsafe")
        chosen = [(r, "safe_lookalike") for r in safe] + [(r, "harmful") for r in unsafe]
    else:
        kind = {"red_team": "red_team", "helpful": "helpful", "advbench": "harmful"}[name]
        chosen = [(r, kind) for r in _draw(read_rows(path, ("prompt",)), n, seed, name)]
    return [
        EvalPrompt(id=f"{name}:{row.get('id', index)}", prompt=row["prompt"].strip(), dataset=name, kind=kind)  # type: ignore[arg-type]
        for index, (row, kind) in enumerate(chosen)
    ]


def load_heldout(store: ArtifactStore, run_id: str, limit: int) -> list[EvalPrompt]:
    """The run's held-out prompts (inputs/eval_prompts.jsonl), at most `limit`, in file order."""
    path = store.path(run_id, INPUTS, EVAL_PROMPTS_FILE)
    if not path.exists():
        raise StoreError(
            f"{path} does not exist: the run has no held-out prompts (eval.holdout_fraction > 0 makes them)"
        )
    items = read_jsonl(path, PromptItem)[:limit]
    return [
        EvalPrompt(id=f"heldout:{item.id}", prompt=item.prompt, dataset="heldout", kind="heldout") for item in items
    ]


def load_eval_prompts(
    store: ArtifactStore, run_id: str, cfg: EvalConfig, data_dir: Path | None, seed: int
) -> list[EvalPrompt]:
    """Held-out prompts of the run followed by each named set in `cfg.extra_sets`."""
    prompts = load_heldout(store, run_id, cfg.max_prompts)
    for name in dict.fromkeys(cfg.extra_sets):
        prompts += load_named_set(name, data_dir, cfg.data_split, cfg.prompts_per_set, seed)
    if not prompts:
        raise DataError(f"run {run_id}: nothing to evaluate (no held-out prompts and no eval.extra_sets)")
    return prompts


def load_human_pairs(path: str | Path, limit: int | None = None) -> list[HumanPair]:
    """The first `limit` (default all) human-labelled pairs of a JSONL file (prompt, chosen, rejected, optional id
    and source; other fields, such as the shipped file's provenance, are ignored). A line without an id is
    `line-<number>`. A bad line raises DataError naming the file and line."""
    path = Path(path)
    pairs: list[HumanPair] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row.setdefault("id", f"line-{number}")
                pairs.append(HumanPair.model_validate({k: row[k] for k in HumanPair.model_fields if k in row}))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise DataError(
                    f"{path}:{number}: not a labelled pair (need prompt, chosen, rejected): {problems}"
                ) from None
            except (json.JSONDecodeError, AttributeError, TypeError) as exc:
                raise DataError(f"{path}:{number}: not a labelled pair (need a JSON object): {exc}") from None
            if limit and len(pairs) >= limit:
                break
    if not pairs:
        raise DataError(f"{path}: no labelled pairs")
    return pairs


def prompts_from_file(path: Path, limit: int | None = None) -> list[EvalPrompt]:
    """Prompts of a user's JSONL file for `rlaif eval --prompts` (kind heldout: judged on both axes)."""
    from rlaif.prompts import load_prompts

    return [
        EvalPrompt(id=f"heldout:{item.id}", prompt=item.prompt, dataset="heldout", kind="heldout")
        for item in load_prompts(path, limit=limit)
    ]
