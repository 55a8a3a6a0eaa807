"""``edgefleet jobs ...`` and ``edgefleet worker``: long work (train, build, import, retrain) as jobs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID

from cloud.cli.client import (
    DEFAULT_SERVER,
    Exit,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    console,
    emit_json,
    fail,
    print_listing,
)
from cloud.cli.watch import follow

jobs_app = typer.Typer(help="Jobs: training, builds, dataset imports and retraining running off the request path.",
                       no_args_is_help=True)

_FINAL_JOB_STATES = {"succeeded": Exit.OK, "failed": Exit.FAILED, "cancelled": Exit.FAILED}

IdArg = Annotated[str, typer.Argument(help="job id (job-...)")]
IntervalOpt = Annotated[float, typer.Option("--interval", min=0.2, help="seconds between polls")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="give up watching after this many seconds")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="print the job id and return; do not watch the job")]


def _summary(job: dict[str, Any]) -> str:
    tail = f" ({job['error']})" if job.get("error") else ""
    return f"job {job['id']} ({job['kind']}): {job['state']} {job['progress'] * 100:.0f}% {job['message']}{tail}"


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="queued | running | succeeded | failed | cancelled")] = None,
    kind: Annotated[str | None, typer.Option(help="train | build | import | retrain")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    rows: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/jobs", state=state, kind=kind, limit=limit)
    if json_out:
        emit_json(rows)
        return
    print_listing("jobs", ["id", "kind", "state", "progress", "message", "started", "worker"],
                  [[j["id"], j["kind"], j["state"], f"{j['progress'] * 100:.0f}%", j["message"],
                    cell(j["started_at"] and j["started_at"][:19]), cell(j["worker"])] for j in rows],
                  empty_hint="`edgefleet governance retrain ID` or POST /api/v1/models/train start one.")


@jobs_app.command("show")
def jobs_show(job_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
              json_out: JsonOpt = False) -> None:
    """One job: state, progress, result or error, and its log tail."""
    job = call(server, token, "GET", f"/api/v1/jobs/{job_id}")
    if json_out:
        emit_json(job)
        return
    console.print(_summary(job), highlight=False)
    for line in job["log"][-20:]:
        console.print(f"  {line}", highlight=False, markup=False)
    if job["result"]:
        console.print(f"result: {job['result'].get('model_version') or job['result'].get('dataset_id') or ''} "
                      f"{', '.join(job['result'].get('package_ids') or [])}", highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                json_out: JsonOpt = False) -> None:
    """Cancel: a queued job never starts; a running one stops at its next progress report."""
    job = call(server, token, "POST", f"/api/v1/jobs/{job_id}/cancel")
    if json_out:
        emit_json(job)
    else:
        console.print(_summary(job), highlight=False)


def watch_job(server: str, token: str | None, job_id: str, *, json_out: bool, interval_s: float = 1.0,
              timeout_s: float = 24 * 3600.0) -> dict[str, Any]:
    """Follow a job with a progress bar (on stderr) and its new log lines until it ends; exit non-zero unless it
    succeeded (1 failed/cancelled, 6 timeout). Returns the finished job."""
    seen = 0

    def show(job: dict[str, Any], progress: Progress, task: TaskID) -> None:
        nonlocal seen
        if not json_out:
            # The log keeps the last lines only; print what is new since the last poll.
            new = job["log"][seen:] if seen <= len(job["log"]) else job["log"][-1:]
            for line in new:
                progress.console.print(f"  {line}", highlight=False, markup=False)
            seen = len(job["log"])
        progress.update(task, completed=job["progress"], description=f"{job_id} {job['state']}",
                        detail=job["message"])

    job = follow(lambda: call(server, token, "GET", f"/api/v1/jobs/{job_id}"), show,
                 ended=lambda job: job["state"] in _FINAL_JOB_STATES, title=job_id, interval_s=interval_s,
                 timeout_s=timeout_s, quiet=json_out, total=1.0)
    if job["state"] not in _FINAL_JOB_STATES:
        if json_out:
            emit_json(job)
        fail(f"job {job_id} still {job['state']} after {timeout_s:.0f}s (it keeps running: edgefleet jobs watch "
             f"{job_id})", Exit.TIMEOUT)
    return job


def finish_watch(job: dict[str, Any], *, json_out: bool) -> None:
    """Print the ended job and exit with its code."""
    if json_out:
        emit_json(job)
    else:
        console.print(_summary(job), highlight=False)
    code = _FINAL_JOB_STATES[job["state"]]
    if code != Exit.OK:
        raise typer.Exit(int(code))


@jobs_app.command("watch")
def jobs_watch(job_id: IdArg, interval_s: IntervalOpt = 1.0, timeout_s: TimeoutOpt = 24 * 3600.0,
               server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Follow a job until it ends. Exit 0 succeeded, 1 failed or cancelled, 6 timeout."""
    finish_watch(watch_job(server, token, job_id, json_out=json_out, interval_s=interval_s, timeout_s=timeout_s),
                 json_out=json_out)


def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="jobs run at once")] = 1,
    name: Annotated[str | None, typer.Option(help="the worker's name in job records")] = None,
) -> None:
    """Run a job worker against EDGEFLEET_DATABASE_URL (PostgreSQL) until SIGTERM/Ctrl-C (docs/operations.md)."""
    import logging

    from cloud.core.config import Settings
    from cloud.workers.jobs import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(Settings(), concurrency=concurrency, name=name)
    except ValueError as exc:
        fail(str(exc), Exit.BAD_INPUT)
