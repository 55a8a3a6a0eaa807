"""Run one job: claim it, heartbeat while it runs, end it succeeded, failed or cancelled.

The same function runs under the control plane's thread pool and under procrastinate
workers, so a job behaves alike wherever it runs.
"""

from __future__ import annotations

import logging
import socket
import threading
import traceback

from sqlalchemy import Engine

from cloud.core.config import Settings
from cloud.jobs import store
from cloud.jobs.handlers import HANDLERS, JobCancelled, Reporter

log = logging.getLogger(__name__)

__all__ = ["Reaper", "run_job", "worker_name"]


def worker_name(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{threading.get_native_id()}"


def run_job(engine: Engine, settings: Settings, job_id: str, worker: str) -> str:
    """Run ``job_id`` to its end; returns the final state, or ``skipped`` if it was not ours to run."""
    if not store.claim(engine, job_id, worker):
        log.info("job %s was cancelled or taken before it started", job_id)
        return "skipped"
    job = store.get_job(engine, job_id)
    store.append_log(engine, job_id, f"started on {worker}")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.jobs.heartbeat_s):
            try:
                store.heartbeat(engine, job_id, worker)
            except Exception:  # the database may blink; the next beat tries again
                log.exception("job %s: heartbeat failed", job_id)

    beating = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    beating.start()
    reporter = Reporter(engine, job_id)
    try:
        reporter.progress(0.0, "started")
        result = HANDLERS[job.kind](engine, settings, dict(job.params), reporter)
    except JobCancelled:
        store.finish(engine, job_id, "cancelled", message="cancelled")
        return "cancelled"
    except Exception as exc:
        log.warning("job %s (%s) failed: %s", job_id, job.kind, exc)
        for line in traceback.format_exc().splitlines()[-8:]:
            store.append_log(engine, job_id, line)
        store.finish(engine, job_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000], message="failed")
        return "failed"
    finally:
        stop.set()
        beating.join(timeout=5)
    store.finish(engine, job_id, "succeeded", result=result, message="succeeded")
    return "succeeded"


class Reaper:
    """Fails running jobs whose worker stopped heartbeating (killed, crashed, its machine gone)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jobs-reaper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Check a few times per timeout so a lost worker shows within about one timeout.
        interval = max(0.2, min(self.settings.jobs.heartbeat_s, self.settings.jobs.lost_after_s / 3))
        while not self._stop.wait(interval):
            try:
                for job_id in store.reap_lost(self.engine, self.settings.jobs.lost_after_s):
                    log.warning("job %s failed: its worker stopped heartbeating", job_id)
            except Exception:
                log.exception("reaping lost jobs failed; retrying")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
