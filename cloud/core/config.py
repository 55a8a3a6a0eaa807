"""The control plane's one settings object (env prefix ``EDGEFLEET_``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.contract import DEFAULT_MAX_REPORT_BYTES, DEFAULT_PREFIX
from cloud.jobs.config import JobSettings
from cloud.monitor.config import MonitorSettings
from cloud.rollout.config import RolloutEngineSettings

# Weaknesses production refuses unless the operator names them in EDGEFLEET_ACCEPT_WEAK_SECURITY.
WEAKNESSES: dict[str, str] = {
    "sqlite": "the database is SQLite (set EDGEFLEET_DATABASE_URL to PostgreSQL)",
    "embedded-broker": "the MQTT broker is the embedded development broker (set EDGEFLEET_MQTT_URL to mqtts://...)",
    "plain-mqtt": "the broker URL is plain mqtt:// (use mqtts:// with `edgefleet broker-config`)",
    "anonymous-mqtt": "no client certificate for the broker (set EDGEFLEET_MQTT_CERT_FILE and _KEY_FILE)",
    "http-public-url": "devices reach the control plane over plain http (set EDGEFLEET_PUBLIC_URL to https://...)",
    "single-root-key": "the TUF root is 1 of 1 key (use at least 2 of 3: EDGEFLEET_TUF_ROOT_KEYS / _THRESHOLD)",
    "online-root-keys": "TUF root or targets keys are on this host (move them offline: `edgefleet keys offline`)",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".edgefleet")
    # Unset: a SQLite file in data_dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    # Unset: an embedded amqtt broker on loopback, started by the control plane.
    mqtt_url: str | None = None
    # 0: a free port on the first start, remembered in data_dir and reused on every later start.
    embedded_broker_port: int = Field(default=0, ge=0, le=65535, description="0 = a free port, kept across restarts")
    topic_prefix: str = DEFAULT_PREFIX
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # The base URL devices use to download packages; defaults to the API address.
    public_url: str | None = None
    max_report_bytes: int = Field(default=DEFAULT_MAX_REPORT_BYTES, gt=0)
    command_ttl_s: int = Field(default=3600, gt=0)
    # Liveness (cloud/fleet/liveness.py): a device is offline once it has missed this many
    # reporting intervals: its own (the window of its latest telemetry), else the default below.
    offline_after_intervals: int = Field(default=3, ge=1)
    device_report_interval_s: float = Field(default=10.0, gt=0)
    # A floor for very short intervals, where ingest latency alone is a few intervals.
    offline_min_silence_s: float = Field(default=5.0, ge=0)
    # --- security (docs/security.md) ---
    # None: 3 root keys with threshold 2 in production, 1 of 1 in development and the demo.
    tuf_root_keys: int | None = Field(default=None, ge=1, le=15)
    tuf_root_threshold: int | None = Field(default=None, ge=1, le=15)
    tuf_root_expiry_s: int = Field(default=365 * 86_400, gt=0)
    tuf_targets_expiry_s: int = Field(default=90 * 86_400, gt=0)
    tuf_snapshot_expiry_s: int = Field(default=7 * 86_400, gt=0)
    tuf_timestamp_expiry_s: int = Field(default=86_400, gt=0)
    enrollment_token_ttl_s: int = Field(default=3600, gt=0)
    device_cert_validity_days: int = Field(default=90, gt=0)
    # Operator API tokens expire (devices' own tokens live as long as the device's enrollment).
    api_token_ttl_s: int = Field(default=90 * 86_400, gt=0)
    # A dashboard login lasts this long, and never longer than the token it was made from.
    dashboard_session_ttl_s: int = Field(default=12 * 3600, gt=0)
    # Failed dashboard logins per client address (and per token prefix) in a minute before 429.
    login_failures_per_minute: int = Field(default=5, ge=1)
    # --- request bodies (docs/operations.md) ---
    # Every request body, JSON or not, unauthenticated routes included; uploads have their own.
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    max_model_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Datasets are ingested and validated only from inside this directory (default data_dir/imports).
    dataset_import_root: Path | None = None
    # Mutual TLS to the broker for mqtts:// URLs: the broker CA, and our client certificate and key.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # The broker URL handed to devices at enrollment; defaults to the one the control plane uses.
    device_mqtt_url: str | None = None
    # Production refuses each weakness in WEAKNESSES unless named here (comma-separated); every
    # accepted one is logged at WARNING on every start. Development accepts them all.
    accept_weak_security: str = ""
    # --- scale-out and ingest (docs/scaling.md) ---
    # False: an API-only node (it still publishes commands); ingest runs in other processes
    # (python -m cloud.workers.ingest_node), so API latency does not compete with ingest.
    ingest_enabled: bool = True
    # MQTT 5 lets ingest raise the broker's in-flight window (Receive Maximum); the
    # embedded amqtt broker speaks 3.1.1 only and always gets 3.1.1.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    # A stable id per ingest node makes its broker session persistent: reports sent while
    # the node is down wait for it. Unset: a clean session (single node, development).
    ingest_client_id: str | None = Field(default=None, max_length=64)
    # Several nodes in one group split device traffic ($share/<group>/...).
    ingest_shared_group: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ingest_session_expiry_s: int = Field(default=7 * 86_400, gt=0)
    ingest_receive_maximum: int = Field(default=2000, ge=1, le=65_535)
    ingest_batch_max_rows: int = Field(default=500, ge=1, le=10_000)
    ingest_batch_wait_ms: float = Field(default=10.0, ge=0, le=1000)
    # At least the Receive Maximum: unacknowledged QoS 1 reports never exceed it, so the
    # network thread never waits on a full queue (a stalled reader makes Mosquitto drop).
    ingest_queue_max: int = Field(default=70_000, ge=100)
    # Telemetry tiers: raw rows, then 1-minute, then 1-hour rollups (cloud/ops/telemetry_retention.py).
    retention_enabled: bool = True
    retention_interval_s: float = Field(default=600.0, gt=0)
    telemetry_raw_retention_h: float = Field(default=48.0, gt=0)
    telemetry_minute_retention_d: float = Field(default=14.0, gt=0)
    telemetry_hour_retention_d: float = Field(default=400.0, gt=0)
    # Feature settings with their own env prefixes (EDGEFLEET_MONITOR_*, EDGEFLEET_ROLLOUT_*),
    # read once with the rest so every part of one process sees the same values.
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    rollout: RolloutEngineSettings = Field(default_factory=RolloutEngineSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)

    @field_validator("accept_weak_security")
    @classmethod
    def _known_weaknesses(cls, value: str) -> str:
        unknown = [part.strip() for part in value.split(",") if part.strip() and part.strip() not in WEAKNESSES]
        if unknown:
            raise ValueError(f"unknown weakness {', '.join(unknown)}; known: {', '.join(WEAKNESSES)}")
        return value

    @property
    def accepted_weaknesses(self) -> list[str]:
        return [part.strip() for part in self.accept_weak_security.split(",") if part.strip()]

    def weaknesses(self) -> list[str]:
        """The names (keys of WEAKNESSES) of every weak setting in this configuration."""
        found: list[str] = []
        url = (self.database_url or "sqlite").lower()
        if url.startswith("sqlite"):
            found.append("sqlite")
        if self.mqtt_url is None:
            found.append("embedded-broker")
        elif self.mqtt_url.startswith("mqtt://"):
            found.append("plain-mqtt")
        elif self.mqtt_cert_file is None or self.mqtt_key_file is None:
            found.append("anonymous-mqtt")
        if not (self.public_url or "").startswith("https://"):
            found.append("http-public-url")
        keys = self.tuf_root_keys if self.tuf_root_keys is not None else 3
        threshold = self.tuf_root_threshold if self.tuf_root_threshold is not None else 2
        if keys < 2 or threshold < 2:
            found.append("single-root-key")
        return found

    @model_validator(mode="after")
    def _production_refuses_weak_settings(self) -> Settings:
        if self.environment != "production":
            return self
        refused = [name for name in self.weaknesses() if name not in self.accepted_weaknesses]
        if refused:
            raise ValueError(
                "production refuses weak security settings: "
                + "; ".join(f"{WEAKNESSES[name]} [{name}]" for name in refused)
                + ". Fix them, or accept each one by name in EDGEFLEET_ACCEPT_WEAK_SECURITY (logged at every start)"
            )
        return self

    @model_validator(mode="after")
    def _queue_holds_the_in_flight_window(self) -> Settings:
        if self.ingest_queue_max < self.ingest_receive_maximum:
            raise ValueError(
                f"EDGEFLEET_INGEST_QUEUE_MAX ({self.ingest_queue_max}) must be at least "
                f"EDGEFLEET_INGEST_RECEIVE_MAXIMUM ({self.ingest_receive_maximum}): with a smaller queue the "
                "MQTT thread stops reading, and Mosquitto drops reports it has already acknowledged"
            )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"

    @property
    def packages_dir(self) -> Path:
        return self.data_dir / "packages"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def imports_dir(self) -> Path:
        return self.dataset_import_root or self.data_dir / "imports"

    @property
    def uploads_dir(self) -> Path:
        """Where uploads are streamed before they are moved to their place (same filesystem)."""
        return self.data_dir / "uploads"

    @property
    def security_dir(self) -> Path:
        return self.data_dir / "security"

    def base_url(self, api_port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.api_host}:{api_port or self.api_port}"
