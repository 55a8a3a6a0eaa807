"""The wire contract: topics, report parsing and the package manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.contract import (
    DeployCommand,
    DeviceMismatch,
    MalformedPayload,
    ModelArtifact,
    PackageFile,
    PackageManifest,
    PayloadTooLarge,
    PreprocessSpec,
    ReportKind,
    SchemaViolation,
    TelemetryReport,
    TopicError,
    Topics,
    parse_command,
    parse_report,
    validate_device_id,
)

SHA = "a" * 64


def test_topics_round_trip_and_reject_foreign_topics() -> None:
    topics = Topics("t-1/ef/v1")
    assert topics.parse_report(topics.telemetry("cam-1")) == ("cam-1", ReportKind.TELEMETRY)
    assert topics.parse_report(topics.status("cam-1")) == ("cam-1", ReportKind.STATUS)
    assert topics.parse_report(topics.job("cam-1", "job-1")) == ("cam-1", ReportKind.JOB)
    for foreign in ["other/ef/v1/cam-1/telemetry", "t-1/ef/v1/cam-1/commands", "t-1/ef/v1/cam-1/jobs/",
                    "t-1/ef/v1/cam-1/telemetry/extra", "t-1/ef/v1"]:
        with pytest.raises(TopicError):
            topics.parse_report(foreign)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "-leading", "x" * 65, "sp ace"])
def test_device_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        validate_device_id(bad)


def test_parse_report_names_each_kind_of_rejection() -> None:
    report = TelemetryReport(device_id="cam-1", window_s=1, frames=3, fps=3.0)
    assert parse_report(ReportKind.TELEMETRY, report.to_bytes(), "cam-1") == report
    with pytest.raises(PayloadTooLarge):
        parse_report(ReportKind.TELEMETRY, report.to_bytes(), "cam-1", max_bytes=10)
    with pytest.raises(MalformedPayload):
        parse_report(ReportKind.TELEMETRY, b"\x00garbage", "cam-1")
    with pytest.raises(SchemaViolation, match="frames"):
        parse_report(ReportKind.TELEMETRY, json.dumps({**report.model_dump(mode="json"), "frames": -1}).encode(),
                     "cam-1")
    with pytest.raises(SchemaViolation, match="extra"):
        parse_report(ReportKind.TELEMETRY, json.dumps({**report.model_dump(mode="json"), "extra": 1}).encode(),
                     "cam-1")
    with pytest.raises(SchemaViolation):  # a status payload on a telemetry topic
        parse_report(ReportKind.STATUS, report.to_bytes(), "cam-1")
    with pytest.raises(DeviceMismatch):
        parse_report(ReportKind.TELEMETRY, report.to_bytes(), "cam-2")


def test_commands_must_pin_a_manifest_hash() -> None:
    command = DeployCommand(device_id="cam-1", job_id="job-1", package_id="p", model_version="m-1",
                            manifest_url="http://x/manifest.json", manifest_sha256=SHA, seq=1,
                            expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert parse_command(command.to_bytes()) == command
    with pytest.raises(SchemaViolation, match="manifest_sha256"):
        parse_command(json.dumps({**command.model_dump(mode="json"), "manifest_sha256": "abc"}).encode())


def _manifest(**overrides: object) -> PackageManifest:
    fields: dict[str, object] = {
        "package_id": "p-1", "model_name": "m", "model_version": "m-1", "created_at": datetime.now(UTC),
        "hardware_profiles": ["x86-64-avx2"], "labels": ["a", "b"],
        "preprocessing": PreprocessSpec(width=32, height=32),
        "artifacts": [ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32")],
        "files": [PackageFile(name="model.onnx", sha256=SHA, size_bytes=10)],
    }
    fields.update(overrides)
    return PackageManifest.model_validate(fields)


def test_manifest_round_trips_canonically_and_checks_its_files() -> None:
    manifest = _manifest()
    assert PackageManifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.to_bytes() == PackageManifest.from_bytes(manifest.to_bytes()).to_bytes()
    with pytest.raises(ValueError, match="not listed"):
        _manifest(artifacts=[ModelArtifact(file="other.onnx", runtime="onnxruntime", precision="fp32")])
    with pytest.raises(ValueError):
        _manifest(files=[PackageFile(name="../etc/passwd", sha256=SHA, size_bytes=1)])
    with pytest.raises(ValueError, match="invalid package manifest"):
        PackageManifest.from_bytes(b'{"schema_version": 1}')
