"""FastAPI dependencies, as ``Annotated`` aliases so routes stay one line each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlmodel import Session

if TYPE_CHECKING:
    from cloud.server import ControlPlane


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.plane.engine) as session:
        yield session


PlaneDep = Annotated["ControlPlane", Depends(get_plane)]
SessionDep = Annotated[Session, Depends(get_session)]
