"""The front door of /v1, before any route runs or any body is read: the API key (401), a per-key rate limit
(429) and a request size limit (413).

Requests without a valid key are refused here, so an anonymous caller never gets a body parsed or a 422 out of
a route; the key's owner is left in `request.state.owner` for the routes (`api.deps.OwnerDep`), so each key
is checked once. A pure ASGI middleware, so it
streams: the size limit counts the bytes as the route reads them and stops at
the limit (a declared Content-Length above it is refused before any byte is read), and nothing is buffered
here. Rate limits use the `limits` library's moving window, keyed by the owner of a valid bearer key or, for
requests without one, the client address, so guessing keys is limited too.
The window lives in this process by default; give every API process the same Redis
(`RLAIF_RATE_LIMIT_STORAGE=async+redis://...`) to share it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import status
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import INVALID_KEY, MISSING_KEY, owner_of_key
from rlaif.settings import Settings

# Routes whose body is an upload (constitution or prompt-set file) get the upload limit; the rest are JSON.
UPLOAD_ROUTES = frozenset({("POST", "/v1/constitutions"), ("POST", "/v1/prompt-sets")})
MULTIPART_FRAMING = 64 * 1024  # room for the multipart envelope around a file that itself fits


def bearer_owner(scope: Scope, settings: Settings) -> tuple[str | None, str]:
    """(owner, "") for a valid bearer key, else (None, why not)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                return None, MISSING_KEY
            owner = owner_of_key(settings, key.strip())
            return (owner, "") if owner is not None else (None, INVALID_KEY)
    return None, MISSING_KEY


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestLimits:
    """ASGI middleware: 401 without a valid key and 429 past `settings.rate_limit` per caller on /v1; 413 past
    the body size limits everywhere."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.upload_limit = settings.max_upload_bytes + MULTIPART_FRAMING
        self.request_limit = settings.max_request_bytes
        self.rates: list[RateLimitItem] = parse_many(settings.rate_limit) if settings.rate_limit.strip() else []
        self.limiter = MovingWindowRateLimiter(_storage(settings.rate_limit_storage))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/v1/"):
            owner, why_not = bearer_owner(scope, self.settings)
            # Requests count against their key's owner; those without a valid key against the client address,
            # so guessing keys is rate-limited too, whatever keys are guessed.
            client = scope.get("client")
            who = f"owner:{owner}" if owner is not None else f"addr:{client[0] if client else '-'}"
            if not await self._admit(who, scope, receive, send):
                return
            if owner is None:
                await _error(status.HTTP_401_UNAUTHORIZED, why_not, {"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
                return
            scope.setdefault("state", {})["owner"] = owner  # request.state.owner, for api.deps.get_owner
        route = (scope["method"], scope["path"].rstrip("/"))
        limit = self.upload_limit if route in UPLOAD_ROUTES else self.request_limit
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _error(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(limit))(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)

    async def _admit(self, who: str, scope: Scope, receive: Receive, send: Send) -> bool:
        """Count the request against `who`'s rate limits; False (after answering 429) when one is exceeded."""
        for rate in self.rates:
            if not await self.limiter.hit(rate, who):
                window = await self.limiter.get_window_stats(rate, who)
                retry_after = max(1, math.ceil(window.reset_time - time.time()))
                detail = f"rate limit exceeded: {rate} per API key (the server's RLAIF_RATE_LIMIT)"
                headers = {"Retry-After": str(retry_after)}
                await _error(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers)(scope, receive, send)
                return False
        return True


def _storage(url: str) -> Any:
    # Redis through redis-py's asyncio client (a dependency already), not the library's default coredis.
    return (
        storage_from_string(url, implementation="redispy")
        if url.startswith("async+redis")
        else storage_from_string(url)
    )


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
