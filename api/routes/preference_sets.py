"""/v1/preference-sets: upload human comparisons (JSONL body or file of {prompt, chosen, rejected}), validated and
de-duplicated (rlaif/preference_sets.py); list; get; delete when no run uses them. A run names one with
`preference_set_id`; its reward model then trains on these pairs beside the AI labels (reward_model.human_mix)."""

from __future__ import annotations

import hashlib
import json

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select

from api.crud import get_preference_set, refuse_if_used
from api.deps import OwnerDep, ReadSessionDep, SessionDep
from api.errors import ApiError
from api.schemas import (
    INT64_MAX,
    ColumnText,
    ErrorPublic,
    PreferencePairPublic,
    PreferenceSetPublic,
    PreferenceSetsPublic,
)
from api.uploads import UploadDep, jsonl_rows
from rlaif.preference_sets import MAX_PAIRS, PreferenceSetError, parse_preference_items
from rlaif.service.db import PreferenceSetRow, RunRow, new_id

router = APIRouter(prefix="/preference-sets", tags=["preference-sets"])

PREVIEW = 10
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {
                "schema": {
                    "type": "string",
                    "description": 'One {"prompt": ..., "chosen": ..., "rejected": ..., "id"?: ...} per line.',
                }
            },
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_BODY,
    responses={413: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def create_preference_set(
    body: UploadDep,
    session: SessionDep,
    owner: OwnerDep,
    name: ColumnText | None = Query(default=None, max_length=200, description="A label for the set."),
) -> PreferenceSetPublic:
    """Store a validated, de-duplicated preference set of the caller's; 422 naming each bad line and field."""
    rows, lines = jsonl_rows(body, MAX_PAIRS, f"{{count}} pairs: a preference set holds at most {MAX_PAIRS}")
    try:
        items, duplicates = parse_preference_items(rows, source="<upload>", lines=lines)
    except PreferenceSetError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"invalid preference set: {len(exc.problems)} problem(s)",
            exc.problems,
        ) from None
    payload = [item.model_dump() for item in items]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    row = PreferenceSetRow(
        id=new_id("pref"),
        owner=owner,
        name=name or "preferences",
        sha256=digest,
        count=len(items),
        duplicates=duplicates,
        items=payload,
    )
    session.add(row)
    session.commit()
    return _public(row)


@router.get("")
def list_preference_sets(
    session: ReadSessionDep,
    owner: OwnerDep,
    skip: int = Query(0, ge=0, le=INT64_MAX),
    limit: int = Query(50, ge=1, le=500),
) -> PreferenceSetsPublic:
    """The caller's preference sets, newest first (previews only on GET /v1/preference-sets/{id})."""
    mine = PreferenceSetRow.owner == owner
    count = session.scalar(select(func.count()).select_from(PreferenceSetRow).where(mine)) or 0
    columns = (PreferenceSetRow.id, PreferenceSetRow.name, PreferenceSetRow.count, PreferenceSetRow.duplicates)
    rows = session.execute(
        select(*columns, PreferenceSetRow.sha256, PreferenceSetRow.created_at)  # (not the pairs themselves)
        .where(mine)
        .order_by(PreferenceSetRow.created_at.desc(), PreferenceSetRow.id)
        .offset(skip)
        .limit(limit)
    )
    return PreferenceSetsPublic(data=[PreferenceSetPublic(**row._mapping) for row in rows], count=count)


@router.get("/{preference_set_id}", responses={404: {"model": ErrorPublic}})
def read_preference_set(preference_set_id: str, session: ReadSessionDep, owner: OwnerDep) -> PreferenceSetPublic:
    return _public(get_preference_set(session, owner, preference_set_id))


@router.delete(
    "/{preference_set_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}},
)
def delete_preference_set(preference_set_id: str, session: SessionDep, owner: OwnerDep) -> None:
    """Delete a preference set of the caller's that no run uses; 409 naming the runs that do (delete them first)."""
    get_preference_set(session, owner, preference_set_id)
    # Locked: a run created meanwhile on this set waits for the delete (and then finds no set) or goes first (409).
    query = select(PreferenceSetRow).where(PreferenceSetRow.id == preference_set_id).with_for_update()
    row = session.scalars(query).one()
    refuse_if_used(session, "preference set", preference_set_id, RunRow.preference_set_id)
    session.delete(row)
    session.commit()


def _public(row: PreferenceSetRow) -> PreferenceSetPublic:
    return PreferenceSetPublic(
        id=row.id,
        name=row.name,
        count=row.count,
        duplicates=row.duplicates,
        sha256=row.sha256,
        created_at=row.created_at,
        preview=[PreferencePairPublic(**item) for item in row.items[:PREVIEW]],
    )
