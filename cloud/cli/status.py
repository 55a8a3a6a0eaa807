"""``edgefleet status``: control-plane health and ingest counters (over HTTP)."""

from __future__ import annotations

import typer
from rich.table import Table

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
)

status_app = typer.Typer(help="Control plane health and ingest counters.", invoke_without_command=True)


@status_app.callback()
def status(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Health (broker connection) and report ingest counts, rejections by reason."""
    if ctx.invoked_subcommand is not None:
        return
    health = call(server, token, "GET", "/api/v1/health")
    ingest = call(server, token, "GET", "/api/v1/ingest/stats")
    if json_out:
        emit_json({"health": health, "ingest": ingest})
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row("[bold]server[/]", server)
    grid.add_row("[bold]version[/]", cell(health.get("version")))
    grid.add_row("[bold]broker connected[/]", cell(health.get("mqtt_connected")))
    accepted = ingest.get("accepted", {})
    grid.add_row("[bold]reports accepted[/]", ", ".join(f"{k}={v}" for k, v in sorted(accepted.items())) or "0")
    rejected = ingest.get("rejected", {})
    grid.add_row("[bold]reports rejected[/]", ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "0")
    grid.add_row("[bold]duplicates[/]", cell(ingest.get("duplicates")))
    console.print(grid)
    if not health.get("mqtt_connected"):
        raise typer.Exit(int(Exit.FAILED))
