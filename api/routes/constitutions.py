"""/v1/constitutions: upload (YAML or JSON, validated with file/line/field errors), list and get versions; edit
principles (PATCH: a new version whose parent is the old one) and diff two versions.

The server's shipped folder (RLAIF_CONSTITUTIONS_DIR) is re-scanned on every list and get, so an edited file
appears as a new version (keyed by its SHA-256) without a restart; runs pin the version they started with.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import or_, select

from api.crud import (
    PATCH_SOURCE,
    constitution_public,
    get_constitution,
    patch_parent,
    refuse_if_used,
    sync_shipped,
    upsert_constitution,
)
from api.deps import OwnerDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.schemas import ConstitutionDetail, ConstitutionDiff, ConstitutionPatch, ConstitutionsPublic, ErrorPublic
from api.uploads import UploadDep
from rlaif.constitution import Constitution, ConstitutionError, parse_constitution
from rlaif.constitution_edit import apply_edits, diff_constitutions
from rlaif.service.db import SHIPPED_OWNER, ConstitutionRow, RunRow

router = APIRouter(prefix="/constitutions", tags=["constitutions"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_BODY,
    responses={
        200: {"model": ConstitutionDetail, "description": "This version existed already."},
        413: {"model": ErrorPublic},
        422: {"model": ErrorPublic},
    },
)
def create_constitution(
    body: UploadDep, session: SessionDep, owner: OwnerDep, response: Response
) -> ConstitutionDetail:
    """Validate a constitution document and store it as a version of the caller's (201 new, 200 known)."""
    try:
        constitution = parse_constitution(body, source="<request>")
    except ConstitutionError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid constitution: {len(exc.problems)} problem(s)", exc.problems
        ) from None
    row, created = upsert_constitution(session, owner, constitution, source="upload")
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return constitution_public(row, detail=True)  # type: ignore[return-value]


@router.get("")
def list_constitutions(session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> ConstitutionsPublic:
    """The caller's uploaded versions and every version of the shipped files, newest first."""
    sync_shipped(session, settings.constitutions_dir)
    rows = session.scalars(
        select(ConstitutionRow)
        .where(or_(ConstitutionRow.owner == owner, ConstitutionRow.owner == SHIPPED_OWNER))
        .order_by(ConstitutionRow.created_at.desc(), ConstitutionRow.id)
    ).all()
    return ConstitutionsPublic(data=[constitution_public(r) for r in rows], count=len(rows))


@router.get("/{constitution_id}", responses={404: {"model": ErrorPublic}})
def read_constitution(
    constitution_id: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> ConstitutionDetail:
    """One version with its full document."""
    sync_shipped(session, settings.constitutions_dir)
    return constitution_public(get_constitution(session, owner, constitution_id), detail=True)  # type: ignore[return-value]


@router.delete(
    "/{constitution_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"model": ErrorPublic}, 404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}},
)
def delete_constitution(constitution_id: str, session: SessionDep, owner: OwnerDep) -> None:
    """Delete a version of the caller's that no run uses; 409 naming the runs that do (delete them first). The
    server's shipped versions are not the caller's to delete (403)."""
    row = get_constitution(session, owner, constitution_id)
    if row.owner == SHIPPED_OWNER:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            f"constitution {constitution_id} is shipped with the server ({row.source}): it cannot be deleted",
        )
    # Locked: a run created meanwhile on this version waits for the delete (and then finds none) or goes first (409).
    session.scalars(select(ConstitutionRow).where(ConstitutionRow.id == constitution_id).with_for_update()).one()
    refuse_if_used(session, "constitution", constitution_id, RunRow.constitution_id)
    session.delete(row)
    session.commit()


@router.patch(
    "/{constitution_id}",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ConstitutionDetail, "description": "The result is a version of the caller's already."},
        404: {"model": ErrorPublic},
        422: {"model": ErrorPublic},
    },
)
def patch_constitution(
    constitution_id: str,
    patch: ConstitutionPatch,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    response: Response,
) -> ConstitutionDetail:
    """Apply principle-level changes to a version (the caller's or a shipped one) and store the result as a new
    version of the caller's, whose `parent` is that version (201; 200 when the result existed already). The
    result is validated by the same loader as an upload: 422 with every problem, as `<patched>:line: field:
    message` (lines of the result rendered as YAML), or `changes[i]...` for a change naming no principle."""
    sync_shipped(session, settings.constitutions_dir)
    parent = get_constitution(session, owner, constitution_id)
    try:
        constitution = apply_edits(Constitution.model_validate(parent.document), patch.changes)
    except ConstitutionError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid patch: {len(exc.problems)} problem(s)", exc.problems
        ) from None
    row, created = upsert_constitution(session, owner, constitution, source=f"{PATCH_SOURCE}:{parent.id}")
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return constitution_public(row, detail=True)  # type: ignore[return-value]


@router.get("/{constitution_id}/diff", responses={404: {"model": ErrorPublic}})
def diff_constitution(
    constitution_id: str,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    against: str | None = Query(
        default=None, description="The version to compare with; default: the version's parent (none: all added)."
    ),
) -> ConstitutionDiff:
    """The principles version `constitution_id` adds, removes and changes relative to `against`. Both must be
    the caller's or shipped (404 otherwise)."""
    sync_shipped(session, settings.constitutions_dir)
    row = get_constitution(session, owner, constitution_id)
    against = against if against is not None else patch_parent(row)
    base = get_constitution(session, owner, against) if against is not None else None
    delta = diff_constitutions(
        Constitution.model_validate(base.document) if base is not None else None,
        Constitution.model_validate(row.document),
    )
    return ConstitutionDiff(**delta.model_dump(), id=row.id, against=against)
