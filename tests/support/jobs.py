"""Waiting for jobs (cloud/jobs/) through the API, with a deadline."""

from __future__ import annotations

import time
from typing import Any

FINAL = ("succeeded", "failed", "cancelled")


def wait_for_job(api, job_id: str, timeout_s: float = 300, predicate=None, what: str = "to end") -> dict[str, Any]:
    """Poll ``GET /api/v1/jobs/{id}`` until ``predicate(job)`` (default: the job ended); return the job.

    On timeout the assertion shows the job as last seen (state, error, log tail).
    """
    predicate = predicate or (lambda job: job["state"] in FINAL)
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for job {job_id} {what}; last seen: {job}")
        time.sleep(0.2)
