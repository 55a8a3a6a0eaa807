"""docs/protocol.md against the wire contract: every topic, report kind and message field is documented.

Whoever changes the contract updates the document; this test says what it is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.contract import (
    CameraConfigCommand,
    DeployCommand,
    DriftReport,
    JobStatusReport,
    SampleReport,
    StatusReport,
    TelemetryReport,
    Topics,
)

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
MESSAGES = (StatusReport, TelemetryReport, JobStatusReport, DeployCommand, CameraConfigCommand, DriftReport,
            SampleReport)


def undocumented() -> list[str]:
    text = PROTOCOL.read_text()
    quoted = set(re.findall(r"`([^`]+)`", text))
    missing: list[str] = []
    topics = Topics("ef/v1")
    for topic in (topics.status("<device_id>"), topics.telemetry("<device_id>"), topics.job("<device_id>", "<job_id>"),
                  topics.drift("<device_id>"), topics.samples("<device_id>"), topics.commands("<device_id>")):
        if topic not in quoted:
            missing.append(f"topic {topic}")
    kinds = [str(message.model_fields["kind"].default) for message in MESSAGES]
    missing += [f"message kind {kind}" for kind in kinds if kind not in quoted]
    for message in MESSAGES:
        if message.__name__ not in quoted:
            missing.append(f"message {message.__name__}")
        missing += [f"{message.__name__}.{name}" for name in message.model_fields if name not in quoted]
    return missing


def test_protocol_doc_covers_the_contract() -> None:
    missing = undocumented()
    assert not missing, "docs/protocol.md does not mention: " + ", ".join(missing)
