"""The boot counter: a committed model that crashes the agent at start-up must not crash-loop it.

Before the agent loads the model in its active slot it saves "booting <package>, attempt n";
the first healthy telemetry window clears the record. A start that finds the record already
at ``max_boot_attempts`` knows the previous starts died before the model was ever healthy,
and falls back to the other slot (the model that ran before) instead of loading it again.
This module decides; :mod:`agent.update.manager` does the I/O around the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BootAction", "BootDecision", "BootRecord", "decide_boot"]

BOOT_LOOP_ERROR = "boot_loop"


class BootRecord(BaseModel):
    """Start-ups of ``package_id`` that have not yet produced a healthy window."""

    model_config = ConfigDict(extra="ignore")

    package_id: str
    attempts: int = Field(default=0, ge=0)


class BootAction(StrEnum):
    LOAD = "load"  # load the active slot's model (the record, saved first, counts this attempt)
    FALL_BACK = "fall_back"  # serve the other slot's model and report the boot loop
    REFUSE = "refuse"  # no other model to fall back to: serve nothing, report the boot loop


@dataclass(frozen=True)
class BootDecision:
    action: BootAction
    record: BootRecord | None  # what to persist before acting
    reason: str | None = None


def decide_boot(record: BootRecord | None, package_id: str, *, max_boot_attempts: int,
                has_fallback: bool) -> BootDecision:
    """What to do at start-up with the committed ``package_id``.

    Raises:
        ValueError: ``max_boot_attempts`` is below 1.
    """
    if max_boot_attempts < 1:
        raise ValueError(f"max_boot_attempts must be at least 1, not {max_boot_attempts}")
    if record is None or record.package_id != package_id:
        return BootDecision(BootAction.LOAD, BootRecord(package_id=package_id, attempts=1))
    if record.attempts < max_boot_attempts:
        return BootDecision(BootAction.LOAD, BootRecord(package_id=package_id, attempts=record.attempts + 1))
    reason = (f"{package_id} ended {record.attempts} start-ups in a crash before its first healthy window "
              f"(max_boot_attempts={max_boot_attempts})")
    if has_fallback:
        return BootDecision(BootAction.FALL_BACK, None, reason)
    return BootDecision(BootAction.REFUSE, record, reason)
