"""``edgefleet bundle ...``: signed update bundles for devices without a network (on the control plane's data directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session

from cloud.cli.client import JsonOpt, console, emit_json
from cloud.cli.keys import fleet_security
from cloud.cli.local import local_actor
from cloud.fleet.bundle import export_bundle, parse_duration_s
from cloud.fleet.crud import NotFound
from cloud.security.tuf_repo import OfflineKeyRequired

bundle_app = typer.Typer(help="Signed update bundles for air-gapped devices.", no_args_is_help=True)


@bundle_app.command("export")
def bundle_export(
    package_id: Annotated[str, typer.Argument(help="the package to carry")],
    out: Annotated[Path, typer.Option("--out", "-o", help="a new directory, or a file ending in .tar")],
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="device id (repeatable)")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="every registered device of this hardware profile")] = None,
    expires: Annotated[str, typer.Option(help="how long the bundle may be installed: 30d, 12h, 90m, 3600s")] = "30d",
    json_out: JsonOpt = False,
) -> None:
    """Write TUF metadata, package files and director-signed commands for the named devices.

    Each device gets a job in a new deployment; it reports the outcome when it next reaches the broker.
    """
    try:
        expires_in_s = parse_duration_s(expires)
    except ValueError as exc:
        console.print(f"[red]error:[/] --expires: {exc}", highlight=False)
        raise typer.Exit(2) from None
    security = fleet_security()
    try:
        with Session(security.engine) as session:
            bundle = export_bundle(security, session, package_id, out=out, expires_in_s=expires_in_s,
                                   device_ids=device, profile=profile, actor=local_actor())
    except (ValueError, NotFound, OfflineKeyRequired) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if json_out:
        emit_json({"bundle_id": bundle.bundle_id, "path": str(bundle.path), "package_id": bundle.package_id,
                   "model_version": bundle.model_version, "deployment_id": bundle.deployment_id,
                   "jobs": bundle.jobs, "expires_at": bundle.expires_at.isoformat()})
        return
    console.print(f"wrote {bundle.path}: {bundle.package_id} ({bundle.model_version}) for {len(bundle.jobs)} "
                  f"device(s), valid until {bundle.expires_at.isoformat()}; deployment {bundle.deployment_id}. "
                  "On each device: `edgefleet-agent install-bundle PATH --config agent.yaml`", highlight=False)
