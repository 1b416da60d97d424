"""/v1/prompt-sets: upload prompts (JSONL body or file, or a JSON list), validated and de-duplicated; list; get."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from fastapi import APIRouter, Query, Request, status
from sqlalchemy import func, select

from api.crud import get_prompt_set, refuse_if_used
from api.deps import OwnerDep, ReadSessionDep, SessionDep
from api.errors import ApiError, pydantic_problems
from api.schemas import (
    INT64_MAX,
    ColumnText,
    ErrorPublic,
    PromptPublic,
    PromptSetCreate,
    PromptSetPublic,
    PromptSetsPublic,
)
from api.uploads import UploadDep
from rlaif.prompts import MAX_PROMPTS, PromptSetError, json_problem, parse_prompt_items
from rlaif.service.db import PromptSetRow, RunRow, new_id

router = APIRouter(prefix="/prompt-sets", tags=["prompt-sets"])

PREVIEW = 10
MAX_PROBLEMS = 100  # problems listed in one answer (the count says how many there were)
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PromptSetCreate.model_json_schema()},
            "application/x-ndjson": {"schema": {"type": "string", "description": 'One {"prompt": ...} per line.'}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


def _unprocessable(detail: str, errors: list[str] | None = None) -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors or [])


def _rows(body: bytes, json_body: bool = False) -> tuple[list[Any], str | None, list[int] | None]:
    """Rows of a JSON document (a list, or {"name", "prompts"}) or of JSONL; the name if the body gave one; the
    line of each row of JSONL (blank lines are skipped). A body sent as application/json (`json_body`) must be a
    list or an object, as the declared schema says: a bare JSON string or number there is refused, not read as JSONL."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unprocessable(f"the upload is not UTF-8 text (byte {exc.start})") from None
    start = len(text) - len(text.lstrip())
    if json_body and not text.startswith(("[", "{"), start):
        raise _unprocessable(
            'an application/json body is a JSON list of prompts or {"name": ..., "prompts": [...]}; '
            "send JSONL lines as application/x-ndjson"
        )
    if text.startswith("[", start):
        listed = _json_list(text, start)
        if listed is not None:
            return listed, None, None
    if text.startswith("{", start):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # not one JSON document: read it as JSONL below
        except (ValueError, RecursionError) as exc:
            # Too deep, or an integer too long, in the first value: wrong as a document and as a first JSONL line.
            raise _invalid_json(text, exc, start) from None
        if isinstance(document, dict) and "prompts" in document:
            try:
                parsed = PromptSetCreate.model_validate(document)
            except ValueError as exc:
                raise _unprocessable("invalid prompt set body", pydantic_problems(exc)) from None  # type: ignore[arg-type]
            return parsed.prompts, parsed.name, None
    # Lines are iterated lazily (no list of millions of strings) and counted before any is parsed.
    lines = sum(1 for line in io.StringIO(text) if line.strip())
    if lines > MAX_PROMPTS:
        raise _too_many(lines)
    rows: list[Any] = []
    numbers: list[int] = []
    problems: list[str] = []
    bad = 0
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            numbers.append(number)
        except (ValueError, RecursionError) as exc:
            bad += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"<upload>:{number}: <line>: invalid JSON: {json_problem(line, exc)[1]}")
    if problems:
        shown = f" (the first {len(problems)} listed)" if bad > len(problems) else ""
        raise _unprocessable(f"invalid JSONL: {bad} bad line(s){shown}", problems)
    return rows, None, numbers


def _json_list(text: str, start: int) -> list[Any] | None:
    """The elements of the JSON list at `start`, decoded one at a time so that a list of millions is refused (413)
    after MAX_PROMPTS elements, not built whole first; None when `text` is not one JSON list (then it is JSONL)."""
    decoder, rows, index = json.JSONDecoder(), [], start + 1
    whitespace = " \t\n\r"
    try:
        while True:
            while index < len(text) and text[index] in whitespace:
                index += 1
            if text.startswith("]", index) and not rows:
                index += 1
                break
            row, index = decoder.raw_decode(text, index)
            rows.append(row)
            if len(rows) > MAX_PROMPTS:
                raise _too_many_at_least(len(rows))
            while index < len(text) and text[index] in whitespace:
                index += 1
            if text.startswith(",", index):
                index += 1
                continue
            if text.startswith("]", index):
                index += 1
                break
            return None
    except json.JSONDecodeError:
        return None
    except (ValueError, RecursionError) as exc:  # too deep, or an integer too long: wrong as JSON and as JSONL
        raise _invalid_json(text, exc, index) from None
    return rows if not text[index:].strip() else None


def _invalid_json(text: str, exc: ValueError | RecursionError, start: int) -> ApiError:
    line, reason = json_problem(text, exc, start)
    return _unprocessable("invalid JSON", [f"<upload>:{line}: <document>: invalid JSON: {reason}"])


def _too_many_at_least(count: int) -> ApiError:
    return ApiError(
        status.HTTP_413_CONTENT_TOO_LARGE, f"more than {count - 1} prompts: a prompt set holds at most {MAX_PROMPTS}"
    )


def _too_many(count: int) -> ApiError:
    return ApiError(status.HTTP_413_CONTENT_TOO_LARGE, f"{count} prompts: a prompt set holds at most {MAX_PROMPTS}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_BODY,
    responses={413: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def create_prompt_set(
    request: Request,
    body: UploadDep,
    session: SessionDep,
    owner: OwnerDep,
    name: ColumnText | None = Query(default=None, max_length=200, description="A label for the set (JSONL uploads)."),
) -> PromptSetPublic:
    """Store a validated, de-duplicated prompt set of the caller's."""
    json_body = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
    rows, body_name, lines = _rows(body, json_body)
    if len(rows) > MAX_PROMPTS:
        raise _too_many(len(rows))
    try:
        items, duplicates = parse_prompt_items(rows, source="<upload>", lines=lines)
    except PromptSetError as exc:
        raise _unprocessable(f"invalid prompt set: {len(exc.problems)} problem(s)", exc.problems) from None
    payload = [item.model_dump() for item in items]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    row = PromptSetRow(
        id=new_id("ps"),
        owner=owner,
        name=name or body_name or "prompts",
        sha256=digest,
        count=len(items),
        duplicates=duplicates,
        items=payload,
    )
    session.add(row)
    session.commit()
    return _public(row)


@router.get("")
def list_prompt_sets(
    session: ReadSessionDep,
    owner: OwnerDep,
    skip: int = Query(0, ge=0, le=INT64_MAX),
    limit: int = Query(50, ge=1, le=500),
) -> PromptSetsPublic:
    """The caller's prompt sets, newest first (previews only on GET /v1/prompt-sets/{id})."""
    mine = PromptSetRow.owner == owner
    count = session.scalar(select(func.count()).select_from(PromptSetRow).where(mine)) or 0
    columns = (PromptSetRow.id, PromptSetRow.name, PromptSetRow.count, PromptSetRow.duplicates)
    rows = session.execute(
        select(*columns, PromptSetRow.sha256, PromptSetRow.created_at)  # (not the prompts themselves)
        .where(mine)
        .order_by(PromptSetRow.created_at.desc(), PromptSetRow.id)
        .offset(skip)
        .limit(limit)
    )
    return PromptSetsPublic(data=[PromptSetPublic(**row._mapping) for row in rows], count=count)


@router.get("/{prompt_set_id}", responses={404: {"model": ErrorPublic}})
def read_prompt_set(prompt_set_id: str, session: ReadSessionDep, owner: OwnerDep) -> PromptSetPublic:
    return _public(get_prompt_set(session, owner, prompt_set_id))


@router.delete(
    "/{prompt_set_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}},
)
def delete_prompt_set(prompt_set_id: str, session: SessionDep, owner: OwnerDep) -> None:
    """Delete a prompt set of the caller's that no run uses; 409 naming the runs that do (delete them first)."""
    get_prompt_set(session, owner, prompt_set_id)
    # Locked: a run created meanwhile on this set waits for the delete (and then finds no set) or goes first (409).
    row = session.scalars(select(PromptSetRow).where(PromptSetRow.id == prompt_set_id).with_for_update()).one()
    refuse_if_used(session, "prompt set", prompt_set_id, RunRow.prompt_set_id)
    session.delete(row)
    session.commit()


def _public(row: PromptSetRow) -> PromptSetPublic:
    return PromptSetPublic(
        id=row.id,
        name=row.name,
        count=row.count,
        duplicates=row.duplicates,
        sha256=row.sha256,
        created_at=row.created_at,
        preview=[PromptPublic(**item) for item in row.items[:PREVIEW]],
    )
