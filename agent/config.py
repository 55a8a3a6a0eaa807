"""The agent's one configuration object: a YAML/JSON file, overridable by env.

Environment variables ``EDGEFLEET_AGENT_<FIELD>`` override file values, so a
systemd unit or container can adjust one setting without editing the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.capture.stream import StreamSettings
from agent.contract.topics import DEFAULT_PREFIX, validate_device_id
from agent.profiles import NetworkSettings
from agent.telemetry.drift import MonitoringConfig

ENV_PREFIX = "EDGEFLEET_AGENT_"
# The model serving the cameras assigned one package (PipelineConfig.model_group).
PACKAGE_MODEL_PREFIX = "package."


class PipelineConfig(BaseModel):
    """One camera feeding one model. A device may run several (two cameras, two models)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    # A device index ("0"), a file path, an rtsp:// or http:// URL, or synthetic:<seed>.
    source: str
    source_loop: bool = True
    target_fps: float = Field(default=0.0, ge=0, description="0 = as fast as frames arrive")
    # Pace files and synthetic sources like a camera at this rate (None = target_fps, 0 = unpaced).
    source_fps: float | None = Field(default=None, ge=0)
    # "newest": a slow model sees the newest frame, older ones are overwritten (cameras).
    # "every": capture waits for inference, no frame is overwritten (recorded files, tests).
    frame_policy: Literal["newest", "every"] = "newest"
    # Frames the "every" policy may queue ahead of inference (the "newest" policy keeps one).
    frame_queue_depth: int = Field(default=3, ge=1, le=64)
    # Network cameras (rtsp://, http:// MJPEG) and /dev/video* devices; docs/agent.md.
    # RTSP over TCP survives lossy links and NAT; UDP has less delay on a clean LAN.
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # No frame for this long while the connection stays open: the decoder is killed and reopened.
    stall_timeout_s: float = Field(default=10.0, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0)
    camera_reconnect_min_s: float = Field(default=0.5, gt=0)
    camera_reconnect_max_s: float = Field(default=30.0, gt=0)
    # A secret holding "user:password" for the camera URL (kept out of the config file).
    credentials_ref: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    # The model serving this camera: cameras naming the same model share one loaded instance
    # (one package, one A/B install, one deploy target) and are served in micro-batches.
    # None = the model of its assigned package (package_id), else a model of the camera's own,
    # named like the camera.
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] | None = None
    # Region of interest (x, y, width, height as fractions of the frame), cropped before the
    # model's resize. None = the whole frame. A managed camera's `region` arrives here.
    roi: tuple[float, float, float, float] | None = None
    # A package the device already holds, served by this camera's model (agent/cameras.py);
    # None = whatever a deploy installs into the model.
    package_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None

    @field_validator("roi")
    @classmethod
    def _roi_inside_frame(cls, roi: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if roi is None:
            return None
        x, y, width, height = roi
        if not (0 <= x < 1 and 0 <= y < 1 and width > 0 and height > 0 and x + width <= 1 and y + height <= 1):
            raise ValueError("roi is [x, y, width, height] as fractions of the frame: x, y in [0, 1), "
                             "width and height > 0, x + width and y + height at most 1")
        return roi

    @property
    def model_group(self) -> str:
        """The name of the model serving this camera (its deploy target).

        Cameras assigned one package share one instance of it, in a model named
        ``package.<id>`` (a '.' never appears in camera or model names, so it cannot clash).
        """
        if self.model is not None:
            return self.model
        return f"{PACKAGE_MODEL_PREFIX}{self.package_id}" if self.package_id is not None else self.name

    def source_url(self) -> str:
        """``source`` with ``{secret:<credentials_ref>}@`` inserted after the scheme when set."""
        if self.credentials_ref is None or "://" not in self.source:
            return self.source
        scheme, rest = self.source.split("://", 1)
        return f"{scheme}://{{secret:{self.credentials_ref}}}@{rest}"

    def stream_settings(self) -> StreamSettings:
        return StreamSettings(transport=self.rtsp_transport, stall_timeout_s=self.stall_timeout_s,
                              open_timeout_s=self.open_timeout_s, reconnect_min_s=self.camera_reconnect_min_s,
                              reconnect_max_s=self.camera_reconnect_max_s, analysed_fps=self.target_fps)


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, AfterValidator(validate_device_id)]
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = DEFAULT_PREFIX
    api_url: str = "http://127.0.0.1:8000"
    state_dir: Path = Path("/var/lib/edgefleet-agent")
    hardware_profile: str = "x86-64-avx2"
    # Frame source: a device index ("0"), a file path, an rtsp:// or http:// URL.
    source: str = "0"
    source_loop: bool = True
    target_fps: float = Field(default=0.0, ge=0, description="0 = as fast as frames arrive")
    inference_threads: int = Field(default=1, ge=0)
    telemetry_interval_s: float = Field(default=5.0, gt=0)
    # Network settings (agent.profiles.NetworkSettings): None = the firmware profile's value,
    # which defaults to one for a wired link. Set here to override the profile on one device.
    keepalive_s: int | None = Field(default=None, ge=5)
    download_timeout_s: float | None = Field(default=None, gt=0)
    download_deadline_s: float | None = Field(default=None, gt=0)
    download_retry_min_s: float | None = Field(default=None, gt=0)
    download_retry_max_s: float | None = Field(default=None, gt=0)
    max_package_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    frame_policy: Literal["newest", "every"] = "newest"
    frame_queue_depth: int = Field(default=3, ge=1, le=64)
    source_fps: float | None = Field(default=None, ge=0)
    # Files holding camera credentials ("user:password"), named by {secret:NAME} in source URLs.
    camera_secrets_dir: Path | None = None
    # Several camera/model pipelines; when empty, one pipeline "main" from the fields above.
    pipelines: list[PipelineConfig] = Field(default_factory=list, max_length=8)
    # Per-frame results for local consumers (either, both or neither).
    results_jsonl_path: Path | None = None
    results_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    results_mqtt_url: str | None = None
    results_mqtt_topic: str = "edgefleet/results"
    # Firmware profiles: runtimes to measure, threads, memory budget, micro-batching.
    profiles_dir: Path | None = None
    # Micro-batching of cameras sharing a model: frames per batch, and how long a waiting frame
    # may wait for batch-mates (None = the firmware profile's max_batch / batch_deadline_ms).
    max_batch: int | None = Field(default=None, ge=1, le=64)
    batch_deadline_ms: float | None = Field(default=None, ge=0, le=1000)
    batch_workers: int | None = Field(default=None, ge=1, le=16)
    memory_budget_mb: float | None = Field(default=None, gt=0, description="None = the profile's budget")
    runtime_timing_runs: int = Field(default=20, ge=1)
    # TUF metadata is otherwise fetched only when a command arrives: a device that gets no
    # deploy for weeks would never notice a frozen repository or mirror (stale, expired
    # metadata served to hide a release). 0 = check only with commands.
    update_check_interval_s: float = Field(default=900.0, ge=0)
    # Commands: how far ahead of the last accepted one a command's seq may be. The control
    # plane numbers each device's commands 1, 2, 3, ... and gaps come only from commands a
    # device never received (expired while offline, a failed dispatch pass), so even a
    # command a minute for a year stays far below this; a seq beyond it (a stolen director
    # key, a misnumbered control plane) would otherwise silence the device for good.
    command_seq_window: int = Field(default=1_000_000, ge=1)
    # Verified commands waiting for the command thread; forged ones never queue.
    command_queue_depth: int = Field(default=100, ge=1, le=10_000)
    # Job reports for forged, unsigned or misaddressed commands, at most this many a minute
    # (all are counted in telemetry's rejected_commands); a flood must not fill the outbox.
    forged_command_reports_per_minute: int = Field(default=10, ge=0)
    # Install state machine: restarts of one install before it is given up (crash loop).
    max_install_resumes: int = Field(default=3, ge=0)
    # Boot counter: start-ups of a committed model that crash before its first healthy
    # telemetry window; past this many the agent falls back to the previous slot.
    max_boot_attempts: int = Field(default=3, ge=1)
    # Probation after each switch; see agent.update.probation.ProbationLimits.
    probation_window_s: float = Field(default=10.0, ge=0)
    probation_min_frames: int = Field(default=20, ge=0)
    probation_max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    probation_max_invalid_outputs: int = Field(default=0, ge=0)
    probation_max_p95_latency_ratio: float = Field(default=3.0, gt=1)
    probation_min_confidence_ratio: float = Field(default=0.5, ge=0, le=1)
    probation_max_wait_s: float = Field(default=300.0, gt=0)
    # Offline buffering of reports and reconnects.
    max_outbox_reports: int = Field(default=10_000, ge=1)
    # OpenCV's internal threads for decode/resize (0 = its default: one per core).
    opencv_threads: int = Field(default=1, ge=0)
    reconnect_min_s: float | None = Field(default=None, gt=0)
    reconnect_max_s: float | None = Field(default=None, gt=0)
    # After this many failed broker connections in a row, ask the API (api_url, device token) for
    # the current broker URL, and use and remember it if it changed.
    broker_resolve_after_failures: int = Field(default=3, ge=1)
    # Optional Prometheus endpoint (agent/metrics.py): None = off. Loopback unless widened on purpose.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    def pipeline_configs(self) -> list[PipelineConfig]:
        if self.pipelines:
            return list(self.pipelines)
        return [PipelineConfig(name="main", source=self.source, source_loop=self.source_loop,
                               target_fps=self.target_fps, source_fps=self.source_fps,
                               frame_policy=self.frame_policy, frame_queue_depth=self.frame_queue_depth)]
    # --- security (written by `edgefleet-agent enroll`; docs/security.md) ---
    # Mutual TLS for mqtts:// broker URLs: the broker CA, and this device's certificate and key.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # The TUF root received at enrollment (trust anchor) and the director's public key.
    tuf_root_file: Path | None = None
    director_key_file: Path | None = None
    # This device's API token (for certificate rotation); kept in a 0600 file, never in the config.
    api_token_file: Path | None = None
    # Where TUF metadata and targets are served; default: <api_url>/tuf/metadata/ and /tuf/targets/.
    tuf_metadata_url: str | None = None
    tuf_targets_url: str | None = None
    # Drift windows and sample capture (agent/telemetry/drift.py, docs/drift.md).
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    def network(self, profile_network: NetworkSettings | None) -> NetworkSettings:
        """The network settings in force: this config's values over the profile's over the defaults.

        Raises:
            ValueError: the combination puts a lower bound above its upper bound.
        """
        base = (profile_network or NetworkSettings()).model_dump()
        overrides = {name: getattr(self, name) for name in NetworkSettings.model_fields
                     if getattr(self, name) is not None}
        try:
            return NetworkSettings.model_validate({**base, **overrides})
        except ValidationError as exc:
            raise ValueError(f"network settings: {exc.errors()[0]['msg']}") from exc

    @classmethod
    def load(cls, path: Path, env: dict[str, str] | None = None) -> AgentConfig:
        """Read ``path`` (YAML or JSON), apply env overrides, validate.

        Raises:
            ValueError: the file is missing, unparsable, or a value is invalid; the
                message names the field.
        """
        env = dict(os.environ) if env is None else env
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read agent config {path}: {exc.strerror}") from exc
        try:
            document: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"agent config {path} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"agent config {path} must be a mapping of settings")
        for name in cls.model_fields:
            override = env.get(ENV_PREFIX + name.upper())
            if override is not None:
                document[name] = override
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"agent config {path}: {field}: {first['msg']}") from exc
