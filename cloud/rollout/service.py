"""Rollout data access: fleet facts, creating rollouts, operator actions, what `show` prints.

Routes, the CLI (through the API) and the engine call these; they hold no decision
logic of their own (that is :mod:`cloud.rollout.decisions` and :mod:`cloud.rollout.gates`).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from cloud.core.timestamps import utc_now
from cloud.fleet.camera_tables import DeviceCameraSet
from cloud.fleet.crud import Conflict, NotFound
from cloud.fleet.tables import Device, Package, TelemetryRecord
from cloud.governance import audit
from cloud.monitor.tables import DriftWindowRecord
from cloud.rollout.camera_view import DEFAULT_CAMERA, CameraWindow, camera_figures
from cloud.rollout.decisions import (
    DeviceState,
    InvalidAction,
    OperatorAction,
    RolloutState,
    apply_operator_action,
)
from cloud.rollout.gates import DetectionCounts, GroupStats, TelemetryWindow, aggregate
from cloud.rollout.planner import DeviceFacts, Plan, PlanError, plan_rollout
from cloud.rollout.spec import RolloutSpec
from cloud.rollout.tables import DeviceLabel, Rollout, RolloutDecision, RolloutDevice, RolloutWindow

__all__ = [
    "create_rollout",
    "fleet_facts",
    "get_labels",
    "list_rollouts",
    "operator_action",
    "plan_for_spec",
    "record_decision",
    "rollout_detail",
    "set_labels",
]


log = logging.getLogger(__name__)


def new_rollout_id() -> str:
    return f"ro-{uuid.uuid4().hex[:12]}"


# --- labels ------------------------------------------------------------------
def set_labels(session: Session, device_id: str, *, tags: list[str], groups: list[str]) -> dict[str, list[str]]:
    """Replace a device's tags and groups. Raises ``NotFound``."""
    if session.get(Device, device_id) is None:
        raise NotFound(f"device {device_id!r} does not exist")
    session.execute(delete(DeviceLabel).where(col(DeviceLabel.device_id) == device_id))
    session.add_all([DeviceLabel(device_id=device_id, kind="tag", value=v) for v in sorted(set(tags))])
    session.add_all([DeviceLabel(device_id=device_id, kind="group", value=v) for v in sorted(set(groups))])
    session.commit()
    return get_labels(session, device_id)


def get_labels(session: Session, device_id: str) -> dict[str, list[str]]:
    if session.get(Device, device_id) is None:
        raise NotFound(f"device {device_id!r} does not exist")
    labels = session.exec(select(DeviceLabel).where(DeviceLabel.device_id == device_id)).all()
    return {"tags": sorted(lb.value for lb in labels if lb.kind == "tag"),
            "groups": sorted(lb.value for lb in labels if lb.kind == "group")}


# --- planning ----------------------------------------------------------------
def fleet_facts(session: Session) -> list[DeviceFacts]:
    labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"tag": set(), "group": set()})
    for label in session.exec(select(DeviceLabel)):
        labels[label.device_id][label.kind].add(label.value)
    return [
        DeviceFacts(
            device_id=device.id, hardware_profile=device.hardware_profile, runtime=device.runtime,
            online=device.online, tags=frozenset(labels[device.id]["tag"]),
            groups=frozenset(labels[device.id]["group"]), running_package_id=device.running_package_id,
            running_model_version=device.running_model_version,
        )
        for device in session.exec(select(Device).order_by(col(Device.id)))
    ]


def _check_release(session: Session, spec: RolloutSpec) -> dict[str, Package]:
    packages: dict[str, Package] = {}
    for package_id in sorted(spec.release.package_ids()):
        package = session.get(Package, package_id)
        if package is None:
            raise NotFound(f"release names package {package_id!r}, which does not exist")
        packages[package_id] = package
    for profile, package_id in spec.release.packages.items():
        if profile not in packages[package_id].hardware_profiles:
            raise PlanError(f"release.packages[{profile!r}] = {package_id!r}, but that package is built for "
                            f"{packages[package_id].hardware_profiles}")
    return packages


def plan_for_spec(session: Session, spec: RolloutSpec) -> Plan:
    """Dry run: the plan this spec would get now. Raises ``NotFound`` or ``PlanError``."""
    packages = _check_release(session, spec)
    return plan_rollout(spec, fleet_facts(session), {pid: p.hardware_profiles for pid, p in packages.items()})


def telemetry_windows(session: Session, device_ids: list[str], since: datetime
                      ) -> list[tuple[TelemetryRecord, int, DetectionCounts | None]]:
    """Telemetry windows of ``device_ids`` received since ``since``, each with its invalid-output
    count and, for detection packages, its detection part."""
    if not device_ids:
        return []
    records = list(session.exec(select(TelemetryRecord).where(
        col(TelemetryRecord.device_id).in_(device_ids), col(TelemetryRecord.received_at) >= since)))
    invalid = dict(session.exec(select(RolloutWindow.message_id, RolloutWindow.invalid_outputs).where(
        col(RolloutWindow.device_id).in_(device_ids), col(RolloutWindow.received_at) >= since,
        col(RolloutWindow.invalid_outputs) > 0)).all())
    detections = detection_parts(session, device_ids, since)
    return [(record, int(invalid.get(record.message_id, 0)), detections.get(record.message_id))
            for record in records]


def detection_parts(session: Session, device_ids: list[str], since: datetime) -> dict[str, DetectionCounts]:
    """The detection part of each window of ``device_ids`` received since ``since``, by message id."""
    w = RolloutWindow
    query = sa_select(col(w.message_id), col(w.detection_frames), col(w.detection_boxes),
                      col(w.detection_mean_box_score), col(w.detection_object_counts)).where(
        col(w.device_id).in_(device_ids), col(w.received_at) >= since, col(w.detection_frames) > 0)
    return {message_id: DetectionCounts(frames=frames, boxes=boxes, mean_box_score=mean_score,
                                        object_counts=dict(objects or {}))
            for message_id, frames, boxes, mean_score, objects in session.execute(query)}


def object_counts_by_device(session: Session, since: datetime, model_version: str | None = None
                            ) -> dict[str, dict[str, int]]:
    """Objects per class each device reported (detection packages) since ``since``, summed over its
    windows; only windows of ``model_version`` when given. Devices without detection windows are absent."""
    w = RolloutWindow
    query = sa_select(col(w.device_id), col(w.detection_object_counts)).where(
        col(w.received_at) >= since, col(w.detection_frames) > 0)
    if model_version is not None:
        query = query.where(col(w.model_version) == model_version)
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for device_id, objects in session.execute(query):
        totals[device_id].update(objects or {})
    return {device_id: dict(counts) for device_id, counts in totals.items()}


def as_window(record: TelemetryRecord, invalid_outputs: int = 0,
              detection: DetectionCounts | None = None) -> TelemetryWindow:
    return TelemetryWindow(
        device_id=record.device_id, frames=record.frames,
        inference_errors=record.inference_errors + invalid_outputs, p95_latency_ms=record.p95_latency_ms,
        mean_confidence=record.mean_confidence, class_counts=dict(record.class_counts), detection=detection,
    )


def create_rollout(session: Session, spec: RolloutSpec, *, actor: str = "operator") -> Rollout:
    """Plan the spec and store the rollout with one row per device. The engine takes it from there.

    Raises:
        NotFound: a release package does not exist.
        PlanError: the target selects no device that can run the release.
    """
    now = utc_now()
    plan = plan_for_spec(session, spec)
    rollout = Rollout(
        id=new_rollout_id(), name=spec.name, spec=spec.model_dump(mode="json"), state=RolloutState.RUNNING,
        stage=0, phase="shadow" if spec.shadows_stage(0) else "install", phase_started_at=now,
        plan={"strata": plan.strata, "stage_sizes": plan.stage_sizes, "skipped": plan.skipped},
        budget_at=now, created_at=now, updated_at=now,
    )
    session.add(rollout)
    session.flush()
    session.add_all([
        RolloutDevice(
            rollout_id=rollout.id, device_id=d.device_id, stratum=d.stratum, stage=d.stage, package_id=d.package_id,
            previous_package_id=d.previous_package_id, previous_model_version=d.previous_model_version,
            state=DeviceState.PENDING, state_since=now, last_online=d.online,
        )
        for d in plan.devices
    ])
    # The previous version's recent telemetry per stratum: the control of last resort.
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for device in plan.devices:
        by_stratum[device.stratum].append(device.device_id)
    stratum_of_device = {d.device_id: d.stratum for d in plan.devices}
    windows: dict[str, list[TelemetryWindow]] = defaultdict(list)
    since = now - timedelta(seconds=spec.gates.control_window_s)
    for record, invalid, detection in telemetry_windows(session, list(stratum_of_device), since):
        if record.package_id not in spec.release.package_ids():
            windows[stratum_of_device[record.device_id]].append(as_window(record, invalid, detection))
    rollout.baseline = {key: aggregate(windows[key], devices=len(ids)).to_json() for key, ids in by_stratum.items()}
    record_decision(session, rollout, "created", f"planned {len(plan.devices)} devices in {len(plan.strata)} strata",
                    {"devices_per_stratum": plan.strata, "stage_sizes": plan.stage_sizes, "skipped": len(plan.skipped)},
                    actor=actor)
    audit.record(session, actor=actor, action="rollout.created", subject_type="rollout", subject_id=rollout.id,
                 details={"name": spec.name, "package_ids": sorted(spec.release.package_ids()),
                          "devices": len(plan.devices), "stages": len(spec.stages)})
    session.commit()
    session.refresh(rollout)
    log.info("rollout %s created by %s: %d devices in %d strata, %d stages", rollout.id, actor, len(plan.devices),
             len(plan.strata), len(plan.stage_sizes))
    return rollout


def record_decision(session: Session, rollout: Rollout, action: str, reason: str, numbers: dict[str, Any], *,
                    actor: str = "engine") -> None:
    session.add(RolloutDecision(rollout_id=rollout.id, stage=rollout.stage, action=action, actor=actor,
                                reason=reason[:4000], numbers=numbers, created_at=utc_now()))


# --- operator actions --------------------------------------------------------
def operator_action(session: Session, rollout_id: str, action: OperatorAction, *, actor: str = "operator") -> Rollout:
    """Apply an operator action. Waits for the row lock, so it never races an engine tick.

    Raises:
        NotFound: no such rollout.
        Conflict: the action does not apply in the rollout's current state.
    """
    rollout = session.exec(select(Rollout).where(Rollout.id == rollout_id).with_for_update()).first()
    if rollout is None:
        raise NotFound(f"rollout {rollout_id!r} does not exist")
    try:
        new_state = apply_operator_action(RolloutState(rollout.state), action)
    except InvalidAction as exc:
        raise Conflict(str(exc)) from exc
    now = utc_now()
    if action == OperatorAction.APPROVE:
        rollout.approved_stage = rollout.stage
    if action in (OperatorAction.ABORT, OperatorAction.CANCEL):
        rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all()
        for row in rows:
            if action == OperatorAction.ABORT and row.state in _TOUCHED:
                row.state, row.reason = DeviceState.ROLLBACK_PENDING, "operator aborted the rollout"
            elif row.state in (DeviceState.PENDING, DeviceState.OFFLINE) or (action == OperatorAction.CANCEL and (
                    row.state in _UNSETTLED)):
                row.state, row.reason = DeviceState.CANCELLED, f"operator {action.value}"
            else:
                continue
            row.state_since = now
            session.add(row)
    state_before = rollout.state
    if new_state.is_final:
        rollout.finished_at = now
    rollout.state = new_state
    rollout.updated_at = now
    session.add(rollout)
    record_decision(session, rollout, f"operator_{action.value}", f"{actor} chose {action.value}",
                    {"state_before": state_before, "state_after": new_state.value}, actor=actor)
    audit.record(session, actor=actor, action=f"rollout.operator_{action.value}", subject_type="rollout", subject_id=rollout.id,
                 details={"stage": rollout.stage, "state_before": str(state_before), "state_after": new_state.value})
    session.commit()
    session.refresh(rollout)
    log.info("rollout %s: %s chose %s (%s -> %s)", rollout_id, actor, action.value, state_before, new_state.value)
    return rollout


_TOUCHED = frozenset({DeviceState.QUEUED, DeviceState.DOWNLOADING, DeviceState.INSTALLING, DeviceState.PROBATION,
                      DeviceState.SUCCEEDED, DeviceState.FAILED})
_UNSETTLED = frozenset({DeviceState.QUEUED, DeviceState.DOWNLOADING, DeviceState.INSTALLING, DeviceState.PROBATION,
                        DeviceState.ROLLBACK_PENDING, DeviceState.ROLLING_BACK})


# --- reading -----------------------------------------------------------------
def get_rollout(session: Session, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id!r} does not exist")
    return rollout


def list_rollouts(session: Session) -> list[Rollout]:
    return list(session.exec(select(Rollout).order_by(col(Rollout.created_at).desc())))


def rollout_devices(session: Session, rollout_id: str) -> list[RolloutDevice]:
    return list(session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
                             .order_by(col(RolloutDevice.stage), col(RolloutDevice.device_id))))


def rollout_detail(session: Session, rollout_id: str, *, cameras: bool = True) -> dict[str, Any]:
    """Everything `edgefleet rollout show` prints: state, counts per stratum, every decision, and
    (``cameras``) each stage's devices with their cameras' figures."""
    rollout = get_rollout(session, rollout_id)
    rows = rollout_devices(session, rollout_id)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[row.stratum][row.state] += 1
    decisions = session.exec(select(RolloutDecision).where(RolloutDecision.rollout_id == rollout_id)
                             .order_by(col(RolloutDecision.id))).all()
    detail: dict[str, Any] = {
        "id": rollout.id, "name": rollout.name, "state": rollout.state, "stage": rollout.stage,
        "stages": len(rollout.spec.get("stages", [])), "phase": rollout.phase,
        "phase_started_at": rollout.phase_started_at, "halted_strata": rollout.halted_strata,
        "created_at": rollout.created_at, "finished_at": rollout.finished_at, "plan": rollout.plan,
        "spec": rollout.spec, "devices_by_stratum": {k: dict(v) for k, v in sorted(counts.items())},
        "device_count": len(rows), "evaluation": rollout.evaluation,
        "decisions": [{"id": d.id, "stage": d.stage, "action": d.action, "actor": d.actor, "reason": d.reason,
                       "numbers": d.numbers, "created_at": d.created_at} for d in decisions],
    }
    if cameras:
        detail["cameras_since"] = cameras_since(rollout)
        detail["stage_devices"] = stage_devices(session, rollout, rows)
    return detail


# Per-camera figures read at most this far back: a rollout page or `show` must stay cheap on a
# large fleet in a long phase (the gates themselves read the whole phase, in the engine).
CAMERA_FIGURES_MAX_S = 3600.0


def cameras_since(rollout: Rollout) -> datetime:
    """Where per-camera figures start: the current phase's start, at most CAMERA_FIGURES_MAX_S ago."""
    return max(rollout.phase_started_at, utc_now() - timedelta(seconds=CAMERA_FIGURES_MAX_S))


def device_cameras(session: Session, device_ids: list[str], since: datetime) -> dict[str, list[dict[str, Any]]]:
    """Per device, its cameras' figures over the windows received since ``since``
    (:func:`cloud.rollout.camera_view.camera_figures`)."""
    if not device_ids:
        return {}
    t = TelemetryRecord
    query = sa_select(col(t.message_id), col(t.device_id), col(t.camera), col(t.sent_at), col(t.model_version),
                      col(t.package_id), col(t.window_s), col(t.frames), col(t.inference_errors),
                      col(t.p95_latency_ms), col(t.mean_confidence), col(t.class_counts),
                      col(t.capture_to_result_p95_ms), col(t.stale_frames_dropped)).where(
        col(t.device_id).in_(device_ids), col(t.received_at) >= since)
    invalid = dict(session.exec(select(RolloutWindow.message_id, RolloutWindow.invalid_outputs).where(
        col(RolloutWindow.device_id).in_(device_ids), col(RolloutWindow.received_at) >= since,
        col(RolloutWindow.invalid_outputs) > 0)).all())
    detections = detection_parts(session, device_ids, since)
    windows: dict[str, list[CameraWindow]] = defaultdict(list)
    for (message_id, device_id, camera, sent_at, model_version, package_id, window_s, frames, errors, p95,
         confidence, classes, capture_p95, stale) in session.execute(query):
        windows[device_id].append(CameraWindow(
            camera=camera or DEFAULT_CAMERA, sent_at=sent_at, model_version=model_version,
            package_id=package_id, window_s=window_s, capture_to_result_p95_ms=capture_p95,
            stale_frames_dropped=stale, window=TelemetryWindow(
                device_id=device_id, frames=frames, inference_errors=errors + int(invalid.get(message_id, 0)),
                p95_latency_ms=p95, mean_confidence=confidence, class_counts=dict(classes or {}),
                detection=detections.get(message_id))))
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for device_id, camera, score in session.exec(select(
            DriftWindowRecord.device_id, DriftWindowRecord.camera, DriftWindowRecord.score).where(
            col(DriftWindowRecord.device_id).in_(device_ids), col(DriftWindowRecord.received_at) >= since,
            col(DriftWindowRecord.score).is_not(None))):
        if score is not None:
            scores[device_id][camera or DEFAULT_CAMERA].append(float(score))
    reported = {row.device_id: [str(c.get("spec", {}).get("name")) for c in row.reported if c.get("spec")]
                for row in session.exec(select(DeviceCameraSet).where(col(DeviceCameraSet.device_id).in_(device_ids)))}
    return {device_id: camera_figures(windows.get(device_id, []), known_cameras=reported.get(device_id, []),
                                      drift_scores=scores.get(device_id))
            for device_id in device_ids}


def stage_devices(session: Session, rollout: Rollout, rows: list[RolloutDevice]) -> list[dict[str, Any]]:
    """Each stage's devices with their cameras beneath them, figures from :func:`cameras_since`."""
    cameras = device_cameras(session, [row.device_id for row in rows], cameras_since(rollout))
    stages: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        stages[row.stage].append({"device_id": row.device_id, "stratum": row.stratum, "state": row.state,
                                  "package_id": row.package_id, "restarts": row.restarts,
                                  "cameras": cameras.get(row.device_id, [])})
    return [{"stage": stage, "devices": devices} for stage, devices in sorted(stages.items())]


def baseline_stats(rollout: Rollout, stratum: str) -> GroupStats:
    document = rollout.baseline.get(stratum)
    return GroupStats.from_json(document) if document else GroupStats()


__all__ += ["as_window", "baseline_stats", "cameras_since", "detection_parts", "device_cameras", "get_rollout",
            "object_counts_by_device", "rollout_devices", "stage_devices", "telemetry_windows"]
