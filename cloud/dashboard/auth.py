"""Dashboard login: an API token in an HttpOnly cookie, re-checked on every request.

Operators log in with the same tokens the API and CLI use, so roles live in one
place (``cloud.security``). The cookie holds the token itself: there is no second
session store to leak or to keep in sync, and revoking the token logs the browser
out on its next request. ``SameSite=Strict`` keeps other sites from riding the
cookie, and every form also carries a CSRF value derived from the token.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from cloud.security.tables import Role
from cloud.security.tokens import authenticate

__all__ = ["COOKIE_NAME", "DashboardUser", "csrf_for", "login", "user_for_cookie"]

COOKIE_NAME = "edgefleet_session"


@dataclass(frozen=True)
class DashboardUser:
    name: str
    role: Role
    token: str

    @property
    def can_act(self) -> bool:
        """Operators and admins act (approve, pause, abort, deploy); viewers only look."""
        return self.role.rank >= Role.OPERATOR.rank

    @property
    def csrf(self) -> str:
        return csrf_for(self.token)


def csrf_for(token: str) -> str:
    # Keyed by the token: a page from another session cannot carry a valid value.
    return hmac.new(token.encode(), b"edgefleet-dashboard-csrf", hashlib.sha256).hexdigest()[:32]


def login(engine: Engine, token: str) -> DashboardUser:
    """The user for ``token``.

    Raises:
        PermissionError: the token is unknown or revoked, or is a device's token; the
            message says so (the login page shows it).
    """
    token = token.strip()
    if not token:
        raise PermissionError("enter an API token (create one with `edgefleet token create`)")
    with Session(engine) as session:
        principal = authenticate(session, token)
    if principal is None:
        raise PermissionError("unknown or revoked token")
    if principal.role == Role.DEVICE:
        raise PermissionError("device tokens cannot open the dashboard; use a viewer, operator or admin token")
    return DashboardUser(principal.name, principal.role, token)


def user_for_cookie(engine: Engine, cookie: str | None) -> DashboardUser | None:
    if not cookie:
        return None
    try:
        return login(engine, cookie)
    except PermissionError:
        return None
