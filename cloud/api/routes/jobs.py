"""Jobs: long work (train, build, import, retrain) that the API queues and answers 202 for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from cloud.api.deps import PlaneDep
from cloud.core.plane import Plane
from cloud.errors import BadRequestError
from cloud.jobs import store

router = APIRouter(prefix="/jobs", tags=["jobs"])


def actor(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return f"operator:{principal.name}" if principal is not None else "operator"


def submit(plane: Plane, kind: str, params: dict[str, Any], *, created_by: str) -> dict[str, Any]:
    """Record the job and queue it; the answer (for a 202) carries ``job_id`` and the job."""
    job = store.create_job(plane.engine, kind, params, created_by=created_by)
    plane.jobs.submit(job)
    return {"job_id": job.id, **store.get_job(plane.engine, job.id).public()}


@router.get("")
def list_jobs(plane: PlaneDep, state: str | None = None, kind: str | None = None,
              limit: int = Query(default=100, ge=1, le=1000)) -> list[dict[str, Any]]:
    try:
        jobs = store.list_jobs(plane.engine, state=state, kind=kind, limit=limit)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    return [job.public() for job in jobs]


@router.get("/{job_id}")
def get_job(job_id: str, plane: PlaneDep) -> dict[str, Any]:
    return store.get_job(plane.engine, job_id).public()


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, plane: PlaneDep, request: Request) -> dict[str, Any]:
    """A queued job never starts; a running one stops at its next progress report and ends ``cancelled``."""
    job = store.request_cancel(plane.engine, job_id, by=actor(request))
    if job.state == "cancelled":
        plane.jobs.withdraw(job)
    return job.public()
