"""``edgefleet device ...``: list, inspect, register and revoke devices (over HTTP)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

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
    print_listing,
    table,
)

# --- devices -----------------------------------------------------------------
device_app = typer.Typer(help="Devices: list, inspect and register.", no_args_is_help=True)


@device_app.command("list")
def device_list(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    online: Annotated[bool | None, typer.Option("--online/--offline", help="only online or only offline devices")] = None,
    profile: Annotated[str | None, typer.Option(help="only this hardware profile")] = None,
) -> None:
    """List registered devices with their running version and whether they are online."""
    devices: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/devices", limit=1000)
    devices = [d for d in devices if (online is None or d["online"] == online)
               and (profile is None or d["hardware_profile"] == profile)]
    if json_out:
        emit_json(devices)
        return
    print_listing(f"devices ({len(devices)})", ["device", "online", "profile", "model version", "runtime",
                                                 "agent", "last seen"],
                  [[d["id"], online_cell(d), d["hardware_profile"], cell(d["running_model_version"]),
                    cell(d["runtime"]), cell(d["agent_version"]), cell(d["last_seen_at"])] for d in devices],
                  empty_hint="Enroll the first device: `edgefleet token enroll DEVICE_ID --profile PROFILE` "
                             "prints the command to run on it (docs/agent-install.md).")


@device_app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    windows: Annotated[int, typer.Option(min=1, max=1000, help="how many telemetry windows to show")] = 10,
) -> None:
    """One device: identity, running version and its latest telemetry windows."""
    device = call(server, token, "GET", f"/api/v1/devices/{device_id}")
    telemetry = call(server, token, "GET", f"/api/v1/devices/{device_id}/telemetry", limit=windows)
    if json_out:
        emit_json({"device": device, "telemetry": telemetry})
        return
    summary = Table.grid(padding=(0, 2))
    for key in ("id", "online", "hardware_profile", "running_model_version", "running_package_id", "runtime",
                "agent_version", "last_seen_at", "created_at"):
        summary.add_row(f"[bold]{key}[/]", cell(device.get(key)))
    console.print(summary)
    console.print(table("telemetry (newest first)", ["sent", "model", "frames", "fps", "p95 ms", "confidence",
                                                      "errors", "cpu %", "MiB"],
                         ([cell(w["sent_at"]), cell(w["model_version"]), cell(w["frames"]), cell(w["fps"], ".1f"),
                           cell(w["p95_latency_ms"], ".2f"), cell(w["mean_confidence"], ".3f"),
                           cell(w["inference_errors"]), cell(w["cpu_percent"], ".0f"), cell(w["memory_mb"], ".0f")]
                          for w in telemetry)))


@device_app.command("register")
def device_register(
    device_id: Annotated[str, typer.Argument(help="device id: letters, digits, '_', '.', '-'")],
    hardware_profile: Annotated[str, typer.Option("--profile", help="firmware profile name")] = "x86-64-avx2",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a device so its reports are accepted (needs an operator token)."""
    device = call(server, token, "POST", "/api/v1/devices", {"id": device_id, "hardware_profile": hardware_profile})
    if json_out:
        emit_json(device)
    else:
        console.print(f"registered {device['id']} ({device['hardware_profile']})")


# --- actions that complete other groups (all over HTTP) ------------------------
@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Take every credential of a device (admin): certificates, API tokens, pending enrollment."""
    result = call(server, token, "POST", f"/api/v1/devices/{device_id}/revoke")
    if json_out:
        emit_json(result)
        return
    serials = result.get("revoked_serials", [])
    console.print(f"revoked {len(serials)} certificate(s), the API tokens and any pending enrollment of {device_id}; "
                  f"CRL {result.get('crl_file')}\na broker run beside `edgefleet broker-watch-crl` refuses it within "
                  f"seconds; `edgefleet device readmit {device_id}` lets it enroll again", highlight=False)


@device_app.command("readmit")
def device_readmit(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Let a revoked device enroll again (admin); it then needs a new enrollment token."""
    call(server, token, "POST", f"/api/v1/devices/{device_id}/readmit")
    console.print(f"{device_id} may enroll again: `edgefleet token enroll {device_id}`", highlight=False)


@device_app.command("resync")
def device_resync(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reset a device's command sequence to the control plane's (operator): after a database
    restore, or when the device refuses commands with seq_out_of_window or replayed_command."""
    result = call(server, token, "POST", f"/api/v1/devices/{device_id}/resync")
    if json_out:
        emit_json(result)
        return
    console.print(f"sent resync job {result['job_id']} to {device_id}: its command seq base becomes {result['seq']}; "
                  f"the outcome shows in its job reports", highlight=False)
