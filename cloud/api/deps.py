"""FastAPI dependencies, as ``Annotated`` aliases so routes stay one line each.

Access control lives here, once: :func:`require_access` is applied to every
resource router in :mod:`cloud.api.main` (viewer for reads, operator for
anything that changes state), device tokens reach only their own device's
endpoints, and :data:`AdminDep` guards key and token management.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlmodel import Session

from cloud.core.plane import Plane
from cloud.security.tables import Role
from cloud.security.tokens import Principal, TokenExpired, authenticate

# The dashboard calls the API in process (cloud/dashboard/data.py) as its logged-in user: it
# puts that user's principal in the ASGI scope under this key. Requests from the network get
# their scope from the server, which never sets it, so only in-process calls can carry one.
IN_PROCESS_PRINCIPAL = "edgefleet.principal"

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a device token may do, and only with its own id in the URL: read itself and where its broker is,
# rotate its certificate.
DEVICE_ACCESS = (
    (frozenset({"GET", "HEAD"}),
     re.compile(r"^/api/v1/devices/(?P<device_id>[^/]+)(?:/telemetry|/connection)?/?$")),
    (frozenset({"POST"}), re.compile(r"^/api/v1/devices/(?P<device_id>[^/]+)/certificate/?$")),
)


def get_plane(request: Request) -> Plane:
    plane: Plane = request.app.state.plane
    return plane


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.plane.engine) as session:
        yield session


PlaneDep = Annotated[Plane, Depends(get_plane)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, session: SessionDep) -> Principal:
    """The caller behind ``Authorization: Bearer <token>``. 401 when absent, unknown, revoked or expired."""
    in_process = request.scope.get(IN_PROCESS_PRINCIPAL)
    if isinstance(in_process, Principal):
        request.state.principal = in_process
        return in_process
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing API token: send 'Authorization: Bearer <token>' "
                                 "(an admin creates one with `edgefleet token create`)",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        principal = authenticate(session, token.strip())
    except TokenExpired as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    if principal is None:
        raise HTTPException(401, "unknown or revoked API token", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


def require_access(request: Request, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """Viewer for reads, operator for writes; device tokens only on their own device's routes."""
    path = request.url.path
    if principal.role == Role.DEVICE:
        for methods, pattern in DEVICE_ACCESS:
            match = pattern.match(path)
            if request.method in methods and match and match["device_id"] == principal.device_id:
                return principal
        raise HTTPException(403, f"device {principal.device_id} may only reach its own device endpoints")
    needed = Role.VIEWER if request.method in READ_METHODS else Role.OPERATOR
    if not principal.at_least(needed):
        raise HTTPException(403, f"role {principal.role.value} may not {request.method} {path}; it needs {needed.value}")
    return principal


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.at_least(Role.ADMIN):
        raise HTTPException(403, f"role {principal.role.value} may not manage keys or tokens; it needs admin")
    return principal


def audit_actor(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    """Who the audit log names for this request: the API token's name (the CLI, the dashboard and
    scripts all call with a token, so every operator action carries the name of the token it used)."""
    return f"operator:{principal.name}"


CurrentPrincipal = Annotated[Principal, Depends(require_access)]
ActorDep = Annotated[str, Depends(audit_actor)]
AdminDep = Annotated[Principal, Depends(require_admin)]
