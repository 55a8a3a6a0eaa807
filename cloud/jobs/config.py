"""Job settings (env prefix ``EDGEFLEET_JOBS_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["JobSettings"]


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_JOBS_", extra="ignore")

    # auto: procrastinate on PostgreSQL, a thread pool inside the control plane on SQLite
    # (docs/adr/0010-long-work-as-jobs.md).
    backend: Literal["auto", "threads", "procrastinate"] = "auto"
    # Jobs the control plane runs itself. 0 on PostgreSQL: only `edgefleet worker` processes run them.
    in_process_workers: int = Field(default=1, ge=0, le=16)
    # How often a running job's worker writes its heartbeat, and after how long without one
    # the control plane (or any worker) fails the job as "worker lost".
    heartbeat_s: float = Field(default=5.0, gt=0, le=300)
    lost_after_s: float = Field(default=30.0, gt=0)
    queue: str = Field(default="edgefleet-jobs", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
