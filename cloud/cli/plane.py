"""``edgefleet serve`` and ``edgefleet demo``: run the control plane here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cloud.cli import local
from cloud.cli.client import console
from cloud.core.config import Settings


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(
    host: Annotated[str | None, typer.Option(help="address the API listens on [default: EDGEFLEET_API_HOST, "
                                                  "else 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="API port [default: EDGEFLEET_API_PORT, "
                                                                     "else 8000]")] = None,
    log_level: str = "INFO",
) -> None:
    """Run the control plane (API, ingest, and an embedded broker when EDGEFLEET_MQTT_URL is unset)."""
    # Imported here: the API and the server take a while to import, and every other command would pay for them.
    import uvicorn

    from cloud.api.main import create_app
    from cloud.server import ControlPlane

    _logging(log_level)
    # `edgefleet --data-dir DIR serve` wins over EDGEFLEET_DATA_DIR, like the other options over their variables.
    settings = Settings() if local.data_dir_option is None else Settings(data_dir=local.data_dir_option)
    # The options win over EDGEFLEET_API_HOST / EDGEFLEET_API_PORT.
    if host is not None:
        settings.api_host = host
    if port is not None:
        settings.api_port = port
    plane = ControlPlane(settings)
    plane.start()
    try:
        uvicorn.run(create_app(plane), host=settings.api_host, port=settings.api_port, log_level=log_level.lower())
    finally:
        plane.stop()


def demo(
    devices: Annotated[int, typer.Option(min=1, max=50, help="number of simulated camera devices")] = 5,
    task: Annotated[str, typer.Option(help="detection (objects per class on each camera) or classification "
                                           "(one label per frame)")] = "detection",
    seconds: Annotated[float, typer.Option(min=1, help="seconds of inference after the rollout")] = 20.0,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its database, models and devices")] = Path(
        ".edgefleet-demo"
    ),
    log_level: str = "WARNING",
) -> None:
    """Train, package, deploy to N agent processes over MQTT, run inference, print the fleet."""
    if task not in ("detection", "classification"):
        console.print(f"[red]error:[/] --task must be detection or classification, not {task!r}")
        raise typer.Exit(2)
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.demo import run_demo

    _logging(log_level)
    try:
        outcome = run_demo(devices=devices, seconds=seconds, workdir=workdir, console=console, task=task)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopped every process the demo started[/]")
        raise typer.Exit(130) from None
    print(outcome.line)
