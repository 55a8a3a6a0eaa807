"""Drift alerts with their evidence, per-device windows, and the fleet test."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.fleet.crud import NotFound
from cloud.governance import audit
from cloud.monitor import baseline, service
from cloud.monitor.retention import apply_retention
from cloud.monitor.tables import DriftAlert, DriftWindowRecord

router = APIRouter(prefix="/drift", tags=["drift"])
# Per-device drift settings live under the device: /devices/{id}/drift/...
device_router = APIRouter(tags=["drift"])


@router.get("/alerts")
def list_alerts(session: SessionDep, state: str | None = Query(default=None, pattern="^(open|cleared)$"),
                device_id: str | None = None, limit: int = Query(default=200, ge=1, le=1000)) -> list[dict[str, Any]]:
    return [service.alert_detail(a) for a in service.list_alerts(session, state=state, device_id=device_id,
                                                                  limit=limit)]


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: str, session: SessionDep) -> dict[str, Any]:
    alert = session.get(DriftAlert, alert_id)
    if alert is None:
        raise NotFound(f"drift alert {alert_id!r} does not exist")
    return service.alert_detail(alert)


@router.get("/devices")
def device_states(session: SessionDep) -> list[dict[str, Any]]:
    """Each device's drift state (ok, alert, no data, baseline pending) with its open alerts and newest
    window, and the same per camera under it (``cameras``)."""
    return baseline.fleet_drift_states(session)


@router.get("/devices/{device_id}/windows")
def device_windows(device_id: str, session: SessionDep, limit: int = Query(default=50, ge=1, le=1000),
                   camera: str | None = Query(default=None, min_length=1, max_length=64)) -> list[dict[str, Any]]:
    """The device's latest windows (of one camera, with ``camera``), newest first, with the test's numbers."""
    query = select(DriftWindowRecord).where(col(DriftWindowRecord.device_id) == device_id)
    if camera is not None:
        named = col(DriftWindowRecord.camera) == camera
        # Windows that named no camera are the "default" camera's (as baselines and detectors name them).
        query = query.where(named | col(DriftWindowRecord.camera).is_(None) if camera == baseline.DEFAULT_CAMERA
                            else named)
    rows = session.exec(query.order_by(col(DriftWindowRecord.id).desc()).limit(limit))
    return [{"id": w.id, "camera": w.camera or baseline.DEFAULT_CAMERA, "window_seq": w.window_seq,
             "package_id": w.package_id, "model_version": w.model_version,
             "frames": w.frames, "frames_seen": w.frames_seen, "window_ended_at": w.window_ended_at,
             "tested": w.tested, "untested_reason": w.untested_reason, "p_value": w.p_value, "score": w.score,
             "cusum": w.cusum, "evidence": w.evidence} for w in rows]


@router.get("/fleet/{package_id}")
def fleet(package_id: str, session: SessionDep, plane: PlaneDep, minutes: float = Query(default=60.0, gt=0, le=7 * 24 * 60)
          ) -> dict[str, Any]:
    """Merge every device's windows of the last ``minutes`` for this package and test the sum."""
    return service.fleet_test(session, package_id, plane.settings.monitor, since_minutes=minutes)


@router.post("/fleet/{package_id}/evaluate")
def fleet_evaluate(package_id: str, session: SessionDep, plane: PlaneDep,
                   minutes: float = Query(default=60.0, gt=0, le=7 * 24 * 60)) -> dict[str, Any]:
    """Like GET, and opens a fleet alert when the merged window drifted."""
    return service.fleet_test(session, package_id, plane.settings.monitor, since_minutes=minutes, open_alert=True)


@router.post("/retention")
def retention(session: SessionDep, plane: PlaneDep, actor: ActorDep) -> dict[str, Any]:
    """Apply the sample and drift-window retention policies now (also run periodically by operators' cron)."""

    done = apply_retention(session, plane.settings.monitor)
    audit.record(session, actor=actor, action="retention.applied",
                 subject_type="retention", subject_id="monitor", details=done)
    session.commit()
    return done


class BaselineChoice(BaseModel):
    """Which proposed baseline to confirm, when the device has more than one camera or package."""

    model_config = ConfigDict(extra="forbid")

    camera: str | None = Field(default=None, min_length=1, max_length=64)
    package_id: str | None = Field(default=None, min_length=1, max_length=64)


@device_router.get("/devices/{device_id}/drift/baseline")
def device_baselines(device_id: str, session: SessionDep, plane: PlaneDep) -> list[dict[str, Any]]:
    """Each camera's baseline (collecting, proposed or confirmed), per package."""
    if not service.device_exists(session, device_id):
        raise NotFound(f"device {device_id!r} does not exist")
    return [baseline.baseline_detail(b, plane.settings.monitor) for b in baseline.list_baselines(session, device_id)]


@device_router.post("/devices/{device_id}/drift/baseline/confirm")
def confirm_device_baseline(device_id: str, session: SessionDep, plane: PlaneDep, request: Request,
                            choice: BaselineChoice | None = Body(default=None)) -> dict[str, Any]:
    """Confirm the camera's proposed baseline: from now on its windows are tested against it."""
    principal = getattr(request.state, "principal", None)
    actor = f"operator:{principal.name}" if principal is not None else "operator"
    chosen = choice or BaselineChoice()
    confirmed = baseline.confirm_baseline(session, device_id, plane.settings.monitor, actor=actor,
                                          camera=chosen.camera, package_id=chosen.package_id)
    return baseline.baseline_detail(confirmed, plane.settings.monitor)
