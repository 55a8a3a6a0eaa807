"""Firmware profiles: one YAML file per hardware class in ``firmware_profiles/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).resolve().parent.parent / "firmware_profiles"


class RuntimeChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    runtime: str
    precision: str


class NetworkSettings(BaseModel):
    """How the agent uses the network on this class of hardware: MQTT keepalive, broker
    reconnect backoff, package download timeouts and resume backoff.

    The defaults suit a wired or good Wi-Fi link; profiles for devices that usually sit on
    cellular or long-range links set longer ones (docs/operations.md, network settings).
    A value in the agent config overrides the profile's.
    """

    model_config = ConfigDict(extra="forbid")

    # MQTT keepalive: the broker drops a client after 1.5x this with no packet. Longer saves
    # data on a metered link; it must stay under the carrier's NAT idle timeout (often 2-5 min).
    keepalive_s: int = Field(default=30, ge=5, le=900)
    # Broker reconnect: jittered exponential backoff between these bounds.
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Package downloads: the longest silence on a socket before the read is retried, the total
    # deadline for one file (a slow trickle must end), and the backoff between resume attempts
    # (each resumes with an HTTP Range request from the bytes already received).
    download_timeout_s: float = Field(default=30.0, gt=0)
    download_deadline_s: float = Field(default=300.0, gt=0)
    download_retry_min_s: float = Field(default=1.0, gt=0)
    download_retry_max_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> NetworkSettings:
        for low, high in (("reconnect_min_s", "reconnect_max_s"), ("download_retry_min_s", "download_retry_max_s"),
                          ("download_timeout_s", "download_deadline_s")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


class FirmwareProfile(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arch: str
    runtimes: list[RuntimeChoice] = Field(min_length=1)
    threads: int = Field(default=1, ge=1)
    input_size: int = Field(default=224, ge=16)
    width_multiplier: float = Field(default=1.0, gt=0)
    memory_budget_mb: int = Field(default=512, gt=0)
    # Micro-batching of cameras that share a model: at most this many frames a batch, and a
    # frame waits at most this long for batch-mates before its batch runs anyway.
    max_batch: int = Field(default=8, ge=1, le=64)
    batch_deadline_ms: float = Field(default=15.0, ge=0, le=1000)
    # Inference threads sharing that model (one batch each at a time): the cores inference may use.
    batch_workers: int = Field(default=1, ge=1, le=16)
    quantization: dict[str, Any] = Field(default_factory=dict)
    built_on_device: list[str] = Field(default_factory=list)
    built_externally: list[str] = Field(default_factory=list)
    network: NetworkSettings = Field(default_factory=NetworkSettings)


def load_profile(path: Path) -> FirmwareProfile:
    """Raises ``ValueError`` naming the file and field when a profile is invalid."""
    try:
        return FirmwareProfile.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid firmware profile {path}: {exc}") from exc


def load_profiles(directory: Path = PROFILES_DIR) -> dict[str, FirmwareProfile]:
    profiles = {}
    for path in sorted(directory.glob("*.yaml")):
        profile = load_profile(path)
        if profile.name != path.stem:
            raise ValueError(f"profile {path} is named {profile.name!r}; the file must be {profile.name}.yaml")
        profiles[profile.name] = profile
    return profiles
