"""Error bodies: every error is `{"detail": "...", "errors": [...]}` (ErrorPublic), whatever raised it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error with a status code, a one-line detail and (for validation) every problem found."""

    def __init__(
        self, status_code: int, detail: str, errors: Sequence[str] = (), headers: dict[str, str] | None = None
    ):
        self.status_code = status_code
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers
        super().__init__(detail)


def not_found(what: str, ident: str) -> ApiError:
    # The same answer for "does not exist" and "belongs to another key": ids of others leak nothing.
    return ApiError(status.HTTP_404_NOT_FOUND, f"{what} {ident!r} not found")


def format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def pydantic_problems(exc: ValidationError | RequestValidationError, prefix: Sequence[str] = ()) -> list[str]:
    return [f"{format_loc([*prefix, *e['loc']]) or '<body>'}: {e['msg']}" for e in exc.errors()]


def _body(detail: str, errors: Sequence[str] = ()) -> dict[str, Any]:
    return {"detail": detail, "errors": list(errors)}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.detail, exc.errors), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = pydantic_problems(exc)
        return JSONResponse(
            _body(f"invalid request: {len(problems)} problem(s)", problems),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
