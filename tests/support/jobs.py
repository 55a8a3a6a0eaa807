"""Waiting for jobs (cloud/jobs/) through the API, with a deadline."""

from __future__ import annotations

from typing import Any

from tests.support.services import wait_for

FINAL = ("succeeded", "failed", "cancelled")


def wait_for_job(api, job_id: str, timeout_s: float = 300, predicate=None, what: str = "to end") -> dict[str, Any]:
    """Poll ``GET /api/v1/jobs/{id}`` until ``predicate(job)`` (default: the job ended); return the job."""
    predicate = predicate or (lambda job: job["state"] in FINAL)

    def check() -> dict[str, Any] | None:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        return job if predicate(job) else None

    return wait_for(check, timeout_s=timeout_s, interval_s=0.2, what=f"job {job_id} {what}")
