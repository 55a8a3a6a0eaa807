"""``edgefleet camera ...``: a device's cameras, managed from the control plane (over HTTP).

Each change is sent to the device as a signed camera set; ``list`` shows the desired cameras
beside what the device reports running, and the applied vs desired revision.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

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

camera_app = typer.Typer(help="Cameras of a device: add, change, remove, list.", no_args_is_help=True)

DeviceOpt = Annotated[str, typer.Option("--device", help="device id")]
SourceOpt = Annotated[str, typer.Option(
    "--source", help="rtsp://{secret:NAME}@host/path (credentials only as a secret on the device), a file, "
                     "a device index or synthetic:<seed>")]
FpsOpt = Annotated[float, typer.Option("--fps", min=0, max=120, help="target frames per second (0 = all)")]
RegionOpt = Annotated[str | None, typer.Option(
    "--region", help="region of interest as fractions of the frame: x,y,width,height (e.g. 0.25,0,0.5,1)")]
PackageOpt = Annotated[str | None, typer.Option("--package", help="package the camera serves (one the device holds)")]
TransportOpt = Annotated[str, typer.Option("--transport", help="RTSP transport: tcp or udp")]


def _region(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    try:
        x, y, width, height = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter("--region takes four numbers: x,y,width,height (fractions of the frame)") from None
    return {"x": x, "y": y, "width": width, "height": height}


def _body(name: str, source: str, fps: float, region: str | None, package: str | None,
          transport: str) -> dict[str, Any]:
    return {"name": name, "source": source, "target_fps": fps, "region": _region(region), "package_id": package,
            "rtsp_transport": transport}


def _report_change(action: str, name: str, device: str, result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result)
        return
    sent = f"sent as job {result['job_id']}" if result.get("job_id") else "stored (no broker: not sent yet)"
    console.print(f"{action} camera {name} on {device}: camera set revision {result['revision']} {sent}; "
                  f"`edgefleet camera list --device {device}` shows when the device applied it", highlight=False)


@camera_app.command("add")
def camera_add(
    name: Annotated[str, typer.Argument(help="camera name: 1-32 letters, digits, '_' or '-'")],
    device: DeviceOpt,
    source: SourceOpt,
    fps: FpsOpt = 5.0,
    region: RegionOpt = None,
    package: PackageOpt = None,
    transport: TransportOpt = "tcp",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a camera to a device; it starts there without restarting the agent or the other cameras."""
    result = call(server, token, "POST", f"/api/v1/devices/{device}/cameras",
                  _body(name, source, fps, region, package, transport))
    _report_change("added", name, device, result, json_out)


@camera_app.command("set")
def camera_set(
    name: Annotated[str, typer.Argument(help="camera name")],
    device: DeviceOpt,
    source: Annotated[str | None, typer.Option("--source", help="new source (credentials only as {secret:NAME})")] = None,
    fps: Annotated[float | None, typer.Option("--fps", min=0, max=120, help="new target frames per second")] = None,
    region: Annotated[str | None, typer.Option(
        "--region", help="new region x,y,width,height (fractions of the frame), or 'full' for the whole frame")] = None,
    package: Annotated[str | None, typer.Option("--package", help="new package, or 'none' to serve what a deploy installs")] = None,
    transport: Annotated[str | None, typer.Option("--transport", help="new RTSP transport: tcp or udp")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change some of a camera's settings (the others stay); only that camera restarts on the device."""
    current: dict[str, Any] = call(server, token, "GET", f"/api/v1/devices/{device}/cameras")
    camera = next((c for c in current["cameras"] if c["name"] == name), None)
    if camera is None:
        fail(f"device {device} has no camera {name!r}; add it with `edgefleet camera add {name} --device {device} "
             "--source ...`", Exit.NOT_FOUND)
    body = {key: camera[key] for key in ("name", "source", "target_fps", "region", "package_id", "rtsp_transport")}
    if source is not None:
        body["source"] = source
    if fps is not None:
        body["target_fps"] = fps
    if region is not None:
        body["region"] = None if region == "full" else _region(region)
    if package is not None:
        body["package_id"] = None if package == "none" else package
    if transport is not None:
        body["rtsp_transport"] = transport
    result = call(server, token, "PUT", f"/api/v1/devices/{device}/cameras/{name}", body)
    _report_change("changed", name, device, result, json_out)


@camera_app.command("remove")
def camera_remove(
    name: Annotated[str, typer.Argument(help="camera name")],
    device: DeviceOpt,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a camera from a device (a device keeps at least one)."""
    result = call(server, token, "DELETE", f"/api/v1/devices/{device}/cameras/{name}")
    _report_change("removed", name, device, result, json_out)


def _state(camera: dict[str, Any]) -> str:
    reported = camera.get("reported")
    if reported is None:
        return "not running yet"
    state = str(reported["state"])
    return f"{state} ({reported['error_code']})" if reported.get("error_code") else state


@camera_app.command("list")
def camera_list(
    device: DeviceOpt,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A device's desired cameras beside what it reports, and the applied vs desired revision."""
    result: dict[str, Any] = call(server, token, "GET", f"/api/v1/devices/{device}/cameras")
    if json_out:
        emit_json(result)
        return
    applied = result["applied_revision"]
    console.print(f"{device}: desired revision {result['desired_revision']}, applied "
                  f"{'-' if applied is None else applied}{' (in sync)' if result['in_sync'] else ''}", highlight=False)
    if result.get("rejected_revision") is not None:
        console.print(f"[red]refused revision {result['rejected_revision']} ({result['error_code']}):[/] "
                      f"{result['error']}", highlight=False)
    rows = [[c["name"], c["source"], cell(c["target_fps"], ".1f"), cell(c["package_id"]), c["rtsp_transport"],
             "yes" if c["applied"] else "no", _state(c),
             cell(c["reported"]["frames_processed"] if c.get("reported") else None)]
            for c in result["cameras"]]
    rows += [[c["name"] + " (being removed)", c["source"], cell(c["target_fps"], ".1f"), cell(c["package_id"]),
              c["rtsp_transport"], "-", _state(c), cell(c["reported"]["frames_processed"])]
             for c in result.get("not_desired", [])]
    print_listing(f"cameras of {device}", ["camera", "source", "fps", "package", "transport", "applied", "state",
                                            "frames"], rows,
                  empty_hint=f"Add one: `edgefleet camera add NAME --device {device} --source rtsp://{{secret:NAME}}@host/path`")
