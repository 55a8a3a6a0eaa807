"""``edgefleet fleet``: one row per device with its latest telemetry (over HTTP)."""

from __future__ import annotations

from typing import Any

import typer

from cloud.cli.client import (
    DEFAULT_SERVER,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    console,
    emit_json,
    online_cell,
    table,
)

# --- fleet and status --------------------------------------------------------
fleet_app = typer.Typer(help="The fleet at a glance.", invoke_without_command=True)


@fleet_app.callback()
def fleet(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One row per device: online, profile, running version and its latest telemetry window."""
    if ctx.invoked_subcommand is not None:
        return
    rows: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/fleet")
    if json_out:
        emit_json(rows)
        return
    online = sum(1 for r in rows if r["online"])
    console.print(table(f"fleet: {online}/{len(rows)} online", ["device", "online", "profile", "model version",
                                                                "runtime", "fps", "p95 ms", "confidence", "last seen"],
                         ([str(r["device_id"]), online_cell(r), cell(r["hardware_profile"]),
                           cell(r["model_version"]), cell(r["runtime"]), cell(r["fps"], ".1f"),
                           cell(r["p95_latency_ms"], ".2f"), cell(r["mean_confidence"], ".3f"),
                           cell(r["last_seen_at"])] for r in rows)))
