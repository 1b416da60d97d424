"""Security headers on every response: no MIME sniffing, no referrer, never inside a frame.

A pure ASGI middleware, outermost, so the front door's own answers (401, 413, 429) carry them too. A response
that sets one of these itself keeps its own: the report page sends a stricter Content-Security-Policy
(api/routes/reports.py), which says `frame-ancestors 'none'` as well.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS = {
    "X-Content-Type-Options": "nosniff",  # a JSON or text answer is never run as a script or a page
    "Referrer-Policy": "no-referrer",  # URLs name runs and checkpoints: they stay here
    "X-Frame-Options": "DENY",  # (older browsers) and, for the current ones, the CSP below: no clickjacking
    "Content-Security-Policy": "frame-ancestors 'none'",
}


class SecurityHeaders:
    """ASGI middleware adding HEADERS to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
