"""Dashboard login: an API token buys a server-side session; the cookie holds only its random id.

Operators log in with the same tokens the API and CLI use, so roles live in one
place (``cloud.security``). The browser never keeps the bearer token: the cookie is
a random session id, stored as its sha256 in ``dashboard_session`` with an expiry and
the id of the token it was made from. Every request re-checks that token, so revoking
or expiring it ends the session. ``SameSite=Strict`` keeps other sites from riding
the cookie, and every form (the login form included) carries a CSRF value, compared
in constant time.

Failed logins are throttled in memory, per client address and per token prefix
(:class:`LoginThrottle`): enough to stop guessing through the form; a restart forgets.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, delete

from cloud.security.tables import ApiToken, DashboardSession, Role
from cloud.security.tokens import Principal, TokenExpired, authenticate, principal_for_row

__all__ = ["COOKIE_NAME", "LOGIN_CSRF_COOKIE", "DashboardUser", "LoginThrottle", "csrf_matches", "login", "logout",
           "new_login_csrf", "user_for_cookie"]

COOKIE_NAME = "edgefleet_session"
# Before login there is no session to key a CSRF value by: the login form carries a random
# value that must match this cookie (double submit; SameSite=Strict keeps other sites from
# setting or sending it).
LOGIN_CSRF_COOKIE = "edgefleet_login_csrf"


@dataclass(frozen=True)
class DashboardUser:
    name: str
    role: Role
    principal: Principal
    csrf: str

    @property
    def can_act(self) -> bool:
        """Operators and admins act (approve, pause, abort, deploy); viewers only look."""
        return self.role.rank >= Role.OPERATOR.rank


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def csrf_for(session_id: str) -> str:
    # Keyed by the session id: a page from another session cannot carry a valid value.
    return hmac.new(session_id.encode(), b"edgefleet-dashboard-csrf", hashlib.sha256).hexdigest()[:32]


def csrf_matches(sent: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a missing value never matches."""
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def login(engine: Engine, token: str, *, ttl_s: int) -> tuple[str, DashboardUser]:
    """A new session for ``token``: (the session id for the cookie, the user).

    The session lasts ``ttl_s`` seconds, or until the token expires, whichever is first.

    Raises:
        PermissionError: the token is unknown, revoked or expired, or is a device's token;
            the message says so (the login page shows it).
    """
    token = token.strip()
    if not token:
        raise PermissionError("enter an API token (create one with `edgefleet token create`)")
    with Session(engine) as session:
        try:
            principal = authenticate(session, token)
        except TokenExpired as exc:
            raise PermissionError(str(exc)) from None
        if principal is None or principal.token_id is None:
            raise PermissionError("unknown or revoked token")
        if principal.role == Role.DEVICE:
            raise PermissionError("device tokens cannot open the dashboard; use a viewer, operator or admin token")
        row = session.get(ApiToken, principal.token_id)
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
        if row is not None and row.expires_at is not None:
            expires_at = min(expires_at, row.expires_at)
        session_id = secrets.token_urlsafe(32)
        session.add(DashboardSession(id_sha256=_digest(session_id), token_id=principal.token_id, expires_at=expires_at))
        # Expired sessions are dead weight: each login sweeps them.
        session.exec(delete(DashboardSession).where(col(DashboardSession.expires_at) < datetime.now(UTC)))
        session.commit()
    return session_id, DashboardUser(principal.name, principal.role, principal, csrf_for(session_id))


def user_for_cookie(engine: Engine, cookie: str | None) -> DashboardUser | None:
    """The user of a live session; None for no cookie, an unknown or expired session, or a dead token."""
    if not cookie:
        return None
    with Session(engine) as session:
        stored = session.get(DashboardSession, _digest(cookie))
        if stored is None or stored.expires_at <= datetime.now(UTC):
            return None
        try:
            principal = principal_for_row(session.get(ApiToken, stored.token_id))
        except TokenExpired:
            return None
    if principal is None or principal.role == Role.DEVICE:
        return None
    return DashboardUser(principal.name, principal.role, principal, csrf_for(cookie))


def logout(engine: Engine, cookie: str | None) -> None:
    """End the session: the cookie's id stops working even if the browser keeps it."""
    if not cookie:
        return
    with Session(engine) as session:
        stored = session.get(DashboardSession, _digest(cookie))
        if stored is not None:
            session.delete(stored)
            session.commit()


class LoginThrottle:
    """At most ``failures_per_window`` failed logins per key in ``window_s``; then wait.

    Keys are the client address and the token's first characters (its prefix), so one
    address cannot guess quickly, and neither can many addresses spread over one
    token. In memory, per process: a restart or a second replica starts afresh.
    """

    PREFIX_CHARS = 12

    def __init__(self, failures_per_window: int, window_s: float = 60.0) -> None:
        self.failures_per_window = failures_per_window
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def keys(self, client: str, token: str) -> list[str]:
        return [f"client:{client}", f"prefix:{token.strip()[:self.PREFIX_CHARS]}"]

    def _recent(self, key: str, now: float) -> deque[float]:
        moments = self._failures.setdefault(key, deque())
        while moments and moments[0] <= now - self.window_s:
            moments.popleft()
        return moments

    def retry_after(self, keys: list[str]) -> int:
        """Seconds to wait before the next attempt; 0 when allowed."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                moments = self._recent(key, now)
                if len(moments) >= self.failures_per_window:
                    wait = max(wait, moments[0] + self.window_s - now)
            # Forget keys with nothing recent, so memory follows only recent failures.
            for key in [k for k, v in self._failures.items() if not v]:
                del self._failures[key]
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
