"""``edgefleet``: the operator and control-plane command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cloud.api.main import create_app
from cloud.core.config import Settings
from cloud.server import ControlPlane

app = typer.Typer(help="EdgeFleet control plane and operator CLI.", no_args_is_help=True)
console = Console()

# Operator commands over HTTP (cloud/cli_ops.py): every listing takes --json.
from cloud import cli_ops  # noqa: E402  (kept next to the add_typer lines it feeds)

app.add_typer(cli_ops.device_app, name="device")
app.add_typer(cli_ops.deployment_app, name="deployment")
app.add_typer(cli_ops.package_app, name="package")
app.add_typer(cli_ops.fleet_app, name="fleet")
app.add_typer(cli_ops.status_app, name="status")

# Pipeline commands (cloud/cli_pipeline.py): data, train, build, model.
from cloud import cli_pipeline  # noqa: E402

cli_pipeline.register(app)
from cloud import cli_monitor  # noqa: E402  (drift, samples, governance, model lineage)

cli_monitor.register(app)

# Staged rollouts (cloud/cli_rollout.py).
from cloud.cli_rollout import rollout_app  # noqa: E402

app.add_typer(rollout_app, name="rollout")
cli_ops.register_rollout_watch(rollout_app)  # `rollout watch ID`: a progress bar until the rollout ends

# Keys, tokens and broker configuration (cloud/cli_security.py): keys ..., token ..., broker-config.
from cloud.cli_security import app as security_app  # noqa: E402

app.add_typer(security_app)
# HTTP actions that fill gaps in the groups above (token list/revoke, samples label, governance reject).
cli_ops.register_extras(app)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(log_level: str = "INFO") -> None:
    """Run the control plane (API, ingest, and an embedded broker when EDGEFLEET_MQTT_URL is unset)."""
    import uvicorn


    _logging(log_level)
    settings = Settings()
    plane = ControlPlane(settings)
    plane.start()
    try:
        uvicorn.run(create_app(plane), host=settings.api_host, port=settings.api_port, log_level=log_level.lower())
    finally:
        plane.stop()


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, max=50, help="number of simulated camera devices")] = 5,
    seconds: Annotated[float, typer.Option(min=1, help="seconds of inference after the rollout")] = 20.0,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its database, models and devices")] = Path(
        ".edgefleet-demo"
    ),
    log_level: str = "WARNING",
) -> None:
    """Train, package, deploy to N agent processes over MQTT, run inference, print the fleet."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.demo import run_demo

    _logging(log_level)
    try:
        summary = run_demo(devices=devices, seconds=seconds, workdir=workdir, console=console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopped every process the demo started[/]")
        raise typer.Exit(130) from None
    print(summary)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
