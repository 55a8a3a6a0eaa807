"""Per-camera drift baselines: what each camera normally sees, instead of the training images.

A package's reference describes its training (validation) images. A camera that films
a darker or busier scene than those differs from them all the time, and would alarm
as loudly as a camera whose lens is covered. So each camera (device and pipeline)
under each package learns a baseline from its first ``baseline_windows`` tested
windows: their histograms summed, binned with the package's edges. The control plane
proposes it; once an operator confirms it (the camera was looking at its normal
scene), that camera's windows are tested against the baseline, with the CUSUM
allowance ``k`` raised to how much the baseline's own windows differ from one another
(each scored against the sum of the others), so a steady scene stays quiet.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, func, select

from agent.contract import DriftReport
from agent.contract.drift import DriftReference, decode_histograms
from cloud.core.timestamps import utc_now
from cloud.errors import ConflictError, NotFoundError
from cloud.fleet.tables import Device
from cloud.governance import audit
from cloud.monitor.config import MonitorSettings
from cloud.monitor.stats import evaluate_window
from cloud.monitor.tables import DriftAlert, DriftBaseline, DriftDetectorState, DriftWindowRecord

__all__ = [
    "DEFAULT_CAMERA",
    "baseline_detail",
    "baseline_reference",
    "camera_of",
    "confirm_baseline",
    "confirmed_baseline",
    "fleet_drift_states",
    "learn_from_window",
    "list_baselines",
]

DEFAULT_CAMERA = "default"


def camera_of(report: DriftReport) -> str:
    return report.pipeline or DEFAULT_CAMERA


def _find(session: Session, device_id: str, camera: str, package_id: str) -> DriftBaseline | None:
    return session.exec(select(DriftBaseline).where(col(DriftBaseline.device_id) == device_id,
                                                    col(DriftBaseline.camera) == camera,
                                                    col(DriftBaseline.package_id) == package_id)).first()


def confirmed_baseline(session: Session, report: DriftReport) -> DriftBaseline | None:
    if report.package_id is None:
        return None
    baseline = _find(session, report.device_id, camera_of(report), report.package_id)
    return baseline if baseline is not None and baseline.state == "confirmed" else None


def _with_counts(reference: DriftReference, counts: npt.NDArray[np.int64], class_counts: list[int],
                 means: list[float], stds: list[float], frames: int, k: float | None, source: str) -> DriftReference:
    features = [feature.model_copy(update={"counts": [int(c) for c in counts[i]], "mean": means[i], "std": stds[i]})
                for i, feature in enumerate(reference.features)]
    calibration = reference.calibration if k is None else reference.calibration.model_copy(update={"k": k})
    return reference.model_copy(update={"features": features, "class_counts": list(class_counts),
                                        "reference_size": max(1, frames), "calibration": calibration,
                                        "source": source[:256]})


def baseline_reference(reference: DriftReference, baseline: DriftBaseline) -> DriftReference:
    """The package's reference with the camera's baseline in place of the training counts."""
    frames = max(1, baseline.frames)
    means = [s / frames for s in baseline.mean_sums]
    stds = [math.sqrt(max(0.0, q / frames - m * m)) for q, m in zip(baseline.square_sums, means, strict=True)]
    return _with_counts(reference, np.asarray(baseline.counts, dtype=np.int64), list(baseline.class_counts), means,
                        stds, baseline.frames, baseline.k,
                        f"baseline of {baseline.device_id}/{baseline.camera} under {baseline.package_id}")


def learn_from_window(session: Session, report: DriftReport, record: DriftWindowRecord, reference: DriftReference,
                      counts: npt.NDArray[np.int64], means: list[float], settings: MonitorSettings) -> None:
    """Add a tested window to its camera's baseline while it is collecting; propose it when full."""
    if report.package_id is None or record.id is None:
        return
    camera = camera_of(report)
    baseline = _find(session, report.device_id, camera, report.package_id)
    if baseline is None:
        baseline = DriftBaseline(device_id=report.device_id, camera=camera, package_id=report.package_id,
                                 features=reference.feature_names,
                                 counts=np.zeros_like(counts).tolist(), class_counts=[0] * len(reference.labels),
                                 mean_sums=[0.0] * len(means), square_sums=[0.0] * len(means))
    if baseline.state != "collecting":
        return
    frames = int(report.frames)
    stds = list(report.stds) if len(report.stds) == len(report.means) else [0.0] * len(report.means)
    if report.features != reference.feature_names:  # the window's stds in the reference's feature order
        index = {name: i for i, name in enumerate(report.features)}
        stds = [stds[index[name]] for name in reference.feature_names]
    baseline.counts = (np.asarray(baseline.counts, dtype=np.int64) + counts).tolist()
    if len(report.class_counts) == len(baseline.class_counts):
        baseline.class_counts = [a + int(b) for a, b in zip(baseline.class_counts, report.class_counts, strict=True)]
    baseline.mean_sums = [s + m * frames for s, m in zip(baseline.mean_sums, means, strict=True)]
    baseline.square_sums = [q + (sd * sd + m * m) * frames
                            for q, sd, m in zip(baseline.square_sums, stds, means, strict=True)]
    baseline.frames += frames
    baseline.windows += 1
    baseline.window_ids = [*baseline.window_ids, record.id]
    if baseline.windows >= settings.baseline_windows:
        baseline.k, baseline.loo_scores = _allowance(session, reference, baseline, settings)
        baseline.state, baseline.proposed_at = "proposed", utc_now()
        session.add(baseline)
        session.flush()
        audit.record(session, actor="monitor", action="baseline.proposed", subject_type="drift_baseline",
                     subject_id=str(baseline.id), details={"device_id": baseline.device_id, "camera": camera,
                                                           "package_id": baseline.package_id,
                                                           "windows": baseline.windows, "frames": baseline.frames,
                                                           "k": baseline.k})
        return
    session.add(baseline)


def _allowance(session: Session, reference: DriftReference, baseline: DriftBaseline,
               settings: MonitorSettings) -> tuple[float, list[float]]:
    """Score each baseline window against the sum of the others; ``k`` covers the worst of them.

    Frames of one camera are correlated from window to window, far more than the
    reference's calibration assumes; the leave-one-out scores measure by how much.
    """
    windows = session.exec(select(DriftWindowRecord).where(col(DriftWindowRecord.id).in_(baseline.window_ids))).all()
    total = np.asarray(baseline.counts, dtype=np.int64)
    class_total = np.asarray(baseline.class_counts, dtype=np.int64)
    scores: list[float] = []
    for window in windows:
        counts = decode_histograms(window.histograms, len(window.features))
        if list(window.features) != reference.feature_names:
            index = {name: i for i, name in enumerate(window.features)}
            counts = np.stack([counts[index[name]] for name in reference.feature_names])
        classes = np.asarray(window.class_counts, dtype=np.int64)
        same_classes = classes.shape == class_total.shape
        rest_classes = (class_total - classes).tolist() if same_classes else list(baseline.class_counts)
        rest = _with_counts(reference, total - counts, rest_classes, [f.mean for f in reference.features],
                            [f.std for f in reference.features], int(total.sum(axis=1).max()), None, "")
        result = evaluate_window(rest, counts, list(window.class_counts) if same_classes else None,
                                 min_frames=settings.min_window_frames)
        if result.tested:
            scores.append(round(result.score, 3))
    worst = max(scores, default=0.0)
    return round(max(reference.calibration.k, settings.baseline_k_margin * worst), 4), scores


def list_baselines(session: Session, device_id: str) -> list[DriftBaseline]:
    return list(session.exec(select(DriftBaseline).where(col(DriftBaseline.device_id) == device_id)
                             .order_by(col(DriftBaseline.id))))


def baseline_detail(baseline: DriftBaseline, settings: MonitorSettings) -> dict[str, Any]:
    return {"id": baseline.id, "device_id": baseline.device_id, "camera": baseline.camera,
            "package_id": baseline.package_id, "state": baseline.state, "windows": baseline.windows,
            "windows_needed": settings.baseline_windows, "frames": baseline.frames, "k": baseline.k,
            "loo_scores": baseline.loo_scores, "created_at": baseline.created_at,
            "proposed_at": baseline.proposed_at, "confirmed_at": baseline.confirmed_at,
            "confirmed_by": baseline.confirmed_by}


def confirm_baseline(session: Session, device_id: str, settings: MonitorSettings, *, actor: str,
                     camera: str | None = None, package_id: str | None = None) -> DriftBaseline:
    """Make the device's proposed baseline the one its windows are tested against.

    Resets the camera's sequential test and clears the camera's open alert under that
    package: the operator has said that what the camera sees is its normal scene.

    Raises:
        NotFoundError: unknown device.
        ConflictError: no proposed baseline (saying how many windows it still needs), or
            several cameras with one each and no ``camera`` to choose.
    """
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    baselines = [b for b in list_baselines(session, device_id)
                 if (camera is None or b.camera == camera) and (package_id is None or b.package_id == package_id)]
    proposed = [b for b in baselines if b.state == "proposed"]
    which = f"{device_id}" + (f" camera {camera}" if camera else "")
    if not proposed:
        collecting = [b for b in baselines if b.state == "collecting"]
        if collecting:
            progress = ", ".join(f"camera {b.camera}: {b.windows} of {settings.baseline_windows} windows"
                                 for b in collecting)
            raise ConflictError(f"no baseline to confirm yet for {which} ({progress}); it is proposed once "
                                f"{settings.baseline_windows} tested windows have arrived (about "
                                f"{settings.baseline_windows} x the agent's monitoring.window_s)")
        if any(b.state == "confirmed" for b in baselines):
            raise ConflictError(f"the baseline of {which} is already confirmed")
        raise ConflictError(f"no drift windows from {which} yet: a baseline is proposed after "
                            f"{settings.baseline_windows} tested windows of a package with a drift reference")
    if len(proposed) > 1:
        choices = ", ".join(sorted({f"{b.camera} ({b.package_id})" for b in proposed}))
        raise ConflictError(f"{device_id} has proposed baselines for several cameras or packages ({choices}); "
                            "name one with camera (and package_id)")
    baseline = proposed[0]
    baseline.state, baseline.confirmed_at, baseline.confirmed_by = "confirmed", utc_now(), actor[:128]
    session.add(baseline)
    detector = session.get(DriftDetectorState, (device_id, baseline.camera, baseline.package_id))
    if detector is not None:
        detector.statistic, detector.alarm, detector.clean_run, detector.clean_streak = 0.0, False, 0, 0
        detector.updated_at = utc_now()
        session.add(detector)
    open_alert = session.exec(select(DriftAlert).where(
        col(DriftAlert.scope) == "device", col(DriftAlert.device_id) == device_id,
        (col(DriftAlert.camera) == baseline.camera) | col(DriftAlert.camera).is_(None),
        col(DriftAlert.package_id) == baseline.package_id, col(DriftAlert.state) == "open")).first()
    if open_alert is not None:
        open_alert.state, open_alert.cleared_at = "cleared", utc_now()
        open_alert.cleared_reason = f"camera {baseline.camera}'s baseline confirmed as its normal scene by {actor}"[:256]
        session.add(open_alert)
        audit.record(session, actor=actor, action="alert.cleared", subject_type="drift_alert",
                     subject_id=open_alert.id, details={"device_id": device_id, "reason": open_alert.cleared_reason})
    audit.record(session, actor=actor, action="baseline.confirmed", subject_type="drift_baseline",
                 subject_id=str(baseline.id), details={"device_id": device_id, "camera": baseline.camera,
                                                       "package_id": baseline.package_id, "k": baseline.k,
                                                       "windows": baseline.windows})
    session.commit()
    session.refresh(baseline)
    return baseline


def _state(open_alerts: int, window: DriftWindowRecord | None, baseline_states: list[str]) -> str:
    if open_alerts:
        return "alert"
    if window is None:
        return "no data"
    if "proposed" in baseline_states:
        return "baseline pending"
    return "ok"


def _window_fields(window: DriftWindowRecord | None) -> dict[str, Any]:
    return {"last_window_at": window.window_ended_at if window else None,
            "last_window_score": window.score if window else None,
            "last_window_class_counts": list(window.class_counts) if window else []}


def fleet_drift_states(session: Session) -> list[dict[str, Any]]:
    """Per device, and per camera under it: open alerts, the newest window and baseline, and their sum.

    ``state`` is ``alert`` (an open alert), ``no data`` (no window yet), ``baseline pending``
    (a proposed baseline waits for an operator) or ``ok``; a device's is its cameras' worst.
    Each camera's scene is its own population, so its test result, alert and baseline are its own.
    """
    newest = (select(DriftWindowRecord.device_id, DriftWindowRecord.camera,
                     func.max(DriftWindowRecord.id).label("max_id"))
              .group_by(col(DriftWindowRecord.device_id), col(DriftWindowRecord.camera)).subquery())
    windows: dict[tuple[str, str], DriftWindowRecord] = {
        (w.device_id, w.camera or DEFAULT_CAMERA): w
        for w in session.exec(select(DriftWindowRecord).join(newest, col(DriftWindowRecord.id) == newest.c.max_id))}
    alerts: dict[str, list[DriftAlert]] = {}
    for alert in session.exec(select(DriftAlert).where(col(DriftAlert.scope) == "device",
                                                       col(DriftAlert.state) == "open")):
        if alert.device_id is not None:
            alerts.setdefault(alert.device_id, []).append(alert)
    baselines: dict[tuple[str, str], list[DriftBaseline]] = {}
    for row in session.exec(select(DriftBaseline).order_by(col(DriftBaseline.id))):
        baselines.setdefault((row.device_id, row.camera), []).append(row)
    cameras_of: dict[str, set[str]] = {}
    for device_id, camera in (*windows, *baselines):
        cameras_of.setdefault(device_id, set()).add(camera)
    for device_id, device_alerts in alerts.items():
        cameras_of.setdefault(device_id, set()).update(a.camera for a in device_alerts if a.camera is not None)
    rows = []
    for device_id in sorted(cameras_of):
        cameras = []
        for camera in sorted(cameras_of[device_id]):
            window = windows.get((device_id, camera))
            own = [b for b in baselines.get((device_id, camera), [])
                   if window is None or b.package_id == window.package_id]
            # An alert stored without a camera (before alerts were per camera) shows under each camera.
            camera_alerts = [a for a in alerts.get(device_id, []) if a.camera in (camera, None)]
            baseline_states = sorted({b.state for b in own})
            cameras.append({
                "camera": camera, "state": _state(len(camera_alerts), window, baseline_states),
                "open_alerts": len(camera_alerts), "alert_ids": [a.id for a in camera_alerts],
                "baseline": baseline_states,
                "baseline_windows": max((b.windows for b in own if b.state == "collecting"), default=None),
                "package_id": window.package_id if window else None,
                "model_version": window.model_version if window else None,
                "last_window_tested": window.tested if window else None,
                "last_window_untested_reason": window.untested_reason if window else None,
                "last_window_p_value": window.p_value if window else None,
                "last_window_cusum": window.cusum if window else None,
                **_window_fields(window)})
        newest_window = max((w for (d, _), w in windows.items() if d == device_id),
                            key=lambda w: w.id or 0, default=None)
        # An alert stored without a camera has no camera row to show it: the device still shows it.
        worst = "alert" if alerts.get(device_id) else next(
            (s for s in ("alert", "baseline pending", "ok") if any(c["state"] == s for c in cameras)), "no data")
        rows.append({"device_id": device_id, "state": worst, "open_alerts": len(alerts.get(device_id, [])),
                     "baseline": sorted({s for c in cameras for s in c["baseline"]}),
                     **_window_fields(newest_window), "cameras": cameras})
    return rows
