"""Where job ids wait for a worker: a thread pool (embedded) or procrastinate (PostgreSQL).

docs/adr/0010-long-work-as-jobs.md records the choice. Both hand the same
:func:`cloud.jobs.runner.run_job` a job id; the job row stays the truth for state,
progress and cancel, so the API reads one table whichever queue runs the job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy import Engine, text

from cloud.core.config import Settings
from cloud.jobs import store
from cloud.jobs.runner import Reaper, run_job, worker_name
from cloud.jobs.tables import Job

log = logging.getLogger(__name__)

__all__ = ["JobQueue", "ProcrastinateJobQueue", "ThreadJobQueue", "make_queue", "procrastinate_app",
           "uses_procrastinate"]

TASK_NAME = "edgefleet.run_job"


class JobQueue(Protocol):
    def start(self) -> None: ...

    def submit(self, job: Job) -> None:
        """Hand a queued job to the workers."""
        ...

    def withdraw(self, job: Job) -> None:
        """Best effort: take a cancelled queued job out of the queue (the row already says cancelled)."""
        ...

    def stop(self) -> None: ...


def uses_procrastinate(settings: Settings) -> bool:
    backend = settings.jobs.backend
    if backend == "auto":
        return settings.resolved_database_url.startswith("postgres")
    return backend == "procrastinate"


class ThreadJobQueue:
    """The embedded default: jobs run on threads of the control plane; nothing else to run."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self.reaper = Reaper(engine, settings)

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.settings.jobs.in_process_workers),
                                        thread_name_prefix="job")
        self.reaper.start()
        # Queued jobs outlive a restart in the job table: hand them to the new pool.
        for job in store.list_jobs(self.engine, state="queued", limit=10_000):
            self.submit(job)

    def submit(self, job: Job) -> None:
        assert self._pool is not None, "start the job queue first"
        self._pool.submit(self._run, job.id)

    def _run(self, job_id: str) -> None:
        try:
            run_job(self.engine, self.settings, job_id, worker_name("plane"))
        except Exception:
            log.exception("job %s crashed its runner", job_id)

    def withdraw(self, job: Job) -> None:
        """Nothing to do: a cancelled job fails its claim when its turn comes."""

    def stop(self) -> None:
        self.reaper.stop()
        if self._pool is not None:
            # Running jobs cannot be interrupted; their rows go stale and the next start's reaper fails them.
            self._pool.shutdown(wait=False, cancel_futures=True)


def conninfo(settings: Settings) -> str:
    """The database URL without SQLAlchemy's ``+psycopg`` dialect part, as psycopg wants it."""
    scheme, rest = settings.resolved_database_url.split("://", 1)
    scheme = scheme.split("+", 1)[0]
    return f"{'postgresql' if scheme == 'postgres' else scheme}://{rest}"


def procrastinate_app(settings: Settings) -> Any:
    """A procrastinate app with the one task that runs a job row, on a fresh psycopg connector."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(settings)))

    @app.task(name=TASK_NAME, queue=settings.jobs.queue, pass_context=True)
    def run_job_task(context: Any, job_id: str) -> None:
        runtime: JobRuntime = context.additional_context["edgefleet"]
        run_job(runtime.engine, runtime.settings, job_id, runtime.worker)

    return app


class JobRuntime:
    """What a procrastinate task needs from the process it runs in."""

    def __init__(self, engine: Engine, settings: Settings, worker: str) -> None:
        self.engine, self.settings, self.worker = engine, settings, worker


def apply_procrastinate_schema(engine: Engine, app: Any) -> None:
    """procrastinate's tables, once per database; an advisory lock keeps concurrent starts apart."""
    schema = app.schema_manager.get_schema()
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(7406431)"))
        if connection.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            raw = connection.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            cursor.execute(schema)
            cursor.close()
            log.info("applied procrastinate's schema")


class ProcrastinateJobQueue:
    """Jobs wait in procrastinate's PostgreSQL queue; `edgefleet worker` processes (and, unless
    ``EDGEFLEET_JOBS_IN_PROCESS_WORKERS=0``, a worker thread in the control plane) run them."""

    def __init__(self, engine: Engine, settings: Settings, *, role: str = "plane") -> None:
        self.engine = engine
        self.settings = settings
        self.role = role
        self.app = procrastinate_app(settings)
        self.reaper = Reaper(engine, settings)
        self._worker_thread: threading.Thread | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self._worker_task: asyncio.Task[Any] | None = None
        self._open = False

    def start(self) -> None:
        apply_procrastinate_schema(self.engine, self.app)
        self.app.open()
        self._open = True
        self.reaper.start()
        if self.settings.jobs.in_process_workers > 0:
            self._worker_thread = threading.Thread(target=self._run_worker, name="jobs-worker", daemon=True)
            self._worker_thread.start()

    def _run_worker(self) -> None:
        # A second app on its own (async) connector: the deferring app's sync pool stays for the API threads.
        worker_app = procrastinate_app(self.settings)
        name = worker_name(self.role)

        async def work() -> None:
            self._worker_loop = asyncio.get_running_loop()
            self._worker_task = asyncio.current_task()
            async with worker_app.open_async():
                await worker_app.run_worker_async(
                    queues=[self.settings.jobs.queue], name=name, concurrency=self.settings.jobs.in_process_workers,
                    install_signal_handlers=False, wait=True,
                    additional_context={"edgefleet": JobRuntime(self.engine, self.settings, name)})

        try:
            asyncio.run(work())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the in-process job worker stopped")

    def submit(self, job: Job) -> None:
        procrastinate_id = self.app.tasks[TASK_NAME].defer(job_id=job.id)
        store.set_queue_ref(self.engine, job.id, str(procrastinate_id))

    def withdraw(self, job: Job) -> None:
        if job.queue_ref is not None:
            self.app.job_manager.cancel_job_by_id(int(job.queue_ref))

    def stop(self) -> None:
        self.reaper.stop()
        if self._worker_loop is not None and self._worker_task is not None:
            self._worker_loop.call_soon_threadsafe(self._worker_task.cancel)
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=10)
        if self._open:
            self.app.close()
            self._open = False


def make_queue(engine: Engine, settings: Settings) -> JobQueue:
    if uses_procrastinate(settings):
        return ProcrastinateJobQueue(engine, settings)
    return ThreadJobQueue(engine, settings)
