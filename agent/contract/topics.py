"""The MQTT topic tree. Every topic string in the project is built or parsed here.

Layout: ``<prefix>/<device_id>/<kind>`` with prefix ``ef/v1`` by default, and
``<prefix>/<device_id>/jobs/<job_id>`` for job status reports. Tests give every
run its own prefix so that concurrent tests never see each other's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_PREFIX = "ef/v1"

# Device ids become topic levels and certificate CNs: no MQTT wildcards or separators.
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ReportKind(StrEnum):
    """Device → cloud message kinds (QoS 1)."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    JOB = "jobs"
    DRIFT = "drift"
    SAMPLES = "samples"


class TopicError(ValueError):
    """A topic that is not part of the EdgeFleet tree."""


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged, or raise ``ValueError`` saying what is wrong."""
    if not DEVICE_ID_PATTERN.match(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return device_id


def device_client_id(device_id: str) -> str:
    """The MQTT client id of ``device_id``'s agent (brokers tie a persistent session to it)."""
    return f"ef-agent-{device_id}"


@dataclass(frozen=True)
class Topics:
    """Builds and parses topics under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def status(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/status"

    def telemetry(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/telemetry"

    def job(self, device_id: str, job_id: str) -> str:
        return f"{self.prefix}/{device_id}/jobs/{job_id}"

    def drift(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/drift"

    def samples(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/samples"

    def commands(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/commands"

    # Subscriptions used by the control plane's ingest.
    def all_reports(self) -> list[str]:
        return [
            f"{self.prefix}/+/status",
            f"{self.prefix}/+/telemetry",
            f"{self.prefix}/+/jobs/+",
            f"{self.prefix}/+/drift",
            f"{self.prefix}/+/samples",
        ]

    def parse_report(self, topic: str) -> tuple[str, ReportKind]:
        """Split a report topic into ``(device_id, kind)``.

        Raises:
            TopicError: the topic is outside the prefix or not a report topic.
        """
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is outside prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) == 2 and parts[1] in (ReportKind.STATUS, ReportKind.TELEMETRY, ReportKind.DRIFT,
                                            ReportKind.SAMPLES):
            return parts[0], ReportKind(parts[1])
        if len(parts) == 3 and parts[1] == ReportKind.JOB and parts[2]:
            return parts[0], ReportKind.JOB
        raise TopicError(f"topic {topic!r} is not a report topic")
