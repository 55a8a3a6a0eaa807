"""The poll loop behind every ``watch``: a progress bar on stderr, one GET per interval, until the end or a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from cloud.cli.client import err_console

Shown = Callable[[dict[str, Any], Progress, TaskID], None]


def follow(fetch: Callable[[], dict[str, Any]], show: Shown, *, ended: Callable[[dict[str, Any]], bool], title: str,
           interval_s: float, timeout_s: float, quiet: bool, total: float | None = None,
           counted: bool = False) -> dict[str, Any]:
    """Fetch, show, and repeat every ``interval_s`` until ``ended`` or ``timeout_s``; return the last state.

    ``show`` updates the bar (its ``detail`` field, ``description``, ``completed``) and may print
    above it with ``progress.console``. The bar goes to stderr so ``--json`` output on stdout stays
    clean, and is off when ``quiet``. ``counted`` shows completed/total (devices, jobs) rather than
    a fraction. A caller tells a timeout from the end by ``ended`` of the state returned.
    """
    deadline = time.monotonic() + timeout_s
    columns: list[ProgressColumn] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if counted:
        columns.append(MofNCompleteColumn())
    columns += [TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
    progress = Progress(*columns, console=err_console, disable=quiet)
    with progress:
        task = progress.add_task(title, total=total, detail="")
        while True:
            state = fetch()
            show(state, progress, task)
            if ended(state) or time.monotonic() > deadline:
                return state
            time.sleep(interval_s)


__all__ = ["follow"]
