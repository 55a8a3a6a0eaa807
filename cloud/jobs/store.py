"""Job rows: create, read, and every state change as one guarded UPDATE.

Each transition names the state it leaves (``WHERE state = 'queued'`` ...), so two
parties racing (a cancel and a worker's claim, two workers, a reaper and a late
heartbeat) never both win; it reads the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from cloud.core.timestamps import utc_now
from cloud.errors import ConflictError, NotFoundError
from cloud.jobs.tables import FINAL_STATES, JOB_KINDS, JOB_STATES, Job

__all__ = ["LOG_LINES", "append_log", "claim", "create_job", "finish", "get_job", "heartbeat", "list_jobs",
           "reap_lost", "report_progress", "request_cancel", "set_queue_ref"]

# The log tail a job keeps; older lines fall off.
LOG_LINES = 200


def create_job(engine: Engine, kind: str, params: dict[str, Any], *, created_by: str = "operator") -> Job:
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
    job = Job(id=f"job-{uuid.uuid4().hex[:16]}", kind=kind, params=params, created_by=created_by,
              message="queued", log=[f"{utc_now().isoformat(timespec='seconds')} queued by {created_by}"])
    with Session(engine) as session:
        session.add(job)
        session.commit()
        session.refresh(job)
        session.expunge(job)
    return job


def get_job(engine: Engine, job_id: str) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} does not exist (edgefleet jobs list shows the known ones)")
        session.expunge(job)
        return job


def list_jobs(engine: Engine, *, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"unknown state {state!r}; known: {', '.join(JOB_STATES)}")
    if kind is not None and kind not in JOB_KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(JOB_KINDS)}")
    with Session(engine) as session:
        query = select(Job).order_by(col(Job.created_at).desc()).limit(limit)
        if state is not None:
            query = query.where(col(Job.state) == state)
        if kind is not None:
            query = query.where(col(Job.kind) == kind)
        jobs = list(session.exec(query))
        for job in jobs:
            session.expunge(job)
        return jobs


def set_queue_ref(engine: Engine, job_id: str, queue_ref: str) -> None:
    with Session(engine) as session:
        session.execute(update(Job).where(col(Job.id) == job_id).values(queue_ref=queue_ref))
        session.commit()


def claim(engine: Engine, job_id: str, worker: str) -> bool:
    """queued → running for ``worker``. False: cancelled meanwhile, or another worker has it."""
    now = utc_now()
    with Session(engine) as session:
        claimed = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
            .values(state="running", worker=worker, started_at=now, heartbeat_at=now, message="started"))
        session.commit()
        return bool(claimed.rowcount)  # type: ignore[attr-defined]


def heartbeat(engine: Engine, job_id: str, worker: str) -> bool:
    """Tell the reaper this worker still runs the job. False: the job is no longer ours to run."""
    with Session(engine) as session:
        beat = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "running", col(Job.worker) == worker)
            .values(heartbeat_at=utc_now()))
        session.commit()
        return bool(beat.rowcount)  # type: ignore[attr-defined]


def append_log(engine: Engine, job_id: str, line: str) -> None:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        job.log = [*job.log, f"{utc_now().isoformat(timespec='seconds')} {line}"][-LOG_LINES:]
        session.add(job)
        session.commit()


def report_progress(engine: Engine, job_id: str, fraction: float, message: str) -> bool:
    """Record progress (and a log line); returns whether a cancel was requested meanwhile."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return True
        if job.state == "running":
            job.progress = min(1.0, max(0.0, fraction))
            job.message = message[:500]
            job.heartbeat_at = utc_now()
            job.log = [*job.log, f"{utc_now().isoformat(timespec='seconds')} {message}"][-LOG_LINES:]
            session.add(job)
            session.commit()
        return job.cancel_requested or job.state != "running"


def finish(engine: Engine, job_id: str, state: str, *, result: dict[str, Any] | None = None,
           error: str | None = None, message: str = "") -> bool:
    """running → a final state. False when the job already ended (e.g. the reaper declared its worker lost)."""
    assert state in FINAL_STATES
    values: dict[str, Any] = {"state": state, "finished_at": utc_now(), "message": message or state,
                              "error": error}
    if result is not None:
        values["result"] = result
    if state == "succeeded":
        values["progress"] = 1.0
    with Session(engine) as session:
        done = session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == "running").values(**values))
        session.commit()
        ended = bool(done.rowcount)  # type: ignore[attr-defined]
    if ended:
        append_log(engine, job_id, f"{state}" + (f": {error}" if error else ""))
    return ended


def request_cancel(engine: Engine, job_id: str, *, by: str = "operator") -> Job:
    """A queued job is cancelled at once (it never starts); a running one is asked to stop.

    Raises:
        NotFoundError: unknown job.
        ConflictError: the job already ended.
    """
    now = utc_now()
    with Session(engine) as session:
        withdrawn = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=now, message=f"cancelled by {by}"))
        asked = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "running")
            .values(cancel_requested=True, message=f"cancel requested by {by}"))
        session.commit()
        changed = bool(withdrawn.rowcount or asked.rowcount)  # type: ignore[attr-defined]
    job = get_job(engine, job_id)
    if not changed:
        raise ConflictError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
    append_log(engine, job_id, f"cancel requested by {by}" if job.state == "running" else f"cancelled by {by}")
    return get_job(engine, job_id)


def reap_lost(engine: Engine, timeout_s: float) -> list[str]:
    """Fail running jobs whose worker has not written a heartbeat for ``timeout_s``; return their ids."""
    cutoff = utc_now() - timedelta(seconds=timeout_s)
    with Session(engine) as session:
        stale = [job.id for job in session.exec(select(Job).where(col(Job.state) == "running",
                                                                 col(Job.heartbeat_at) < cutoff))]
    lost = []
    for job_id in stale:
        with Session(engine) as session:
            reaped = session.execute(
                update(Job).where(col(Job.id) == job_id, col(Job.state) == "running",
                                  col(Job.heartbeat_at) < cutoff)
                .values(state="failed", finished_at=utc_now(), message="worker lost",
                        error=f"worker lost: no heartbeat for {timeout_s:g} s (the process died or was killed)"))
            session.commit()
            if reaped.rowcount:  # type: ignore[attr-defined]
                lost.append(job_id)
    for job_id in lost:
        append_log(engine, job_id, "failed: worker lost")
    return lost
