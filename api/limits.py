"""Request limits in front of every route: a per-key rate limit (429) and a request size limit (413).

A pure ASGI middleware, so it streams: the size limit counts the bytes as the route reads them and stops at
the limit (a declared Content-Length above it is refused before any byte is read), and nothing is buffered
here. Rate limits use the `limits` library's moving window, keyed by the owner of a valid bearer key or, for
requests without one, the client address, so guessing keys is limited too.
The window lives in this process by default; give every API process the same Redis
(`RLAIF_RATE_LIMIT_STORAGE=async+redis://...`) to share it.
"""

from __future__ import annotations

import math
import time

from fastapi import status
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import owner_of_key
from rlaif.settings import Settings

# Routes whose body is an upload (constitution or prompt-set file) get the upload limit; the rest are JSON.
UPLOAD_ROUTES = frozenset({("POST", "/v1/constitutions"), ("POST", "/v1/prompt-sets")})
MULTIPART_FRAMING = 64 * 1024  # room for the multipart envelope around a file that itself fits


def caller_identity(scope: Scope, settings: Settings) -> str:
    """Who a request counts against: the owner of a valid bearer key, else the client address (so guessing
    keys is limited per address, whatever keys are guessed)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            owner = owner_of_key(settings, key.strip()) if scheme.lower() == "bearer" and key.strip() else None
            if owner is not None:
                return f"owner:{owner}"
    client = scope.get("client")
    return f"addr:{client[0] if client else '-'}"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestLimits:
    """ASGI middleware: 429 past `settings.rate_limit` per caller on /v1, 413 past the body size limits."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.upload_limit = settings.max_upload_bytes + MULTIPART_FRAMING
        self.request_limit = settings.max_request_bytes
        self.rates: list[RateLimitItem] = parse_many(settings.rate_limit) if settings.rate_limit.strip() else []
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rates and scope["path"].startswith("/v1/"):
            who = caller_identity(scope, self.settings)
            for rate in self.rates:
                if not await self.limiter.hit(rate, who):
                    window = await self.limiter.get_window_stats(rate, who)
                    retry_after = max(1, math.ceil(window.reset_time - time.time()))
                    detail = f"rate limit exceeded: {rate} per API key (the server's RLAIF_RATE_LIMIT)"
                    await _error(status.HTTP_429_TOO_MANY_REQUESTS, detail, {"Retry-After": str(retry_after)})(
                        scope, receive, send
                    )
                    return
        route = (scope["method"], scope["path"].rstrip("/"))
        limit = self.upload_limit if route in UPLOAD_ROUTES else self.request_limit
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _error(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(limit))(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # The same body as every other error (`{"detail", "errors"}`, api/errors.py).
    return JSONResponse({"detail": detail, "errors": []}, status_code=status_code, headers=headers)


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (the server's RLAIF_MAX_REQUEST_BYTES / RLAIF_MAX_UPLOAD_BYTES)"


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive`, raising 413 (through the app's error handlers) once the body passes `limit` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(limit))
        return message

    return counted
