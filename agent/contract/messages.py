"""Typed, versioned MQTT payloads.

Every message carries ``schema_version``, ``device_id``, ``message_id`` (ingest is
idempotent on it) and ``sent_at``. Models forbid unknown fields so that a typo on
either side is an error rather than silently dropped data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.contract.topics import ReportKind, validate_device_id

SCHEMA_VERSION: Literal[1] = 1
# Reports are small by design (docs/protocol.md); anything bigger is rejected unread.
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


class CameraReport(BaseModel):
    """Health of one pipeline's camera: cumulative counters plus the last window's latency.

    ``error_code`` is None while frames arrive; otherwise why they do not
    (``auth_failed``, ``unreachable``, ``not_found``, ``stalled``, ``decode_error``, ``ended``,
    ``no_ffmpeg``, ``bad_credentials_ref``). ``capture_to_result_*`` span from the frame
    leaving the decoder to its inference result, over the frames of the last window.
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal["connecting", "streaming", "down"] = "streaming"
    error_code: ShortText | None = None
    decoder: ShortText = "software"
    source: ShortText | None = None  # the URL with any user:password@ replaced by ***@
    width: int | None = Field(default=None, ge=0)
    height: int | None = Field(default=None, ge=0)
    stale_frames_dropped: int = Field(default=0, ge=0)
    stalls: int = Field(default=0, ge=0)
    outages: int = Field(default=0, ge=0)
    outage_s: float = Field(default=0.0, ge=0)
    capture_to_result_p50_ms: float | None = Field(default=None, ge=0)
    capture_to_result_p95_ms: float | None = Field(default=None, ge=0)


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
    # Optional: the camera's health and capture-to-result latency (network cameras report
    # their connection state; every source reports latency).
    camera: CameraReport | None = None


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


class CameraRegion(BaseModel):
    """A region of interest as fractions of the frame (0..1 from the top-left corner): only it is
    classified. Bounds are checked by :func:`agent.contract.cameras.camera_set_problems`, so a
    signed command with a bad region is refused with a reason rather than dropped unread."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: float = 0.0
    y: float = 0.0
    width: float = 1.0
    height: float = 1.0


class CameraSpec(BaseModel):
    """One camera a device should run: where its frames come from and what it serves.

    ``source`` is a device index, a file path, ``synthetic:<seed>`` or an ``rtsp://`` /
    ``http://`` URL whose credentials are only ``{secret:NAME}`` references (resolved on the
    device). The fields hold shapes only; what makes a set acceptable (names, URL, no literal
    password, fps and region bounds) is :func:`agent.contract.cameras.camera_set_problems`,
    shared by the API and the agent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ShortText
    source: Annotated[str, Field(max_length=2048)]
    target_fps: float = Field(default=5.0, ge=0)
    region: CameraRegion | None = None
    # The package this camera serves (one the device holds); None: whatever a deploy installs into it.
    package_id: ShortText | None = None
    rtsp_transport: Literal["tcp", "udp"] = "tcp"


class CameraState(BaseModel):
    """What the device runs for one camera: the applied spec (its source with any literal
    ``user:password@`` redacted) and how the camera is doing."""

    model_config = ConfigDict(extra="forbid")

    spec: CameraSpec
    state: Literal["connecting", "streaming", "down", "waiting_for_model"] = "streaming"
    error_code: ShortText | None = None
    frames_processed: int = Field(default=0, ge=0)
    serving_package_id: ShortText | None = None


class CameraSetStatus(BaseModel):
    """The camera set a device runs (``applied_revision``; 0 = its config file's cameras) and the
    last camera command it refused, with why (``rejected_revision``, ``error``)."""

    model_config = ConfigDict(extra="forbid")

    applied_revision: int = Field(default=0, ge=0)
    cameras: list[CameraState] = Field(default_factory=list, max_length=16)
    rejected_revision: int | None = Field(default=None, ge=0)
    error_code: ShortText | None = None
    error: Annotated[str, Field(max_length=2000)] | None = None


class StatusReport(_Message):
    """Retained on ``<device>/status``; the Last Will publishes the offline form."""

    kind: Literal["status"] = "status"
    state: DeviceState
    agent_version: ShortText = ""
    hardware_profile: ShortText = ""
    running_model_version: ShortText | None = None
    running_package_id: ShortText | None = None
    runtime: ShortText | None = None
    # Optional, so older peers still validate:
    # the install state machine's current state ("idle" when no install runs) and,
    # on devices with several camera/model pipelines, what each one really serves.
    install_state: ShortText | None = None
    pipelines: list[PipelineStatus] = Field(default_factory=list, max_length=16)
    # Optional: the camera set the device runs, its revision and the last refused camera command.
    cameras: CameraSetStatus | None = None


class ShadowWindow(BaseModel):
    """One telemetry window of the shadow phase: a candidate model runs beside the
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
    # Optional, detection packages only: boxes of both models over the shadowed frames and
    # how many pairs matched (IoU >= 0.5, same class, each box in at most one pair). The
    # box agreement is 2 x boxes_matched / (boxes_active + boxes_candidate); ``agreements``
    # then counts frames whose boxes all matched.
    boxes_active: int = Field(default=0, ge=0)
    boxes_candidate: int = Field(default=0, ge=0)
    boxes_matched: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _matches_fit(self) -> ShadowWindow:
        if self.boxes_matched > min(self.boxes_active, self.boxes_candidate):
            raise ValueError("boxes_matched exceeds the boxes of one of the models")
        return self


class DetectionWindow(BaseModel):
    """A detection package's window: what it found, not how frames were classified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(ge=0)
    # Objects (boxes after NMS) per class over the window.
    object_counts: dict[ShortText, int] = Field(default_factory=dict, max_length=1000)
    mean_box_score: float | None = Field(default=None, ge=0, le=1)
    boxes_per_frame: float = Field(default=0.0, ge=0)
    empty_frames: int = Field(default=0, ge=0)


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
    # Optional: a per-device report sequence number so gaps are
    # visible, the pipeline this window belongs to, and cumulative frame accounting.
    report_seq: int | None = Field(default=None, ge=0)
    pipeline: ShortText | None = None
    invalid_outputs: int = Field(default=0, ge=0)
    frame_totals: FrameTotals | None = None
    # Optional: the error code of the last failed update check
    # (e.g. "expired_metadata" when the repository or a mirror is frozen); None after a success.
    update_check_error: ShortText | None = None
    # Optional: the candidate's results while it shadows the active model.
    shadow: ShadowWindow | None = None
    # Optional, detection packages only: object counts per class, mean box score, boxes per
    # frame. Their frames are not in class_counts / mean_confidence, which stay classification's.
    detection: DetectionWindow | None = None
    # Optional: models loaded in the agent process when the report was built (the agent's
    # own count: cameras sharing a model count it once; an install in flight adds its candidate).
    loaded_models: int | None = Field(default=None, ge=0, le=1000)
    # Optional: the model this pipeline's camera is served by (several cameras may share one).
    model_group: ShortText | None = None


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
    # Optional: the agent's install state machine state, the
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
    # Optional: which camera/model pipeline to install into on a
    # device running several; None means the device's first pipeline.
    pipeline: ShortText | None = None
    # Optional: "shadow" asks the device to fetch and verify the package
    # and run it beside the active model on ``shadow_sample_fraction`` of frames for
    # ``shadow_duration_s``, reporting ``TelemetryReport.shadow``, without switching to it.
    mode: Literal["install", "shadow"] = "install"
    shadow_sample_fraction: float = Field(default=0.25, gt=0, le=1)
    shadow_duration_s: float = Field(default=300.0, gt=0, le=7 * 86_400)
    # Optional: an operator (or the rollout engine's abort) returning the device to an
    # older release on purpose. Without it the device refuses a package whose manifest
    # ``release`` is below the one it installed (``package_downgrade``). Signed like
    # every other field (agent.contract.signing).
    rollback: bool = False

    def to_bytes(self) -> bytes:
        # Left out when false, so agents that predate the field (which forbid unknown
        # fields) still take every ordinary command; the signed bytes leave it out too.
        return self.model_dump_json(exclude=None if self.rollback else {"rollback"}).encode()


class ResyncCommand(_Message):
    """Cloud → device: set the device's accepted command ``seq`` base to ``seq``.

    After the control plane's database was restored from a backup (its per-device
    counters went back), or after a stolen director key pushed a device's base far
    ahead, this puts the device back in step. It is director-signed, addressed, short-lived,
    and ``issued_at`` must be newer than the last resync the device accepted, so a
    captured copy cannot be replayed to wind the base back again.
    """

    kind: Literal["resync"] = "resync"
    job_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    seq: int = Field(ge=0)
    issued_at: datetime
    expires_at: datetime
    signature: Annotated[str, Field(max_length=512)] | None = None


class CameraConfigCommand(_Message):
    """Cloud → device: run exactly ``cameras`` (the device's full desired set) from now on.

    ``revision`` numbers the control plane's desired sets per device; the device reports the
    one it applied (``StatusReport.cameras``). Director-signed, addressed, expiring and
    sequenced like a deploy. A set the device cannot run is refused whole (the reason goes
    back in its status) and the cameras it ran keep running.
    """

    kind: Literal["cameras"] = "cameras"
    job_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    revision: int = Field(ge=1)
    cameras: list[CameraSpec] = Field(max_length=16)
    seq: int = Field(ge=0)
    expires_at: datetime
    signature: Annotated[str, Field(max_length=512)] | None = None


Command = DeployCommand | ResyncCommand | CameraConfigCommand


# --- drift windows and samples -------------------------------------
# Per-kind size caps, tighter than DEFAULT_MAX_REPORT_BYTES: a drift window is a few KB
# by design, a sample report carries at most one small inline JPEG.
MAX_DRIFT_REPORT_BYTES = 8 * 1024
MAX_SAMPLE_REPORT_BYTES = 32 * 1024
MAX_INLINE_SAMPLE_BYTES = 16 * 1024
_INLINE_B64_CHARS = 4 * ((MAX_INLINE_SAMPLE_BYTES + 2) // 3)
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DetectionDrift(BaseModel):
    """A detection package's drift window: box histograms over fixed edges and objects per class.

    ``histograms`` is :func:`agent.contract.drift.encode_histograms` of shape
    (4, 32) over :data:`agent.contract.drift.DETECTION_FEATURES` with the edges of
    :func:`agent.contract.drift.detection_feature_edges` (256 bytes before base64);
    ``object_counts`` follows the package's labels; ``boxes_per_frame`` is a histogram
    of how many boxes each frame had (0, 1, ..., 30, 31 or more).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(ge=1, le=65_535)
    boxes: int = Field(ge=0)
    histograms: Annotated[str, Field(max_length=400)]
    object_counts: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=1000)
    boxes_per_frame: list[Annotated[int, Field(ge=0)]] = Field(min_length=32, max_length=32)

    @model_validator(mode="after")
    def _histograms_decode(self) -> DetectionDrift:
        from agent.contract.drift import DETECTION_FEATURES, decode_histograms

        decode_histograms(self.histograms, len(DETECTION_FEATURES))
        if sum(self.boxes_per_frame) != self.frames:
            raise ValueError("boxes_per_frame must count every frame once")
        return self


class DriftReport(_Message):
    """One closed window of subsampled frames: fixed-edge histograms and moments.

    ``histograms`` is :func:`agent.contract.drift.encode_histograms` of shape
    (len(features), 32); ``means``/``stds`` follow ``features``; ``class_counts``
    follows the package's labels.
    """

    kind: Literal["drift"] = "drift"
    model_version: ShortText | None = None
    package_id: ShortText | None = None
    reference_sha256: Sha256Hex | None = None
    pipeline: ShortText | None = None
    window_seq: int = Field(ge=0)
    window_started_at: datetime
    window_ended_at: datetime
    frames_seen: int = Field(ge=0)
    frames: int = Field(ge=1, le=65_535)
    features: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=64)
    histograms: Annotated[str, Field(max_length=6000)]
    means: list[float] = Field(max_length=64)
    stds: list[float] = Field(max_length=64)
    class_counts: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=1000)
    # The device's own quick check (largest |z| of a window mean); drives its drift sampler.
    local_score: float | None = Field(default=None, ge=0)
    # Optional, detection packages only: box score/size/position histograms and objects per class.
    detection: DetectionDrift | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DriftReport:
        from agent.contract.drift import decode_histograms

        if len(self.means) != len(self.features) or len(self.stds) != len(self.features):
            raise ValueError("means and stds must have one entry per feature")
        if not all(math.isfinite(v) for v in (*self.means, *self.stds)):
            raise ValueError("means and stds must be finite")
        counts = decode_histograms(self.histograms, len(self.features))
        if any(int(row.sum()) > self.frames for row in counts):
            raise ValueError("a histogram counts more frames than the window holds")
        if self.window_ended_at < self.window_started_at:
            raise ValueError("window_ended_at is before window_started_at")
        return self


MAX_SAMPLE_BOXES = 32


class SampleBox(BaseModel):
    """One box drawn on a sample, in fractions of the frame (0-1), so it fits any thumbnail size.

    ``model`` says whose box it is: the ``active`` model's, or the ``candidate``'s on a
    frame where the two disagreed in shadow mode.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)
    x2: float = Field(ge=0, le=1)
    y2: float = Field(ge=0, le=1)
    label: ShortText
    score: float = Field(ge=0, le=1)
    model: Literal["active", "candidate"] = "active"

    @model_validator(mode="after")
    def _ordered(self) -> SampleBox:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError("a box needs x1 <= x2 and y1 <= y2")
        return self


class SampleReport(_Message):
    """One captured frame (or, in stats-only mode, only its statistics).

    The JPEG travels inline (``image_b64``, at most 16 KB) or was uploaded to the
    control plane's HTTP API first (``upload="http"``), in both cases named by
    ``image_sha256``.
    """

    kind: Literal["sample"] = "sample"
    sample_id: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    model_version: ShortText | None = None
    package_id: ShortText | None = None
    pipeline: ShortText | None = None
    sampler: Literal["random", "uncertainty", "drift", "operator", "disagreement"]
    reason: ShortText = ""
    captured_at: datetime
    predicted_label: ShortText | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    features: dict[Annotated[str, Field(max_length=64)], float] = Field(default_factory=dict, max_length=32)
    stats_only: bool = False
    upload: Literal["inline", "http"] | None = None
    image_sha256: Sha256Hex | None = None
    image_bytes: int = Field(default=0, ge=0, le=4 * 1024 * 1024)
    image_width: int = Field(default=0, ge=0, le=8192)
    image_height: int = Field(default=0, ge=0, le=8192)
    image_b64: Annotated[str, Field(max_length=_INLINE_B64_CHARS)] | None = None
    # Optional, detection packages only: the frame's boxes (highest score first, at most 32).
    boxes: list[SampleBox] = Field(default_factory=list, max_length=MAX_SAMPLE_BOXES)

    @model_validator(mode="after")
    def _image_fields(self) -> SampleReport:
        if not all(math.isfinite(v) for v in self.features.values()):
            raise ValueError("features must be finite")
        if self.stats_only:
            if self.upload is not None or self.image_sha256 is not None or self.image_b64 is not None:
                raise ValueError("a stats-only sample carries no image")
            return self
        if self.upload is None or self.image_sha256 is None:
            raise ValueError("a sample with an image needs upload and image_sha256")
        if (self.upload == "inline") != (self.image_b64 is not None):
            raise ValueError("image_b64 is required for inline uploads and forbidden otherwise")
        if self.image_b64 is not None:
            try:
                image = base64.b64decode(self.image_b64.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise ValueError("image_b64 is not base64") from exc
            if len(image) > MAX_INLINE_SAMPLE_BYTES:
                raise ValueError(f"inline image exceeds {MAX_INLINE_SAMPLE_BYTES} bytes")
            if hashlib.sha256(image).hexdigest() != self.image_sha256:
                raise ValueError("image_sha256 does not match the inline image")
        return self


Report = StatusReport | TelemetryReport | JobStatusReport | DriftReport | SampleReport
_REPORT_MODELS: dict[ReportKind, type[_Message]] = {
    ReportKind.STATUS: StatusReport,
    ReportKind.TELEMETRY: TelemetryReport,
    ReportKind.JOB: JobStatusReport,
    ReportKind.DRIFT: DriftReport,
    ReportKind.SAMPLES: SampleReport,
}
_KIND_MAX_BYTES: dict[ReportKind, int] = {
    ReportKind.DRIFT: MAX_DRIFT_REPORT_BYTES,
    ReportKind.SAMPLES: MAX_SAMPLE_REPORT_BYTES,
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
    except RecursionError as exc:
        # A few KB of "[[[[..." exhausts the parser's stack; no valid message nests that deep.
        raise MalformedPayload("payload nests too deeply to be a valid message") from exc


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
    document = _decode_json(payload, min(max_bytes, _KIND_MAX_BYTES.get(kind, max_bytes)))
    report = _validate(_REPORT_MODELS[kind], document)
    if report.device_id != topic_device_id:
        raise DeviceMismatch(
            f"payload device_id {report.device_id!r} does not match topic device {topic_device_id!r}"
        )
    assert isinstance(report, StatusReport | TelemetryReport | JobStatusReport | DriftReport | SampleReport)
    return report


def message_kind(payload: bytes, *, max_bytes: int = DEFAULT_MAX_REPORT_BYTES) -> str | None:
    """The ``kind`` a JSON message names (``"deploy"``, ``"status"``...), or None when it names none."""
    try:
        document = _decode_json(payload, max_bytes)
    except ContractError:
        return None
    kind = document.get("kind") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else None


def parse_command(payload: bytes, *, max_bytes: int = DEFAULT_MAX_REPORT_BYTES) -> DeployCommand:
    """Validate a cloud → device deploy command. Raises ``ContractError``."""
    return _validate(DeployCommand, _decode_json(payload, max_bytes))


def parse_any_command(payload: bytes, *, max_bytes: int = DEFAULT_MAX_REPORT_BYTES) -> Command:
    """Validate any cloud → device command (deploy, resync or cameras, told apart by ``kind``).
    Raises ``ContractError``."""
    document = _decode_json(payload, max_bytes)
    if isinstance(document, dict) and document.get("kind") == "resync":
        return _validate(ResyncCommand, document)
    if isinstance(document, dict) and document.get("kind") == "cameras":
        return _validate(CameraConfigCommand, document)
    return _validate(DeployCommand, document)
