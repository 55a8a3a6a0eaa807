"""Device liveness, computed when read: online only while reports keep arriving.

The stored ``Device.online`` flag says what the device last told us (its status, or the
broker's Last Will). A device that goes silent without either (a control plane that was
down when the Will fired, a hung agent, a cut link with a long keepalive) would stay
"online" for ever. So every reader (API, fleet summary, dashboard, CLI, /metrics) asks
:class:`Liveness`: a device is online only if its flag says so *and* it was heard from
within ``after_intervals`` of its reporting intervals (and never less than
``min_silence_s``). The interval is the one the device reports itself (its latest
telemetry window), or the configured default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud.core.config import Settings
from cloud.core.timestamps import utc_now
from cloud.fleet.tables import Device, DevicePublic, TelemetryRecord

__all__ = ["Liveness", "public_devices", "reporting_intervals"]


@dataclass(frozen=True)
class Liveness:
    after_intervals: int = 3
    default_interval_s: float = 10.0
    # Never less than this: with sub-second intervals, ingest batching and broker round trips
    # alone would make a device that is reporting look silent.
    min_silence_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Liveness:
        return cls(after_intervals=settings.offline_after_intervals,
                   default_interval_s=settings.device_report_interval_s,
                   min_silence_s=settings.offline_min_silence_s)

    def silence_allowed_s(self, interval_s: float | None) -> float:
        interval = interval_s if interval_s and interval_s > 0 else self.default_interval_s
        return max(self.after_intervals * interval, self.min_silence_s)

    def online(self, device: Device, interval_s: float | None, now: datetime | None = None) -> bool:
        if not device.online or device.last_seen_at is None:
            return False
        silent_s = ((now or utc_now()) - device.last_seen_at).total_seconds()
        return silent_s <= self.silence_allowed_s(interval_s)

    def gone_quiet(self, device: Device, interval_s: float | None, now: datetime | None = None) -> bool:
        """Its last word was "online", but it has missed too many reports since."""
        return device.online and not self.online(device, interval_s, now)


def reporting_intervals(session: Session, device_ids: Iterable[str] | None = None) -> dict[str, float]:
    """Each device's reporting interval: the window of its latest telemetry report."""
    newest = select(TelemetryRecord.device_id, func.max(TelemetryRecord.id).label("max_id"))
    if device_ids is not None:
        newest = newest.where(col(TelemetryRecord.device_id).in_(list(device_ids)))
    latest = newest.group_by(col(TelemetryRecord.device_id)).subquery()
    query = select(TelemetryRecord.device_id, TelemetryRecord.window_s).join(
        latest, col(TelemetryRecord.id) == latest.c.max_id)
    return {device_id: float(window_s) for device_id, window_s in session.exec(query)}


def public_devices(session: Session, devices: list[Device], liveness: Liveness) -> list[DevicePublic]:
    """``devices`` as the API shows them, with ``online`` and ``gone_quiet`` computed now."""
    intervals = reporting_intervals(session, [d.id for d in devices])
    now = utc_now()
    return [DevicePublic.model_validate(device).model_copy(update={
        "online": liveness.online(device, intervals.get(device.id), now),
        "gone_quiet": liveness.gone_quiet(device, intervals.get(device.id), now)}) for device in devices]
