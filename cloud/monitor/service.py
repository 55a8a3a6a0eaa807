"""Drift and sample ingest, alerts and the fleet test: data access and orchestration.

The decisions are pure (:mod:`cloud.monitor.stats`); this module loads the
reference a window must be tested against, keeps the detector state in the
database, opens and clears alerts, and records each step in the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from agent.contract import DriftReport, PackageManifest, Report, SampleReport, sha256_bytes
from agent.contract.drift import DriftReference, decode_histograms
from agent.contract.messages import DetectionDrift
from cloud.core.timestamps import utc_now
from cloud.errors import NotFoundError
from cloud.fleet.tables import Device, Package
from cloud.governance import audit
from cloud.governance.proposals import attach_alert
from cloud.monitor import baseline
from cloud.monitor.config import MonitorSettings
from cloud.monitor.stats import Cusum, CusumState, DetectionCounts, WindowTest, evaluate_window
from cloud.monitor.tables import (
    DriftAlert,
    DriftBaseline,
    DriftDetectorState,
    DriftWindowRecord,
    SampleBlob,
    SampleRecord,
)

log = logging.getLogger(__name__)

__all__ = [
    "alert_detail",
    "fleet_test",
    "install",
    "list_alerts",
    "load_reference",
    "open_camera_alert",
    "store_blob",
    "store_drift_report",
    "store_monitor_report",
    "store_sample_report",
]

MONITOR_ACTOR = "monitor"
Reject = Callable[[str, str], None]


# --- references ----------------------------------------------------------------
class _ReferenceCache:
    """Package references are immutable (the manifest pins them by hash): cache by package id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[DriftReference, str]] = {}

    def get(self, session: Session, package_id: str) -> tuple[DriftReference, str] | None:
        with self._lock:
            if package_id in self._entries:
                return self._entries[package_id]
        loaded = _read_reference(session, package_id)
        if loaded is not None:  # a miss is not cached: the package may be registered a moment later
            with self._lock:
                self._entries[package_id] = loaded
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _read_reference(session: Session, package_id: str) -> tuple[DriftReference, str] | None:
    package = session.get(Package, package_id)
    if package is None:
        return None
    directory = Path(package.path)
    try:
        manifest = PackageManifest.from_bytes((directory / "manifest.json").read_bytes())
        if manifest.drift_reference_file is None:
            return None
        raw = (directory / manifest.drift_reference_file).read_bytes()
        if sha256_bytes(raw) != manifest.file(manifest.drift_reference_file).sha256:
            log.error("drift reference of package %s does not match its manifest", package_id)
            return None
        return DriftReference.from_bytes(raw), sha256_bytes(raw)
    except (OSError, ValueError, KeyError) as exc:
        log.error("cannot read the drift reference of package %s: %s", package_id, exc)
        return None


_references = _ReferenceCache()


def load_reference(session: Session, package_id: str) -> DriftReference | None:
    entry = _references.get(session, package_id)
    return None if entry is None else entry[0]


# --- ingest --------------------------------------------------------------------
def store_monitor_report(session: Session, report: Report, reject: Reject, settings: MonitorSettings) -> bool:
    """Ingest entry point. Returns False for a duplicate or a rejected report (``reject`` counts it).

    Adds to ``session`` without committing: the caller (ingest) commits its batch.
    """
    if isinstance(report, DriftReport):
        return store_drift_report(session, report, reject, settings)
    if isinstance(report, SampleReport):
        return store_sample_report(session, report, reject, settings)
    reject("unsupported_kind", f"cloud.monitor does not store {report.kind!r} reports")
    return False


def install(ingest: object, settings: MonitorSettings) -> bool:
    """Register the drift and sample handlers on a :class:`cloud.messaging.ingest.ReportIngest`."""
    handlers = getattr(ingest, "kind_handlers", None)
    if handlers is None:
        log.error("this ingest has no kind_handlers hook; drift and sample reports will be rejected")
        return False

    def handler(session: Session, report: Report, reject: Reject) -> bool:
        return store_monitor_report(session, report, reject, settings)

    handlers["drift"] = handler
    handlers["sample"] = handler
    return True


def _aligned(report: DriftReport, reference: DriftReference) -> tuple[np.ndarray, list[float]] | None:
    """The window's histograms and means in the reference's feature order (None if some are missing)."""
    counts = decode_histograms(report.histograms, len(report.features))
    if report.features == reference.feature_names:
        return counts, list(report.means)
    index = {name: i for i, name in enumerate(report.features)}
    if not all(name in index for name in reference.feature_names):
        return None
    order = [index[name] for name in reference.feature_names]
    return np.stack([counts[i] for i in order]), [report.means[i] for i in order]


def _detection_counts(report: DriftReport) -> DetectionCounts | None:
    return DetectionCounts.from_window(report.detection) if report.detection is not None else None


def store_drift_report(session: Session, report: DriftReport, reject: Reject, settings: MonitorSettings) -> bool:
    """Store one window, test it against its package's reference, step its camera's detector.

    Opens an alert for the camera (and a retraining proposal) when the detector alarms;
    clears the camera's open alert after enough clean windows, under this or a newer package.
    """
    if session.exec(select(DriftWindowRecord.id).where(col(DriftWindowRecord.message_id) == report.message_id)).first():
        return False
    record = DriftWindowRecord(
        message_id=report.message_id, device_id=report.device_id, camera=report.pipeline,
        model_version=report.model_version, package_id=report.package_id, window_seq=report.window_seq,
        window_started_at=report.window_started_at, window_ended_at=report.window_ended_at, frames=report.frames,
        frames_seen=report.frames_seen,
        features=list(report.features), histograms=report.histograms, means=list(report.means),
        stds=list(report.stds), class_counts=list(report.class_counts), local_score=report.local_score,
        detection=report.detection.model_dump(mode="json") if report.detection is not None else None,
    )
    entry = _references.get(session, report.package_id) if report.package_id else None
    result: WindowTest | None = None
    tested_against: DriftReference | None = None
    own: DriftBaseline | None = None
    aligned: tuple[np.ndarray, list[float]] | None = None
    if entry is None:
        record.untested_reason = "no drift reference for this package"
    else:
        reference, reference_sha = entry
        if report.reference_sha256 is not None and report.reference_sha256 != reference_sha:
            reject("reference_mismatch", f"window of {report.device_id} was binned with reference "
                                         f"{report.reference_sha256[:12]}, package has {reference_sha[:12]}")
            return False
        aligned = _aligned(report, reference)
        if aligned is None:
            record.untested_reason = "window features do not cover the reference's features"
        else:
            # A camera with a confirmed baseline is compared with what it normally sees.
            own = baseline.confirmed_baseline(session, report)
            if own is not None:
                reference = baseline.baseline_reference(reference, own)
            tested_against = reference
            result = evaluate_window(reference, aligned[0], list(report.class_counts), means=aligned[1],
                                     min_frames=settings.min_window_frames, detection=_detection_counts(report))
            if not result.tested:
                record.untested_reason = f"fewer than {settings.min_window_frames} frames"
                result = None
    if result is not None:
        record.tested, record.p_value, record.score = True, result.p_value, result.score
        record.evidence = {**result.evidence(),
                           "compared_with": "camera baseline" if own is not None else "package reference"}
    # No commit here: ingest commits the whole batch (a unique-key clash from a concurrent
    # worker fails the batch, which ingest retries report by report; the check above then
    # finds the duplicate).
    session.add(record)
    session.flush()
    if result is not None and tested_against is not None and report.package_id is not None:
        if own is None and aligned is not None:
            baseline.learn_from_window(session, report, record, tested_against, aligned[0], aligned[1], settings)
        _step_detector(session, report, record, result, tested_against, settings)
    return True


def _step_detector(session: Session, report: DriftReport, record: DriftWindowRecord, result: WindowTest,
                   reference: DriftReference, settings: MonitorSettings) -> None:
    assert report.package_id is not None
    camera = baseline.camera_of(report)
    row = session.get(DriftDetectorState, (report.device_id, camera, report.package_id))
    if row is None:
        row = DriftDetectorState(device_id=report.device_id, camera=camera, package_id=report.package_id)
    cusum = Cusum(reference.calibration, CusumState(row.statistic, row.alarm, row.clean_run, row.windows))
    event = cusum.step(result.score)
    row.statistic, row.alarm, row.clean_run, row.windows = (cusum.state.statistic, cusum.state.alarm,
                                                            cusum.state.clean_run, cusum.state.windows)
    row.clean_streak = row.clean_streak + 1 if result.score <= reference.calibration.k else 0
    row.updated_at = utc_now()
    record.cusum = round(row.statistic, 4)
    session.add(row)
    open_alert = open_camera_alert(session, report.device_id, camera)
    if event == "open":
        assert record.id is not None
        if open_alert is None:
            alert = DriftAlert(id=f"al-{uuid.uuid4().hex[:12]}", scope="device", device_id=report.device_id,
                               camera=camera, package_id=report.package_id, model_version=report.model_version,
                               score=round(result.score, 3), window_ids=[record.id],
                               evidence={**result.evidence(), "cusum": round(row.statistic, 3),
                                         "k": reference.calibration.k, "h": reference.calibration.h,
                                         "window_seq": report.window_seq})
            session.add(alert)
            audit.record(session, actor=MONITOR_ACTOR, action="alert.opened", subject_type="drift_alert",
                         subject_id=alert.id, details={"device_id": report.device_id, "camera": camera,
                                                       "package_id": report.package_id, "score": alert.score,
                                                       "cusum": round(row.statistic, 3),
                                                       "drifted_features": result.drifted_features})
            session.flush()
            if settings.propose_retraining:

                attach_alert(session, alert, actor=MONITOR_ACTOR)
        else:
            open_alert.window_ids = [*open_alert.window_ids, record.id]
            session.add(open_alert)
        return
    if open_alert is None:
        return
    cleared = event == "clear" and open_alert.package_id == report.package_id
    # After a model change the old package's detector hears nothing more: the new
    # package's clean windows decide whether the device is still shifted.
    moved_on = (open_alert.package_id != report.package_id and not row.alarm
                and row.clean_streak >= reference.calibration.clear_windows)
    if cleared or moved_on:
        open_alert.state, open_alert.cleared_at = "cleared", utc_now()
        open_alert.cleared_reason = (f"{reference.calibration.clear_windows} clean windows under package "
                                     f"{report.package_id}")
        session.add(open_alert)
        audit.record(session, actor=MONITOR_ACTOR, action="alert.cleared", subject_type="drift_alert",
                     subject_id=open_alert.id, details={"device_id": report.device_id,
                                                        "package_id": report.package_id,
                                                        "reason": open_alert.cleared_reason})


def open_camera_alert(session: Session, device_id: str, camera: str) -> DriftAlert | None:
    """The camera's open device alert (an alert stored without a camera counts for all of the device's)."""
    return session.exec(select(DriftAlert).where(
        col(DriftAlert.scope) == "device", col(DriftAlert.device_id) == device_id,
        (col(DriftAlert.camera) == camera) | col(DriftAlert.camera).is_(None),
        col(DriftAlert.state) == "open")).first()


def store_blob(session: Session, device_id: str, content: bytes) -> str:
    """Store an uploaded sample image; idempotent by content. Returns its sha256."""
    digest = hashlib.sha256(content).hexdigest()
    if session.get(SampleBlob, digest) is None:
        session.add(SampleBlob(sha256=digest, device_id=device_id, content=content, size_bytes=len(content)))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
    return digest


def store_sample_report(session: Session, report: SampleReport, reject: Reject, settings: MonitorSettings) -> bool:
    if session.exec(select(SampleRecord.id).where(
            (col(SampleRecord.message_id) == report.message_id) | (col(SampleRecord.sample_id) == report.sample_id)
    )).first():
        return False
    if report.upload == "inline" and report.image_b64 is not None and report.image_sha256 is not None:
        content = base64.b64decode(report.image_b64)
        if session.get(SampleBlob, report.image_sha256) is None:
            session.add(SampleBlob(sha256=report.image_sha256, device_id=report.device_id, content=content,
                                   size_bytes=len(content)))
    elif report.upload == "http" and report.image_sha256 is not None:
        blob = session.get(SampleBlob, report.image_sha256)
        if blob is None:
            reject("missing_upload", f"sample {report.sample_id} names image {report.image_sha256[:12]} "
                                     "that was never uploaded")
            return False
        if blob.size_bytes != report.image_bytes:
            reject("upload_mismatch", f"sample {report.sample_id} says {report.image_bytes} bytes, "
                                      f"the upload has {blob.size_bytes}")
            return False
    session.add(SampleRecord(
        message_id=report.message_id, sample_id=report.sample_id, device_id=report.device_id,
        camera=report.pipeline, model_version=report.model_version, package_id=report.package_id,
        sampler=report.sampler, reason=report.reason, captured_at=report.captured_at,
        predicted_label=report.predicted_label,
        confidence=report.confidence, features=dict(report.features), stats_only=report.stats_only,
        image_sha256=report.image_sha256, image_bytes=report.image_bytes, image_width=report.image_width,
        image_height=report.image_height, boxes=[box.model_dump(mode="json") for box in report.boxes],
        status="unlabelled" if not report.stats_only else "stats_only",
    ))
    session.flush()  # ingest commits the batch
    return True


# --- alerts and fleet ----------------------------------------------------------
def list_alerts(session: Session, *, state: str | None = None, device_id: str | None = None,
                limit: int = 200) -> list[DriftAlert]:
    query = select(DriftAlert)
    if state is not None:
        query = query.where(col(DriftAlert.state) == state)
    if device_id is not None:
        query = query.where(col(DriftAlert.device_id) == device_id)
    return list(session.exec(query.order_by(col(DriftAlert.opened_at).desc()).limit(limit)))


def alert_detail(alert: DriftAlert) -> dict[str, Any]:
    return {"id": alert.id, "scope": alert.scope, "device_id": alert.device_id, "camera": alert.camera,
            "package_id": alert.package_id,
            "model_version": alert.model_version, "state": alert.state, "opened_at": alert.opened_at,
            "cleared_at": alert.cleared_at, "cleared_reason": alert.cleared_reason, "score": alert.score,
            "window_ids": alert.window_ids, "evidence": alert.evidence, "proposal_id": alert.proposal_id}


def fleet_test(session: Session, package_id: str, settings: MonitorSettings, *, since_minutes: float = 60.0,
               open_alert: bool = False) -> dict[str, Any]:
    """Merge every device's windows of the last ``since_minutes`` (histograms add) and test the sum.

    With ``open_alert``, a fleet alert opens when the merged window scores above ``k + h``
    (one decision on a large merged window; no sequential rule needed).

    Raises:
        NotFoundError: the package has no drift reference.
    """
    reference = load_reference(session, package_id)
    if reference is None:
        raise NotFoundError(f"package {package_id!r} has no drift reference")
    since = utc_now() - timedelta(minutes=since_minutes)
    windows = list(session.exec(select(DriftWindowRecord).where(col(DriftWindowRecord.package_id) == package_id,
                                                                col(DriftWindowRecord.received_at) >= since)))
    total = np.zeros((len(reference.features), reference.bins), dtype=np.int64)
    classes = np.zeros(len(reference.labels), dtype=np.int64)
    detection: DetectionCounts | None = None
    devices: set[str] = set()
    used = 0
    for window in windows:
        if window.features != reference.feature_names:
            continue
        total += decode_histograms(window.histograms, len(window.features))
        if len(window.class_counts) == len(classes):
            classes += np.asarray(window.class_counts, dtype=np.int64)
        if window.detection is not None and reference.detection is not None:
            counts = DetectionCounts.from_window(DetectionDrift.model_validate(window.detection))
            detection = counts if detection is None else detection + counts
        devices.add(window.device_id)
        used += 1
    result = evaluate_window(reference, total, classes.tolist(), min_frames=settings.min_window_frames,
                             detection=detection)
    summary: dict[str, Any] = {"package_id": package_id, "devices": sorted(devices), "windows": used,
                               "tested": result.tested, **result.evidence()}
    threshold = reference.calibration.k + reference.calibration.h
    summary["drifted"] = bool(result.tested and result.score > threshold)
    if open_alert and summary["drifted"]:
        existing = session.exec(select(DriftAlert).where(col(DriftAlert.scope) == "fleet",
                                                         col(DriftAlert.package_id) == package_id,
                                                         col(DriftAlert.state) == "open")).first()
        if existing is None:
            alert = DriftAlert(id=f"al-{uuid.uuid4().hex[:12]}", scope="fleet", package_id=package_id,
                               score=round(result.score, 3), evidence=summary)
            session.add(alert)
            audit.record(session, actor=MONITOR_ACTOR, action="alert.opened", subject_type="drift_alert",
                         subject_id=alert.id, details={"scope": "fleet", "package_id": package_id,
                                                       "score": alert.score, "devices": len(devices)})
            session.commit()
            summary["alert_id"] = alert.id
    return summary


def device_exists(session: Session, device_id: str) -> bool:
    return session.get(Device, device_id) is not None
