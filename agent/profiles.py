"""Firmware profiles: one YAML file per hardware class in ``firmware_profiles/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "firmware_profiles"


class RuntimeChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    runtime: str
    precision: str


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
