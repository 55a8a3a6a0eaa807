"""Two pure-ASGI layers around the whole application: bounded request bodies and security headers.

Pure ASGI (not ``BaseHTTPMiddleware``) so that the body is counted as it streams in,
before any route, form parser or JSON decoder holds it, and so that chunked bodies
(no ``Content-Length``) are bounded exactly like declared ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "RequestTooLarge", "RouteLimit", "SecurityHeaders"]


@dataclass(frozen=True)
class RouteLimit:
    """A larger (or smaller) body limit for the routes ``pattern`` matches with ``method``."""

    method: str
    pattern: re.Pattern[str]
    limit: int
    setting: str


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its limit.

    An ``HTTPException`` on purpose: FastAPI re-raises those from its body parsing
    (anything else there becomes a 400), so the exception handler answers 413.
    """

    def __init__(self, limit: int, setting: str, method: str, path: str) -> None:
        super().__init__(413, f"request body is larger than the {limit}-byte limit for {method} {path}; "
                              f"send less, or raise {setting} on the control plane")


class BodySizeLimit:
    """Answer 413 to any request whose body passes its limit, without ever holding more than that."""

    def __init__(self, app: ASGIApp, *, limit: int, setting: str, routes: Sequence[RouteLimit] = ()) -> None:
        self.app = app
        self.limit = limit
        self.setting = setting
        self.routes = tuple(routes)

    def limit_for(self, method: str, path: str) -> tuple[int, str]:
        for route in self.routes:
            if route.method == method and route.pattern.match(path):
                return route.limit, route.setting
        return self.limit, self.setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = str(scope["method"]), str(scope["path"])
        limit, setting = self.limit_for(method, path)
        too_large = RequestTooLarge(limit, setting, method, path)
        declared = _content_length(scope)
        if declared == -1:
            await JSONResponse({"detail": "Content-Length is not a non-negative integer"}, 400)(scope, receive, send)
            return
        if declared is not None and declared > limit:
            # Refused before a byte of the body is read.
            await JSONResponse({"detail": too_large.detail}, 413)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except RequestTooLarge as exc:
            # Normally the exception handler has already answered; this covers code outside it.
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared length, None when absent (chunked), -1 when unparseable."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


# The dashboard serves its scripts and styles from /ui/static and has no inline code,
# so 'self' is all it needs. FastAPI's interactive docs load Swagger/ReDoc from a CDN
# with an inline bootstrap script, so those two pages get a looser policy of their own.
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                 "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


class SecurityHeaders:
    """Add CSP, framing, sniffing and referrer headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CSP if scope["path"] in DOCS_PATHS else DASHBOARD_CSP
        extra = [
            (b"content-security-policy", policy.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
