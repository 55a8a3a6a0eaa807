"""``edgefleet drift baseline ...``: each camera's own drift baseline, and its confirmation."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

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
    table,
)

baseline_app = typer.Typer(help="Per-camera drift baselines: what each camera normally sees.", no_args_is_help=True)

CameraOpt = Annotated[str | None, typer.Option(help="the camera (agent pipeline) when the device has several")]
PackageOpt = Annotated[str | None, typer.Option("--package", help="the package, when baselines of several are proposed")]


def _rows(baselines: list[dict[str, Any]]) -> list[list[str]]:
    return [[b["camera"], b["package_id"], b["state"], f"{b['windows']}/{b['windows_needed']}", str(b["frames"]),
             cell(b["k"], ".2f"), str(b["confirmed_by"] or "-")] for b in baselines]


_COLUMNS = ["camera", "package", "state", "windows", "frames", "k", "confirmed by"]


@baseline_app.command("show")
def baseline_show(device: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                  json_out: JsonOpt = False) -> None:
    """The device's baselines: collecting, proposed (waiting for you) or confirmed."""
    baselines: list[dict[str, Any]] = call(server, token, "GET", f"/api/v1/devices/{quote(device, safe='')}/drift/baseline")
    if json_out:
        emit_json(baselines)
        return
    if not baselines:
        console.print(f"{device} has no baseline yet: one is proposed after its first tested drift windows "
                      "(EDGEFLEET_MONITOR_BASELINE_WINDOWS, default 5).")
        return
    console.print(table(f"drift baselines of {device}", _COLUMNS, _rows(baselines)))


@baseline_app.command("confirm")
def baseline_confirm(device: str, camera: CameraOpt = None, package: PackageOpt = None,
                     server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Confirm the camera's proposed baseline: its windows are then tested against what it normally sees."""
    body = {k: v for k, v in (("camera", camera), ("package_id", package)) if v is not None}
    confirmed: dict[str, Any] = call(server, token, "POST",
                                     f"/api/v1/devices/{quote(device, safe='')}/drift/baseline/confirm", body or None)
    if json_out:
        emit_json(confirmed)
        return
    console.print(f"baseline of {device} camera {confirmed['camera']} under {confirmed['package_id']} confirmed "
                  f"({confirmed['windows']} windows, {confirmed['frames']} frames, k={cell(confirmed['k'], '.2f')})")
