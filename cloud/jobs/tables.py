"""The job record (migration ``jobs18_0010_jobs``): what the API, CLI and dashboard show of a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, utc_now

__all__ = ["FINAL_STATES", "JOB_KINDS", "JOB_STATES", "Job"]

JOB_KINDS = ("train", "build", "import", "retrain")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})



class Job(SQLModel, table=True):
    """One unit of long work. The row is the truth: queues only carry its id."""

    __tablename__ = "jobs"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=16, index=True)
    state: str = Field(default="queued", max_length=16, index=True)
    # What the handler needs to run it (the validated request), and who asked.
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(default="operator", max_length=128)
    progress: float = 0.0
    message: str = Field(default="", max_length=500)
    # The last lines the job logged (at most runner.LOG_LINES).
    log: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Set by a cancel of a running job; the job stops at its next progress report.
    cancel_requested: bool = False
    worker: str | None = Field(default=None, max_length=128)
    # The queue's own id for the job (procrastinate's job id), so a queued job can be withdrawn.
    queue_ref: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Written by the worker every few seconds while the job runs; a stale one means the worker is gone.
    heartbeat_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": round(self.progress, 4),
                "message": self.message, "log": list(self.log), "result": dict(self.result), "error": self.error,
                "cancel_requested": self.cancel_requested, "worker": self.worker, "created_by": self.created_by,
                "params": dict(self.params), "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "heartbeat_at": _iso(self.heartbeat_at)}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat()
