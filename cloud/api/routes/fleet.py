from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import PlaneDep, SessionDep
from cloud.fleet.summary import fleet_rows

router = APIRouter(tags=["fleet"])


@router.get("/fleet")
def fleet(session: SessionDep) -> list[dict[str, object]]:
    """One row per device: version, online, and its latest telemetry window."""
    return fleet_rows(session)


@router.get("/ingest/stats")
def ingest_stats(plane: PlaneDep) -> dict[str, object]:
    """Accepted, rejected (by reason) and duplicate report counts since start."""
    return plane.ingest.counters.as_dict()
