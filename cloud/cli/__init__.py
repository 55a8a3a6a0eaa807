"""``edgefleet``: the operator and control-plane command line.

One module per command group; each defines every command of its group. Commands that
talk to a running control plane go through :mod:`cloud.cli.client` (HTTP, exit codes,
tables); the pipeline commands work on the local data directory (:mod:`cloud.cli.local`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cloud.cli import (
    broker,
    bundle,
    cameras,
    data,
    deployments,
    devices,
    drift,
    fleet,
    governance,
    jobs,
    keys,
    local,
    model,
    packages,
    plane,
    rollout,
    samples,
    status,
    tokens,
)

__all__ = ["app", "main"]

app = typer.Typer(help="EdgeFleet control plane and operator CLI.", no_args_is_help=True)


@app.callback()
def _global_options(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="the control plane's data directory, for commands that work on its files "
                           "[default: EDGEFLEET_DATA_DIR, else an existing ./.edgefleet]")] = None,
) -> None:
    # Set on every invocation, so one run's choice never carries over to the next (tests run many in one process).
    local.data_dir_option = data_dir
# Registration order is the order `edgefleet --help` lists them in.
app.command("train")(model.train)
app.command("build")(model.build)
app.command("serve")(plane.serve)
app.command("demo")(plane.demo)
app.add_typer(devices.device_app, name="device")
app.add_typer(cameras.camera_app, name="camera")
app.add_typer(deployments.deployment_app, name="deployment")
app.add_typer(bundle.bundle_app, name="bundle")
app.add_typer(packages.package_app, name="package")
app.add_typer(fleet.fleet_app, name="fleet")
app.add_typer(status.status_app, name="status")
app.add_typer(data.data_app, name="data")
app.add_typer(model.model_app, name="model")
app.add_typer(drift.drift_app, name="drift")
app.add_typer(samples.samples_app, name="samples")
app.add_typer(governance.governance_app, name="governance")
app.add_typer(jobs.jobs_app, name="jobs")
app.command("worker")(jobs.worker)
app.add_typer(rollout.rollout_app, name="rollout")
app.command("broker-config")(broker.broker_config)
app.command("broker-watch-crl")(broker.broker_watch_crl)
app.add_typer(keys.keys_app, name="keys")
app.add_typer(tokens.token_app, name="token")


def main() -> None:
    sys.exit(app())
