"""``edgefleet status``: control-plane health and ingest counters (over HTTP)."""

from __future__ import annotations

from typing import Any

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
    """Health (broker connection), devices gone quiet or on a moved broker, report ingest counts."""
    if ctx.invoked_subcommand is not None:
        return
    health = call(server, token, "GET", "/api/v1/health")
    ingest = call(server, token, "GET", "/api/v1/ingest/stats")
    devices = _device_summary(server, token)
    if json_out:
        emit_json({"health": health, "ingest": ingest, "devices": devices})
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
    grid.add_row("[bold]devices online[/]", f"{devices['online']} of {devices['total']}")
    quiet = devices["gone_quiet"]
    if quiet:
        grid.add_row("[bold yellow]gone quiet[/]", f"{len(quiet)}: {_some(quiet)} (no report for several intervals, "
                                                   "no goodbye: powered off, hung, or cut off?)")
    moved = devices["broker_moved"]
    if moved:
        grid.add_row("[bold yellow]broker moved[/]",
                     f"{len(moved)} device(s) were given another broker URL than today's {devices['mqtt_url']}: "
                     f"{_some(moved)}. They ask the API for the new one after repeated connection failures; "
                     "if they stay offline, check the broker setting (EDGEFLEET_MQTT_URL, "
                     "EDGEFLEET_EMBEDDED_BROKER_PORT) or re-enroll them")
    console.print(grid)
    if not health.get("mqtt_connected"):
        raise typer.Exit(int(Exit.FAILED))


def _some(ids: list[str], shown: int = 10) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _device_summary(server: str, token: str | None) -> dict[str, Any]:
    """Online counts, devices gone quiet, and devices given another broker URL than the current one."""
    devices: list[dict[str, Any]] = []
    page = 1000
    while True:
        batch: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/devices", offset=len(devices), limit=page)
        devices += batch
        if len(batch) < page:
            break
    mqtt_url = call(server, token, "GET", "/api/v1/fleet/connection")["device_mqtt_url"]
    return {
        "total": len(devices),
        "online": sum(1 for d in devices if d["online"]),
        "gone_quiet": [d["id"] for d in devices if d.get("gone_quiet")],
        "mqtt_url": mqtt_url,
        "broker_moved": [d["id"] for d in devices if d.get("mqtt_url") and d["mqtt_url"] != mqtt_url],
    }
