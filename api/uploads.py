"""Reading request bodies with a size limit (413 past `settings.max_upload_bytes`), raw or multipart; JSONL rows."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

from fastapi import Depends, Request, status
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.deps import SettingsDep
from api.errors import ApiError
from rlaif.prompts import json_problem


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


MAX_PROBLEMS = 100  # problems listed in one answer (the count says how many there were)


def jsonl_rows(body: bytes, max_rows: int, too_many: str) -> tuple[list[Any], list[int]]:
    """The decoded rows of a JSONL upload and the line of each (blank lines are skipped): 422 naming every line
    that is not UTF-8 or not JSON (the first MAX_PROBLEMS), 413 when it has more than `max_rows` rows (`too_many`
    says what: "{count} pairs: a preference set holds at most ..."; `{count}` is filled in)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"the upload is not UTF-8 text (byte {exc.start})"
        ) from None
    # Lines are iterated lazily (no list of millions of strings) and counted before any is parsed.
    lines = sum(1 for line in io.StringIO(text) if line.strip())
    if lines > max_rows:
        raise ApiError(status.HTTP_413_CONTENT_TOO_LARGE, too_many.format(count=lines))
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
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid JSONL: {bad} bad line(s){shown}", problems)
    return rows, numbers
