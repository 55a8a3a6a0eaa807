"""How fast the devices' random sample stream fills, and how long until a retraining can start.

The new release's drift reference is built from the unbiased random-stream samples of
the drifted devices; a retraining with too few of them is refused. The refusal says how
many there are, how many are needed, the rate they arrived at recently and so when
there will be enough, and which settings change the need or the rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from cloud.core.timestamps import utc_now
from cloud.monitor.tables import SampleRecord

__all__ = ["RATE_WINDOW", "SamplingEstimate", "estimate_random_stream"]

# Arrivals within this window make the rate: recent enough to reflect the devices' present settings.
RATE_WINDOW = timedelta(hours=1)
# A stream younger than this is measured over this span, so two samples a second apart are not "7200/h".
MIN_RATE_SPAN = timedelta(minutes=1)

NEED_SETTING = "EDGEFLEET_MONITOR_MIN_REFERENCE_SAMPLES"
RATE_SETTINGS = ("monitoring.random_probability", "monitoring.per_minute_count", "monitoring.per_hour_count",
                 "monitoring.per_day_count")


@dataclass(frozen=True)
class SamplingEstimate:
    have: int
    needed: int
    have_by_device: dict[str, int]
    # Samples per hour, from arrivals in the last RATE_WINDOW (0 when none arrived).
    rate_per_hour: float
    rate_by_device: dict[str, float]

    @property
    def missing(self) -> int:
        return max(0, self.needed - self.have)

    @property
    def eta(self) -> timedelta | None:
        """Time until enough samples at the recent rate; ``None`` when nothing arrives."""
        if self.missing == 0:
            return timedelta(0)
        if self.rate_per_hour <= 0:
            return None
        return timedelta(hours=self.missing / self.rate_per_hour)

    def explain(self) -> str:
        """The refusal: counts, rate, estimate, and the settings that change them."""
        devices = ", ".join(f"{d}: {n}" for d, n in sorted(self.have_by_device.items()))
        text = (f"only {self.have} random-stream samples with an image from the drifted devices ({devices}); "
                f"the new release's drift reference needs {self.needed}, so {self.missing} more. ")
        if self.rate_per_hour > 0:
            rates = ", ".join(f"{d} {r:.1f}/h" for d, r in sorted(self.rate_by_device.items()))
            text += (f"They arrived at {self.rate_per_hour:.1f} samples/h over the last hour ({rates}): "
                     f"enough in about {_duration(self.eta)}. ")
        else:
            text += ("None arrived in the last hour, so there is no estimate: check the devices are online and "
                     "their monitoring.samples is 'inline' or 'http' (not 'off' or 'stats_only'). ")
        text += (f"To need fewer, set {NEED_SETTING} on the control plane (the reference's size; fewer samples "
                 f"make a noisier reference). To sample faster, raise the agents' monitoring.random_probability "
                 f"(the share of inferred frames sampled, default 0.02) and, if the budget is the limit, "
                 f"monitoring.per_minute_count / per_hour_count / per_day_count in the agent config.")
        return text


def _duration(value: timedelta | None) -> str:
    if value is None:
        return "never"
    minutes = max(1, round(value.total_seconds() / 60))
    if minutes < 90:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest:02d} min"
    return f"{hours / 24:.1f} days"


def estimate_random_stream(session: Session, device_ids: list[str], needed: int,
                           now: datetime | None = None) -> SamplingEstimate:
    """Count the random-stream samples with an image of ``device_ids`` and measure their recent arrival rate."""
    now = now or utc_now()
    rows = list(session.exec(select(SampleRecord.device_id, SampleRecord.received_at).where(
        col(SampleRecord.device_id).in_(device_ids), col(SampleRecord.sampler) == "random",
        col(SampleRecord.image_sha256).is_not(None))))
    have_by_device = {device: 0 for device in device_ids}
    recent_by_device: dict[str, list[datetime]] = {device: [] for device in device_ids}
    first_seen: dict[str, datetime] = {}
    for device, received in rows:
        have_by_device[device] = have_by_device.get(device, 0) + 1
        first_seen[device] = min(first_seen.get(device, received), received)
        if received >= now - RATE_WINDOW:
            recent_by_device.setdefault(device, []).append(received)
    rate_by_device: dict[str, float] = {}
    for device, arrivals in recent_by_device.items():
        if not arrivals:
            rate_by_device[device] = 0.0
            continue
        # Measured since the window opened, or since the device's first sample if that is later.
        span = max(now - max(now - RATE_WINDOW, first_seen[device]), MIN_RATE_SPAN)
        rate_by_device[device] = len(arrivals) / (span.total_seconds() / 3600)
    return SamplingEstimate(have=sum(have_by_device.values()), needed=needed, have_by_device=have_by_device,
                            rate_per_hour=sum(rate_by_device.values()), rate_by_device=rate_by_device)
