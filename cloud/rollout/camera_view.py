"""Pure per-camera figures of a rollout: each device of a stage with its cameras beneath it.

A device runs several cameras (agent pipelines), each with its own model and scene, so
a device-level sum hides a camera that fails while its neighbour does well. The figures
here are the gates' own (error rate, mean confidence, p95 latency, class or object
counts, drift score), computed per camera over the windows of the model it runs now.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud.rollout.gates import TelemetryWindow, aggregate

__all__ = ["DEFAULT_CAMERA", "CameraWindow", "camera_figures"]

# A report that names no pipeline belongs to the agent's only camera (as the drift monitor names it).
DEFAULT_CAMERA = "default"


@dataclass(frozen=True)
class CameraWindow:
    """One telemetry window of one camera, with what the gates' window does not carry."""

    camera: str
    sent_at: datetime  # the device's clock: orders one device's windows even when received in one batch
    model_version: str | None
    package_id: str | None
    window_s: float
    window: TelemetryWindow
    capture_to_result_p95_ms: float | None = None
    stale_frames_dropped: int | None = None  # cumulative since the agent started


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _figures(windows: list[CameraWindow], drift_scores: list[float]) -> dict[str, Any]:
    newest = max(windows, key=lambda w: w.sent_at)
    # Only the windows of the model the camera runs now: before its install it ran another.
    current = [w for w in windows if w.package_id == newest.package_id]
    stats = aggregate([w.window for w in current])
    seconds = sum(w.window_s for w in current)
    capture = [w.capture_to_result_p95_ms for w in current if w.capture_to_result_p95_ms is not None]
    summary = stats.summary()
    summary.pop("devices", None)
    summary.pop("restarts", None)  # restarts are the device's, shown on its row
    return {
        "model_version": newest.model_version, "package_id": newest.package_id,
        **summary,
        "fps": _round(stats.frames / seconds if seconds else None, 3),
        # Medians of the windows' p95s, like the latency gate's figure.
        "capture_to_result_p95_ms": _round(statistics.median(capture) if capture else None, 3),
        "stale_frames_dropped": newest.stale_frames_dropped,
        "drift_score": _round(statistics.fmean(drift_scores) if drift_scores else None, 3),
        "drift_windows": len(drift_scores),
    }


def camera_figures(windows: Iterable[CameraWindow], *, known_cameras: Iterable[str] = (),
                   drift_scores: Mapping[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """One row per camera of one device, sorted by name.

    ``known_cameras`` are cameras the device reports running: listed even before their
    first window (``windows`` 0). ``drift_scores`` maps a camera to its tested drift
    windows' scores over the same period.
    """
    by_camera: dict[str, list[CameraWindow]] = {}
    for window in windows:
        by_camera.setdefault(window.camera, []).append(window)
    scores = drift_scores or {}
    rows = []
    for camera in sorted(set(by_camera) | set(known_cameras) | set(scores)):
        own = by_camera.get(camera)
        if own:
            rows.append({"camera": camera, **_figures(own, scores.get(camera, []))})
        else:
            rows.append({"camera": camera, "model_version": None, "package_id": None, "windows": 0, "frames": 0,
                         "drift_score": _round(statistics.fmean(scores[camera]), 3) if scores.get(camera) else None,
                         "drift_windows": len(scores.get(camera, []))})
    return rows
