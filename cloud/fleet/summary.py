"""The fleet table: one row per device with its latest telemetry."""

from __future__ import annotations

from sqlmodel import Session

from cloud.core.timestamps import utc_now
from cloud.fleet import crud
from cloud.fleet.liveness import Liveness


def fleet_rows(session: Session, liveness: Liveness) -> list[dict[str, object]]:
    latest = crud.latest_telemetry_per_device(session)
    now = utc_now()
    rows: list[dict[str, object]] = []
    for device in crud.list_devices(session, limit=100_000):
        record = latest.get(device.id)
        interval_s = record.window_s if record else None
        rows.append(
            {
                "device_id": device.id,
                "online": liveness.online(device, interval_s, now),
                "gone_quiet": liveness.gone_quiet(device, interval_s, now),
                "hardware_profile": device.hardware_profile,
                "model_version": device.running_model_version,
                "runtime": device.runtime,
                "fps": record.fps if record else None,
                "p95_latency_ms": record.p95_latency_ms if record else None,
                "mean_confidence": record.mean_confidence if record else None,
                # The last window's predictions and failures: what model health is judged on.
                "frames": record.frames if record else None,
                "class_counts": dict(record.class_counts) if record else {},
                "inference_errors": record.inference_errors if record else None,
                "last_seen_at": device.last_seen_at.isoformat() if device.last_seen_at else None,
            }
        )
    return rows
