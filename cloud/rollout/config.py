"""Rollout engine settings (env prefix ``EDGEFLEET_ROLLOUT_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RolloutEngineSettings"]


class RolloutEngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_ROLLOUT_", extra="ignore")

    # Run the engine inside the control plane. Several control planes on one PostgreSQL
    # may all run it (row locks keep them apart); on SQLite run exactly one.
    engine_enabled: bool = True
    tick_s: float = Field(default=1.0, gt=0, le=60)
    max_dispatch_per_tick: int = Field(default=5000, ge=1)
