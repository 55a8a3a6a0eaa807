"""A job worker: ``python -m cloud.workers.jobs`` (or ``edgefleet worker``).

Runs training, builds, dataset imports and retraining queued by any control plane on
the same PostgreSQL, on this machine::

    EDGEFLEET_DATABASE_URL=postgresql+psycopg://... EDGEFLEET_DATA_DIR=/srv/edgefleet \\
    python -m cloud.workers.jobs --concurrency 1

The worker needs the control plane's database and its data directory (datasets, models,
packages: a shared filesystem when it runs on another machine). It heartbeats each job
it runs; if it dies, the control plane (or any other worker) fails the job as "worker
lost" once the heartbeat is older than ``EDGEFLEET_JOBS_LOST_AFTER_S``. SIGTERM or
Ctrl-C stop it after the running job (procrastinate's graceful shutdown).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.jobs.queue import JobRuntime, apply_procrastinate_schema, procrastinate_app, uses_procrastinate
from cloud.jobs.runner import Reaper, worker_name

log = logging.getLogger("cloud.workers.jobs")

__all__ = ["main", "run_worker"]


def run_worker(settings: Settings, *, concurrency: int = 1, name: str | None = None) -> None:
    """Run jobs until stopped by a signal.

    Raises:
        ValueError: the database is not PostgreSQL (embedded deployments run jobs in the control plane).
    """
    if not uses_procrastinate(settings):
        raise ValueError("a separate job worker needs PostgreSQL: set EDGEFLEET_DATABASE_URL=postgresql+psycopg://..."
                         " (with SQLite, `edgefleet serve` runs the jobs itself)")
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    app = procrastinate_app(settings)
    apply_procrastinate_schema(engine, app)
    reaper = Reaper(engine, settings)
    reaper.start()
    name = name or worker_name("worker")
    log.info("job worker %s on queue %s", name, settings.jobs.queue)
    try:
        app.run_worker(queues=[settings.jobs.queue], name=name, concurrency=concurrency, wait=True,
                       additional_context={"edgefleet": JobRuntime(engine, settings, name)})
    finally:
        reaper.stop()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an EdgeFleet job worker (settings from EDGEFLEET_*).")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    parser.add_argument("--name", default=None, help="the worker's name in job records (default role@host:thread)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(Settings(), concurrency=max(1, args.concurrency), name=args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
