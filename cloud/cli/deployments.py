"""``edgefleet deployment ...``: direct deployments of a package to named devices (over HTTP)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

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
    table,
)
from cloud.cli.watch import follow

# --- deployments -------------------------------------------------------------
deployment_app = typer.Typer(help="Direct deployments of a package to named devices.", no_args_is_help=True)


_FINAL_DEPLOYMENT_STATES = {"succeeded", "partial", "failed"}


_FINAL_JOB_STATES = {"succeeded", "failed", "rejected", "rolled_back", "expired", "cancelled"}


def _jobs_table(deployment: dict[str, Any]) -> Table:
    return table(f"deployment {deployment['id']}: {deployment['state']}",
                  ["device", "state", "error code", "error", "updated"],
                  ([j["device_id"], j["state"], cell(j["error_code"]), cell(j["error"]), cell(j["updated_at"])]
                   for j in deployment.get("jobs", [])))


@deployment_app.command("list")
def deployment_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List deployments, newest first."""
    deployments: list[dict[str, Any]] = call(server, token, "GET", "/api/v1/deployments")
    if json_out:
        emit_json(deployments)
        return
    print_listing(f"deployments ({len(deployments)})", ["deployment", "package", "state", "created"],
                  [[d["id"], d["package_id"], d["state"], cell(d["created_at"])] for d in deployments],
                  empty_hint="Deploy a package: `edgefleet deployment create --package PACKAGE_ID --device DEVICE_ID`, "
                             "or stage a canary with `edgefleet rollout create SPEC`.")


@deployment_app.command("show")
def deployment_show(
    deployment_id: Annotated[str, typer.Argument(help="deployment id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One deployment with the state of every device job."""
    deployment = call(server, token, "GET", f"/api/v1/deployments/{deployment_id}")
    if json_out:
        emit_json(deployment)
        return
    console.print(_jobs_table(deployment))


@deployment_app.command("create")
def deployment_create(
    package_id: Annotated[str, typer.Option("--package", help="package id (see `edgefleet package list`)")],
    device: Annotated[list[str] | None, typer.Option("--device", help="a target device id; repeat for more")] = None,
    all_online: Annotated[bool, typer.Option("--all-online", help="target every device online now")] = False,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="a deliberate return to an older release; without it devices refuse an older package "
                           "(package_downgrade)")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow the jobs with a progress bar")] = True,
    timeout_s: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for final states")] = 300.0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a package to devices. Exit 0 when every job succeeded, 1 when any failed, 6 on timeout."""
    device_ids = list(device or [])
    if all_online:
        devices = call(server, token, "GET", "/api/v1/devices", limit=1000)
        device_ids += [d["id"] for d in devices if d["online"] and d["id"] not in device_ids]
    if not device_ids:
        fail("no target devices: pass --device ID (repeatable) or --all-online", Exit.BAD_INPUT)
    deployment = call(server, token, "POST", "/api/v1/deployments",
                      {"package_id": package_id, "device_ids": device_ids, "rollback": rollback})
    if wait:
        deployment = _follow_deployment(server, token, deployment, timeout_s, quiet=json_out)
    if json_out:
        emit_json(deployment)
    else:
        console.print(_jobs_table(deployment))
    if deployment["state"] not in _FINAL_DEPLOYMENT_STATES:
        if wait:
            fail(f"deployment {deployment['id']} still {deployment['state']} after {timeout_s:.0f}s", Exit.TIMEOUT)
        return
    if deployment["state"] != "succeeded":
        raise typer.Exit(int(Exit.FAILED))


def _follow_deployment(server: str, token: str | None, deployment: dict[str, Any], timeout_s: float,
                       *, quiet: bool) -> dict[str, Any]:
    # The first state is the one the caller has (the create response); later ones are fetched.
    unseen = [deployment]

    def fetch() -> dict[str, Any]:
        return unseen.pop() if unseen else call(server, token, "GET", f"/api/v1/deployments/{deployment['id']}")

    def show(current: dict[str, Any], progress: Progress, task: TaskID) -> None:
        done = sum(1 for j in current.get("jobs", []) if j["state"] in _FINAL_JOB_STATES)
        states: dict[str, int] = {}
        for job in current.get("jobs", []):
            states[job["state"]] = states.get(job["state"], 0) + 1
        progress.update(task, completed=done, detail=" ".join(f"{k}={v}" for k, v in sorted(states.items())))

    return follow(fetch, show, ended=lambda current: current["state"] in _FINAL_DEPLOYMENT_STATES,
                  title=f"deploying {deployment['package_id']}", interval_s=0.5, timeout_s=timeout_s, quiet=quiet,
                  total=max(1, len(deployment.get("jobs", []))), counted=True)
