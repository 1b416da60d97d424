"""Error bodies: every error is `{"detail": "...", "errors": [...]}` (ErrorPublic), whatever raised it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorPublic


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
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return JSONResponse(
                _body("invalid request: 1 problem(s)", [f"body: {unreadable}"]),
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        return JSONResponse(_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def _unreadable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not read a JSON body, when that is what its bare 400 ("There was an error parsing the
    body") is about: a body that is not UTF-8 or nests too deeply is as invalid as malformed JSON (422)."""
    if exc.status_code != status.HTTP_400_BAD_REQUEST:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"invalid JSON: not UTF-8 text (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "invalid JSON: nested too deeply"
    return None


def declare_error_bodies(app: FastAPI) -> None:
    """Make the app's OpenAPI schema declare the error answers as what the handlers above send: ErrorPublic as
    application/json. (FastAPI declares its own 422 body, `HTTPValidationError`, which this app never sends, and
    gives the error answers of HTML routes the route's media type.)"""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            ours, fastapis = "#/components/schemas/ErrorPublic", "#/components/schemas/HTTPValidationError"
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    for code, response in operation.get("responses", {}).items():
                        refs = {body.get("schema", {}).get("$ref") for body in response.get("content", {}).values()}
                        if code[:1] in ("4", "5") and refs & {ours, fastapis}:
                            response["content"] = {"application/json": {"schema": {"$ref": ours}}}
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("ErrorPublic", ErrorPublic.model_json_schema())
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
