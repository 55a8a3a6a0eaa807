from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import PlaneDep, SessionDep
from cloud.fleet.liveness import Liveness
from cloud.fleet.summary import fleet_rows

router = APIRouter(tags=["fleet"])


@router.get("/fleet")
def fleet(session: SessionDep, plane: PlaneDep) -> list[dict[str, object]]:
    """One row per device: version, online (heard from lately), and its latest telemetry window."""
    return fleet_rows(session, Liveness.from_settings(plane.settings))


@router.get("/fleet/connection")
def fleet_connection(plane: PlaneDep) -> dict[str, object]:
    """The broker URL devices are handed now (at enrollment, and when they ask after it moved)."""
    return {"device_mqtt_url": plane.settings.device_mqtt_url or plane.broker_url}


@router.get("/ingest/stats")
def ingest_stats(plane: PlaneDep) -> dict[str, object]:
    """Accepted, rejected (by reason) and duplicate report counts since start."""
    return plane.ingest.counters.as_dict()
