"""``edgefleet broker-config``: write a Mosquitto configuration for the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloud.cli.client import (
    console,
)
from cloud.cli.keys import fleet_security
from cloud.security.broker import write_broker_config, write_control_plane_identity
from cloud.security.crl_watch import CrlWatcher, reload_by_command, reload_by_pid_file


def broker_config(
    out: Annotated[Path, typer.Option(help="directory for mosquitto.conf, acl and the server key")] = Path("mosquitto"),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    bind: str = "0.0.0.0",
    server_name: Annotated[list[str] | None, typer.Option(help="broker DNS names / IPs for its certificate")] = None,
    user: Annotated[str | None, typer.Option(help="account mosquitto drops to when started as root")] = None,
) -> None:
    """Write a Mosquitto config: mutual TLS, identity from the certificate, CRL and per-device ACL."""

    security = fleet_security()
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


def broker_watch_crl(
    crl_file: Annotated[Path, typer.Option(help="the broker's crlfile (written here when --crl-url is given)")],
    ca_file: Annotated[Path, typer.Option(help="the device CA certificate (the broker's cafile): a CRL it "
                                               "did not sign is never installed")],
    crl_url: Annotated[str | None, typer.Option(help="fetch the CRL from the control plane instead, e.g. "
                                                     "https://fleet.example.com/tuf/crl.pem")] = None,
    pid_file: Annotated[Path | None, typer.Option(help="file holding the broker's pid: it is sent SIGHUP")] = None,
    reload_command: Annotated[str | None, typer.Option(help="command that reloads the broker, e.g. "
                                                            "'systemctl reload mosquitto'")] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between polls")] = 2.0,
) -> None:
    """Reload the broker whenever the CRL changes, so a revoked device is refused without a restart."""
    if (pid_file is None) == (reload_command is None):
        console.print("[red]error:[/] give exactly one of --pid-file and --reload-command")
        raise typer.Exit(2)
    reload = reload_by_pid_file(pid_file) if pid_file is not None else reload_by_command(str(reload_command))
    watcher = CrlWatcher(source=crl_url or str(crl_file), target=crl_file, ca_cert=ca_file, reload=reload)
    console.print(f"watching {crl_url or crl_file} every {interval:g}s", style="dim")
    watcher.run(interval)
