"""/v1/constitutions: upload (YAML or JSON, validated with file/line/field errors), list and get versions.

The server's shipped folder (RLAIF_CONSTITUTIONS_DIR) is re-scanned on every list and get, so an edited file
appears as a new version (keyed by its SHA-256) without a restart; runs pin the version they started with.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import or_, select

from api.crud import constitution_public, get_constitution, sync_shipped, upsert_constitution
from api.deps import OwnerDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.schemas import ConstitutionDetail, ConstitutionsPublic, ErrorPublic
from api.uploads import UploadDep
from rlaif.constitution import ConstitutionError, parse_constitution
from rlaif.db import SHIPPED_OWNER, ConstitutionRow

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
