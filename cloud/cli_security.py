"""Security commands of ``edgefleet``: keys, tokens, broker configuration.

They act on the control plane's own data directory and database (EDGEFLEET_*
settings), so they run where the keys live, not over the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cloud.cli_ops import JsonOpt, _table, emit_json
from cloud.core.config import Settings
from cloud.core.db import make_engine, migrate
from cloud.security import FleetSecurity
from cloud.security.broker import write_broker_config, write_control_plane_identity
from cloud.security.models import Role
from cloud.security.tokens import create_api_token, create_enrollment_token

app = typer.Typer()
keys_app = typer.Typer(help="TUF and director keys, device certificates.", no_args_is_help=True)
token_app = typer.Typer(help="API and enrollment tokens.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")
console = Console()


def _security() -> FleetSecurity:

    settings = Settings()
    migrate(settings.resolved_database_url)
    security = FleetSecurity(settings, make_engine(settings.resolved_database_url))
    security.initialise()
    return security


@keys_app.command("init")
def keys_init() -> None:
    """Create any missing key: TUF roles (root 2-of-3 in production), fleet CAs, director key."""
    security = _security()
    console.print(f"keys ready under {security.settings.security_dir}")
    console.print_json(data=security.status())


@keys_app.command("status")
def keys_status(json_out: JsonOpt = False) -> None:
    """Root version, keys and thresholds per role, revoked certificates."""
    status = _security().status()
    if json_out:
        emit_json(status)
        return
    console.print(f"TUF root version {status['tuf_root_version']}; "
                  f"{status['revoked_serials']} revoked device certificate(s)", highlight=False)
    console.print(_table("TUF roles", ["role", "keys", "threshold"],
                         ([name, str(role["keys"]), str(role["threshold"])]
                          for name, role in sorted(status["tuf_roles"].items()))))


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp")],
    keys: Annotated[int | None, typer.Option(min=1, help="number of new keys (default: as many as now)")] = None,
    threshold: Annotated[int | None, typer.Option(min=1, help="new threshold (default: unchanged)")] = None,
) -> None:
    """Replace a role's keys; the new root is signed by the old and the new root keys."""
    security = _security()
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
    security = _security()
    security.director.rotate()
    console.print("director key rotated; public key:")
    console.print(security.director.public_pem().decode())


@keys_app.command("revoke-device")
def keys_revoke_device(device_id: str) -> None:
    """Revoke every certificate of a device and rewrite the CRL; then restart or SIGHUP the broker."""
    from sqlmodel import Session

    security = _security()
    with Session(security.engine) as session:
        serials = security.revoke_device(session, device_id)
    console.print(f"revoked {len(serials)} certificate(s) of {device_id}; CRL: {security.ca.crl_file}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="who or what uses the token")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
) -> None:
    """Create an API token. It is printed once and stored only as a hash."""
    from sqlmodel import Session


    if role not in ("viewer", "operator", "admin"):
        console.print("[red]error:[/] --role must be viewer, operator or admin")
        raise typer.Exit(2)
    security = _security()
    with Session(security.engine) as session:
        secret, _ = create_api_token(session, name=name, role=Role(role))
    print(secret)


@token_app.command("enroll")
def token_enroll(
    device_id: str,
    profile: Annotated[str, typer.Option(help="the device's hardware profile")] = "x86-64-avx2",
) -> None:
    """Create a one-time enrollment token for `edgefleet-agent enroll --token`."""
    from sqlmodel import Session


    security = _security()
    with Session(security.engine) as session:
        secret, expires_at = create_enrollment_token(session, device_id, hardware_profile=profile,
                                                     ttl_s=security.settings.enrollment_token_ttl_s)
    console.print(f"valid until {expires_at.isoformat()}; on the device run:", style="dim")
    print(f"edgefleet-agent enroll --server <control-plane-url> --token {secret}")


@app.command("broker-config")
def broker_config(
    out: Annotated[Path, typer.Option(help="directory for mosquitto.conf, acl and the server key")] = Path("mosquitto"),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    bind: str = "0.0.0.0",
    server_name: Annotated[list[str] | None, typer.Option(help="broker DNS names / IPs for its certificate")] = None,
    user: Annotated[str | None, typer.Option(help="account mosquitto drops to when started as root")] = None,
) -> None:
    """Write a Mosquitto config: mutual TLS, identity from the certificate, CRL and per-device ACL."""

    security = _security()
    files = write_broker_config(out, security.ca, prefix=security.settings.topic_prefix, port=port, bind=bind,
                                server_names=server_name or ["localhost", "127.0.0.1"], user=user)
    ca_file, cert_file, key_file = write_control_plane_identity(security.settings.security_dir / "control-plane",
                                                                security.ca)
    console.print(f"wrote {files.config} and {files.acl}; start it with: mosquitto -c {files.config}")
    console.print("point the control plane at it with:")
    print(f"export EDGEFLEET_MQTT_URL=mqtts://{(server_name or ['localhost'])[0]}:{port}")
    print(f"export EDGEFLEET_MQTT_CA_FILE={ca_file}")
    print(f"export EDGEFLEET_MQTT_CERT_FILE={cert_file}")
    print(f"export EDGEFLEET_MQTT_KEY_FILE={key_file}")
