"""Helpers for the commands that work on the local data directory (datasets, training, builds)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from cloud.cli.client import new_table
from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.fleet.crud import NotFound

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cloud.pipeline.service import PipelinePaths


console = Console(stderr=True)


JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]


ProfileOption = Annotated[list[str] | None, typer.Option("--profile", "-p", help="hardware profile (repeatable)")]


def local_actor() -> str:
    """Commands on the control plane's host run without an API token: the audit log names the OS user."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


@contextmanager
def user_errors() -> Iterator[None]:
    # Bad input (ValueError, including PipelineInputError) and unknown names → exit 2 with the message.

    try:
        yield
    except (ValueError, NotFound) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


# Set by ``edgefleet --data-dir``; None = EDGEFLEET_DATA_DIR or an existing ./.edgefleet.
data_dir_option: Path | None = None


def local_settings() -> Settings:
    """The settings of a command that works on the control plane's own store (database, packages, keys).

    It never invents a store: without ``--data-dir``, ``EDGEFLEET_DATA_DIR`` or
    ``EDGEFLEET_DATABASE_URL`` it uses ``./.edgefleet`` only if a control plane already
    keeps its database there; otherwise it stops with an error saying what to set.
    """
    settings = Settings() if data_dir_option is None else Settings(data_dir=data_dir_option)
    chosen = data_dir_option is not None or "EDGEFLEET_DATA_DIR" in os.environ or settings.database_url
    if not chosen and not (settings.data_dir / "edgefleet.db").exists():
        server = os.environ.get("EDGEFLEET_SERVER")
        hint = (f" EDGEFLEET_SERVER={server} is set, but this command works on the control plane's own files:"
                " run it on the control plane's host." if server else "")
        console.print(f"[red]error:[/] no local EdgeFleet data directory here ({settings.data_dir.resolve()} has "
                      "no database), and none was named: set EDGEFLEET_DATA_DIR or pass `edgefleet --data-dir DIR` "
                      f"(the directory `edgefleet serve` uses).{hint}", highlight=False)
        raise typer.Exit(2)
    return settings


def local_context() -> tuple[Engine, PipelinePaths]:
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import PipelinePaths

    settings = local_settings()
    migrate(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url), PipelinePaths.under(settings.data_dir)


def emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=1, default=str) + "\n")
    else:
        human()


def issues_table(issues: list[dict[str, str]], limit: int = 30) -> None:
    table = new_table(f"{len(issues)} issue(s)")
    for column in ("severity", "kind", "file", "reason"):
        table.add_column(column)
    for issue in issues[:limit]:
        table.add_row(issue["severity"], issue["kind"], issue["file"], issue["reason"])
    Console().print(table)
