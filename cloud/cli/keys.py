"""``edgefleet keys ...``: TUF and director keys, device certificates (on the control plane's data directory)."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlmodel import Session

from cloud.cli.client import (
    JsonOpt,
    console,
    emit_json,
    table,
)
from cloud.cli.local import local_settings
from cloud.core.db import make_engine, migrate
from cloud.security import FleetSecurity

keys_app = typer.Typer(help="TUF and director keys, device certificates.", no_args_is_help=True)


def fleet_security() -> FleetSecurity:

    settings = local_settings()
    migrate(settings.resolved_database_url)
    security = FleetSecurity(settings, make_engine(settings.resolved_database_url))
    security.initialise()
    return security


@keys_app.command("init")
def keys_init() -> None:
    """Create any missing key: TUF roles (root 2-of-3 in production), fleet CAs, director key."""
    security = fleet_security()
    console.print(f"keys ready under {security.settings.security_dir}")
    console.print_json(data=security.status())


@keys_app.command("status")
def keys_status(json_out: JsonOpt = False) -> None:
    """Root version, keys and thresholds per role, revoked certificates."""
    status = fleet_security().status()
    if json_out:
        emit_json(status)
        return
    console.print(f"TUF root version {status['tuf_root_version']}; "
                  f"{status['revoked_serials']} revoked device certificate(s)", highlight=False)
    console.print(table("TUF roles", ["role", "keys", "threshold"],
                         ([name, str(role["keys"]), str(role["threshold"])]
                          for name, role in sorted(status["tuf_roles"].items()))))


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp")],
    keys: Annotated[int | None, typer.Option(min=1, help="number of new keys (default: as many as now)")] = None,
    threshold: Annotated[int | None, typer.Option(min=1, help="new threshold (default: unchanged)")] = None,
) -> None:
    """Replace a role's keys; the new root is signed by the old and the new root keys."""
    security = fleet_security()
    try:
        root = security.tuf.rotate_keys(role, keys=keys, threshold=threshold)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"rotated {role}: root is now version {root.version}, "
                  f"{len(root.roles[role].keyids)} keys, threshold {root.roles[role].threshold}")


@keys_app.command("rotate-director")
def keys_rotate_director() -> None:
    """Replace the director key. Devices need the new public key (re-enroll them)."""
    security = fleet_security()
    security.director.rotate()
    console.print("director key rotated; public key:")
    console.print(security.director.public_pem().decode())


@keys_app.command("revoke-device")
def keys_revoke_device(device_id: str) -> None:
    """Revoke every certificate of a device and rewrite the CRL; then restart or SIGHUP the broker."""
    security = fleet_security()
    with Session(security.engine) as session:
        serials = security.revoke_device(session, device_id)
    console.print(f"revoked {len(serials)} certificate(s) of {device_id}; CRL: {security.ca.crl_file}")
