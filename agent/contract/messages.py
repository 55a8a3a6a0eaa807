"""Typed, versioned MQTT payloads.

Every message carries ``schema_version``, ``device_id``, ``message_id`` (ingest is
idempotent on it) and ``sent_at``. Models forbid unknown fields so that a typo on
either side is an error rather than silently dropped data.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from agent.contract.topics import ReportKind, validate_device_id

SCHEMA_VERSION: Literal[1] = 1
# Reports are small by design (DESIGN.md section 4); anything bigger is rejected unread.
DEFAULT_MAX_REPORT_BYTES = 64 * 1024

DeviceId = Annotated[str, AfterValidator(validate_device_id)]
ShortText = Annotated[str, Field(max_length=256)]


def new_message_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: DeviceId
    message_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = Field(
        default_factory=new_message_id
    )
    sent_at: datetime = Field(default_factory=utc_now)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class PipelineStatus(BaseModel):
    """One camera + model pipeline on a device (a device may run several)."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    model_version: ShortText | None = None
    package_id: ShortText | None = None
    runtime: ShortText | None = None


class FrameTotals(BaseModel):
    """Cumulative frame accounting of one pipeline since the agent started.

    ``captured - skipped_by_rate_limit - overwritten`` frames reached the model;
    each of them is either ``processed`` or counted in ``inference_errors_total``.
    """

    model_config = ConfigDict(extra="forbid")

    captured: int = Field(default=0, ge=0)
    skipped_by_rate_limit: int = Field(default=0, ge=0)
    overwritten: int = Field(default=0, ge=0)
    processed: int = Field(default=0, ge=0)
    inference_errors_total: int = Field(default=0, ge=0)
    invalid_outputs_total: int = Field(default=0, ge=0)
    camera_reconnects: int = Field(default=0, ge=0)


class RuntimeMeasurement(BaseModel):
    """How one candidate artifact/runtime fared in the on-device self-test and timing."""

    model_config = ConfigDict(extra="forbid")

    runtime: ShortText
    precision: ShortText
    device: ShortText = ""
    file: ShortText = ""
    accepted: bool = False
    reason: ShortText = ""
    max_abs_error: float | None = None
    median_latency_ms: float | None = Field(default=None, ge=0)


class StatusReport(_Message):
    """Retained on ``<device>/status``; the Last Will publishes the offline form."""

    kind: Literal["status"] = "status"
    state: DeviceState
    agent_version: ShortText = ""
    hardware_profile: ShortText = ""
    running_model_version: ShortText | None = None
    running_package_id: ShortText | None = None
    runtime: ShortText | None = None
    # Added by issue 5 (optional, so older peers still validate):
    # the install state machine's current state ("idle" when no install runs) and,
    # on devices with several camera/model pipelines, what each one really serves.
    install_state: ShortText | None = None
    pipelines: list[PipelineStatus] = Field(default_factory=list, max_length=16)


class ShadowWindow(BaseModel):
    """One telemetry window of the shadow phase (issue 6): a candidate model runs beside the
    active one on a sampled fraction of frames; only the active model's results are used.

    ``agreements`` counts shadowed frames where both models predicted the same class.
    """

    model_config = ConfigDict(extra="forbid")

    package_id: ShortText
    model_version: ShortText | None = None
    frames: int = Field(default=0, ge=0)
    agreements: int = Field(default=0, ge=0)
    candidate_errors: int = Field(default=0, ge=0)
    candidate_p95_latency_ms: float | None = Field(default=None, ge=0)
    active_p95_latency_ms: float | None = Field(default=None, ge=0)
    class_counts: dict[ShortText, int] = Field(default_factory=dict, max_length=1000)


class TelemetryReport(_Message):
    """Periodic health and inference statistics for one window of frames."""

    kind: Literal["telemetry"] = "telemetry"
    model_version: ShortText | None = None
    package_id: ShortText | None = None
    runtime: ShortText | None = None
    window_s: float = Field(ge=0, le=86_400)
    frames: int = Field(ge=0)
    fps: float = Field(ge=0)
    p50_latency_ms: float | None = Field(default=None, ge=0)
    p95_latency_ms: float | None = Field(default=None, ge=0)
    mean_confidence: float | None = Field(default=None, ge=0, le=1)
    class_counts: dict[ShortText, int] = Field(default_factory=dict, max_length=1000)
    inference_errors: int = Field(default=0, ge=0)
    camera_ok: bool = True
    cpu_percent: float = Field(default=0.0, ge=0)
    memory_mb: float = Field(default=0.0, ge=0)
    dropped_reports: int = Field(default=0, ge=0)
    rejected_commands: int = Field(default=0, ge=0)
    # Added by issue 5 (optional): a per-device report sequence number so gaps are
    # visible, the pipeline this window belongs to, and cumulative frame accounting.
    report_seq: int | None = Field(default=None, ge=0)
    pipeline: ShortText | None = None
    invalid_outputs: int = Field(default=0, ge=0)
    frame_totals: FrameTotals | None = None
    # Added by issue 6 (optional): the candidate's results while it shadows the active model.
    shadow: ShadowWindow | None = None
    # Added by issue 4 (optional): the error code of the last failed update check
    # (e.g. "expired_metadata" when the repository or a mirror is frozen); None after a success.
    update_check_error: ShortText | None = None


class JobState(StrEnum):
    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED)


class JobStatusReport(_Message):
    """Progress of one deployment job on one device, on ``<device>/jobs/<job_id>``."""

    kind: Literal["job"] = "job"
    job_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    package_id: ShortText | None = None
    state: JobState
    error_code: ShortText | None = None
    error: Annotated[str, Field(max_length=2000)] | None = None
    running_model_version: ShortText | None = None
    # Added by issue 5 (optional): the agent's install state machine state, the
    # runtime it chose and every candidate it measured, and the probation figures
    # that led to a commit or a local rollback.
    install_state: ShortText | None = None
    runtime: ShortText | None = None
    runtime_measurements: list[RuntimeMeasurement] = Field(default_factory=list, max_length=32)
    probation: dict[ShortText, float | None] = Field(default_factory=dict, max_length=32)


class DeployCommand(_Message):
    """Cloud → device: install the package whose manifest is pinned by sha256.

    ``seq`` increases per device and ``expires_at`` bounds its life, so a replayed
    or stale command can be refused.
    """

    kind: Literal["deploy"] = "deploy"
    job_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    package_id: ShortText
    model_version: ShortText
    manifest_url: Annotated[str, Field(max_length=2048)]
    manifest_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    seq: int = Field(ge=0)
    expires_at: datetime
    signature: Annotated[str, Field(max_length=512)] | None = None
    # Added by issue 5 (optional): which camera/model pipeline to install into on a
    # device running several; None means the device's first pipeline.
    pipeline: ShortText | None = None
    # Added by issue 6 (optional): "shadow" asks the device to fetch and verify the package
    # and run it beside the active model on ``shadow_sample_fraction`` of frames for
    # ``shadow_duration_s``, reporting ``TelemetryReport.shadow``, without switching to it.
    mode: Literal["install", "shadow"] = "install"
    shadow_sample_fraction: float = Field(default=0.25, gt=0, le=1)
    shadow_duration_s: float = Field(default=300.0, gt=0, le=7 * 86_400)


Report = StatusReport | TelemetryReport | JobStatusReport
_REPORT_MODELS: dict[ReportKind, type[_Message]] = {
    ReportKind.STATUS: StatusReport,
    ReportKind.TELEMETRY: TelemetryReport,
    ReportKind.JOB: JobStatusReport,
}


class ContractError(ValueError):
    """A message that breaks the contract. ``reason`` is a short counter key."""

    reason = "invalid"


class PayloadTooLarge(ContractError):
    reason = "oversized"


class MalformedPayload(ContractError):
    reason = "malformed"


class SchemaViolation(ContractError):
    reason = "schema"


class DeviceMismatch(ContractError):
    reason = "device_mismatch"


def _decode_json(payload: bytes, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPayload(f"payload is not JSON: {exc}") from exc


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], document: Any) -> M:
    if not isinstance(document, dict):
        raise SchemaViolation("payload must be a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise SchemaViolation(f"{model.__name__}: {where}: {first['msg']}") from exc


def parse_report(
    kind: ReportKind,
    payload: bytes,
    topic_device_id: str,
    *,
    max_bytes: int = DEFAULT_MAX_REPORT_BYTES,
) -> Report:
    """Validate a device report received on a topic of ``kind`` for ``topic_device_id``.

    Raises:
        ContractError: one of its subclasses, with ``reason`` naming the rejection.
    """
    document = _decode_json(payload, max_bytes)
    report = _validate(_REPORT_MODELS[kind], document)
    if report.device_id != topic_device_id:
        raise DeviceMismatch(
            f"payload device_id {report.device_id!r} does not match topic device {topic_device_id!r}"
        )
    assert isinstance(report, StatusReport | TelemetryReport | JobStatusReport)
    return report


def parse_command(payload: bytes, *, max_bytes: int = DEFAULT_MAX_REPORT_BYTES) -> DeployCommand:
    """Validate a cloud → device command. Raises ``ContractError``."""
    return _validate(DeployCommand, _decode_json(payload, max_bytes))
