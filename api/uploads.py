"""Reading request bodies with a size limit (413 past `settings.max_upload_bytes`), raw or multipart."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, status
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.deps import SettingsDep
from api.errors import ApiError


def _too_large(limit: int) -> ApiError:
    return ApiError(
        status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes (the server's RLAIF_MAX_UPLOAD_BYTES)"
    )


async def upload_body(request: Request, settings: SettingsDep) -> bytes:
    """The request body, or the `file` part of a multipart form; 413 when larger than the limit."""
    # (A declared length past the limit plus multipart framing never gets here: api/limits.py refuses it.)
    limit = settings.max_upload_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=4)
        except HTTPException as exc:
            if exc.status_code != status.HTTP_400_BAD_REQUEST:  # (413 from api/limits.py passes through)
                raise
            # Starlette's 400 for a form it cannot parse: as invalid as any other unreadable upload (422).
            raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid multipart upload: {exc.detail}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "multipart upload needs a 'file' part")
        data = await upload.read(limit + 1)
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limit:
        raise _too_large(limit)
    if not data.strip():
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "empty request body")
    return data


UploadDep = Annotated[bytes, Depends(upload_body)]
