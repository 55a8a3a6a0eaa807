"""``edgefleet rollout ...``: staged rollouts over the control plane's HTTP API, and the standalone engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID

from cloud.cli.client import (
    DEFAULT_SERVER,
    ApiError,
    Exit,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    cell,
    client_from,
    console,
    emit_json,
    fail,
    new_table,
    print_listing,
)
from cloud.cli.watch import follow
from cloud.core.config import Settings
from cloud.rollout.format import gate_line
from cloud.rollout.run import run_engine
from cloud.rollout.spec import SpecError, load_spec

rollout_app = typer.Typer(help="Staged rollouts gated on health and model quality.", no_args_is_help=True)


# --- rollout watch -----------------------------------------------------------
_FINAL_ROLLOUT_STATES = {"completed": Exit.OK, "aborted": Exit.FAILED, "cancelled": Exit.FAILED}


_SETTLED_DEVICE_STATES = {"succeeded", "failed", "expired", "cancelled", "halted", "rolled_back", "rollback_failed"}


def _waiting_for(rollout_id: str, detail: dict[str, Any]) -> str | None:
    """What a rollout that will not move by itself waits for, and the command that continues it."""
    if detail["state"] == "awaiting_approval":
        return f"waiting for approval: run `edgefleet rollout approve {rollout_id}`"
    if detail["state"] == "paused":
        return f"paused: run `edgefleet rollout resume {rollout_id}`"
    return None


@rollout_app.command("watch")
def rollout_watch(
    rollout_id: Annotated[str, typer.Argument(help="rollout id")],
    interval_s: Annotated[float, typer.Option("--interval", min=0.2, help="seconds between polls")] = 2.0,
    timeout_s: Annotated[float, typer.Option("--timeout", min=1, help="give up after this many seconds")] = 3600.0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow a rollout with a progress bar until it ends. Exit 0 completed, 1 aborted/cancelled, 6 timeout.

    A rollout waiting for approval (or paused) is followed on, with the command that continues it.
    """
    shown_decisions: set[object] = set()
    last_wait: str | None = None

    def show(detail: dict[str, Any], progress: Progress, task: TaskID) -> None:
        nonlocal last_wait
        counts: dict[str, int] = {}
        for states in detail.get("devices_by_stratum", {}).values():
            for state, n in states.items():
                counts[state] = counts.get(state, 0) + n
        settled = sum(n for state, n in counts.items() if state in _SETTLED_DEVICE_STATES)
        # Every decision not shown yet, in order: several can land between two polls
        # (an operator's abort and the engine's rollback that follows it).
        for decision in detail.get("decisions") or []:
            if decision.get("id") in shown_decisions:
                continue
            shown_decisions.add(decision.get("id"))
            if not json_out:
                progress.console.print(f"stage {decision['stage'] + 1}: [bold]{decision['action']}[/] by "
                                       f"{decision['actor']}: {decision['reason']}", highlight=False)
        waiting_for = _waiting_for(rollout_id, detail)
        if waiting_for != last_wait:
            last_wait = waiting_for
            if waiting_for:
                # Said once per wait: watch keeps following, so approving in another shell continues it.
                progress.console.print(f"stage {detail['stage'] + 1}: {waiting_for}", highlight=False)
        progress.update(task, total=max(1, int(detail.get("device_count") or 0)), completed=settled,
                        description=f"{rollout_id} {detail['state']} stage {detail['stage'] + 1}/{detail['stages']}",
                        detail=" ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    # Following only the state: the cameras' figures are `rollout show`'s.
    detail = follow(lambda: call(server, token, "GET", f"/api/v1/rollouts/{rollout_id}", cameras=False), show,
                    ended=lambda detail: detail["state"] in _FINAL_ROLLOUT_STATES, title=rollout_id,
                    interval_s=interval_s, timeout_s=timeout_s, quiet=json_out, counted=True)
    if json_out:
        emit_json(detail)
    if detail["state"] not in _FINAL_ROLLOUT_STATES:
        waiting_for = _waiting_for(rollout_id, detail)
        fail(f"rollout {rollout_id} still {detail['state']} after {timeout_s:.0f}s"
             + (f"; {waiting_for}" if waiting_for else ""), Exit.TIMEOUT)
    code = _FINAL_ROLLOUT_STATES[detail["state"]]
    if not json_out:
        console.print(f"rollout {rollout_id}: {detail['state']}", highlight=False)
    if code != Exit.OK:
        raise typer.Exit(int(code))


SpecArg = Annotated[Path, typer.Argument(help="rollout spec, YAML (see docs/rollouts.md)")]


IdArg = Annotated[str, typer.Argument(help="rollout id")]


def _request(server: str, token: str | None, method: str, path: str, body: Any = None) -> Any:
    client = client_from(server, token)
    try:
        return client.request(method, path, json=body) if body is not None else client.request(method, path)
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()


def _spec_body(path: Path) -> dict[str, Any]:
    try:
        return load_spec(path).model_dump(mode="json")
    except SpecError as exc:
        fail(str(exc), Exit.BAD_INPUT)


@rollout_app.command("plan")
def plan(spec: SpecArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Dry run: list the devices each stage would take, per stratum. Nothing is started."""
    result = _request(server, token, "POST", "/api/v1/rollouts/plan", _spec_body(spec))
    if json_out:
        emit_json(result)
        return
    strata = ", ".join(f"{k} ({n})" for k, n in result["strata"].items())
    console.print(f"strata: {strata}")
    table = new_table("devices per stage")
    for column in ("stage", "cumulative per stratum", "new devices", "offline now", "devices"):
        table.add_column(column)
    for stage in result["stages"]:
        sizes = ", ".join(f"{k}: {n}" for k, n in stage["cumulative_per_stratum"].items())
        # The API's stage index counts from 0; people count stages from 1 (as `show` and the dashboard do).
        table.add_row(str(stage["stage"] + 1), sizes, str(len(stage["devices"])), str(len(stage["offline"])),
                      " ".join(stage["devices"]))
    console.print(table)
    for device_id, reason in sorted(result["skipped"].items()):
        console.print(f"skipped {device_id}: {reason}", highlight=False)


@rollout_app.command("create")
def create(spec: SpecArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Start a rollout from a spec file; prints its id."""
    detail = _request(server, token, "POST", "/api/v1/rollouts", _spec_body(spec))
    if json_out:
        emit_json(detail)
        return
    console.print(f"rollout {detail['id']} started: {detail['device_count']} devices, {detail['stages']} stages")


@rollout_app.command("list")
def list_rollouts(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Every rollout, newest first."""
    rollouts = _request(server, token, "GET", "/api/v1/rollouts")
    if json_out:
        emit_json(rollouts)
        return
    print_listing(f"rollouts ({len(rollouts)})", ["id", "name", "state", "stage", "created"],
                  [[r["id"], r["name"], r["state"], f"{r['stage'] + 1}/{r['stages']} {r['phase']}",
                    cell(r["created_at"])] for r in rollouts],
                  empty_hint="Write a spec (docs/rollouts.md), preview it with `edgefleet rollout plan SPEC`, "
                             "then start it with `edgefleet rollout create SPEC`.")


def _gate_lines(numbers: dict[str, Any]) -> list[str]:
    lines = []
    for stratum, verdict in sorted(numbers.get("strata", {}).items()):
        if not isinstance(verdict, dict):
            continue
        source = verdict.get("control_source")
        head = f"  {stratum}" + (" [halted]" if verdict.get("halted") else "") + (
            f" (control: {source})" if source else "")
        lines.append(head)
        for gate in verdict.get("gates", []):
            lines.append(f"    {gate_line(gate)}")
    return lines


def _camera_table(stages: list[dict[str, Any]]) -> Any:
    """Each stage's devices with their cameras beneath them (None when no device reported a camera)."""
    table = new_table("devices and their cameras (since the phase started, at most the last hour)")
    for name in ("stage", "device / camera", "state / model", "frames", "fps", "p95 ms", "capture p95 ms", "stale dropped",
                 "error rate", "confidence / boxes", "drift"):
        table.add_column(name)
    rows = 0
    for stage in stages:
        for device in stage["devices"]:
            table.add_row(str(stage["stage"] + 1), device["device_id"], device["state"], *[""] * 8)
            for camera in device["cameras"]:
                quality = (cell(camera.get("mean_confidence"), ".2f") if "boxes" not in camera
                           else f"{camera['boxes']} boxes, score {cell(camera.get('mean_box_score'), '.2f')}")
                table.add_row("", f"  {camera['camera']}", cell(camera.get("model_version")), str(camera["frames"]),
                              cell(camera.get("fps"), ".1f"), cell(camera.get("median_p95_latency_ms"), ".1f"),
                              cell(camera.get("capture_to_result_p95_ms"), ".1f"),
                              cell(camera.get("stale_frames_dropped")), cell(camera.get("error_rate"), ".3f"),
                              quality, cell(camera.get("drift_score"), ".1f"))
                rows += 1
    return table if rows else None


@rollout_app.command("show")
def show(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
         json_out: JsonOpt = False) -> None:
    """State, devices per stratum, and every decision with the numbers that drove it."""
    detail = _request(server, token, "GET", f"/api/v1/rollouts/{rollout_id}")
    if json_out:
        emit_json(detail)
        return
    console.print(f"[bold]{detail['id']}[/] {detail['name']}: {detail['state']}, stage "
                  f"{detail['stage'] + 1}/{detail['stages']} ({detail['phase']})", highlight=False)
    if detail["halted_strata"]:
        console.print(f"halted strata: {', '.join(detail['halted_strata'])}", highlight=False)
    table = new_table("devices")
    table.add_column("stratum")
    table.add_column("states")
    for stratum, states in detail["devices_by_stratum"].items():
        table.add_row(stratum, ", ".join(f"{s}: {n}" for s, n in sorted(states.items())))
    console.print(table)
    cameras = _camera_table(detail.get("stage_devices", []))
    if cameras is not None:
        console.print(cameras)
    console.print("[bold]decisions[/]")
    for decision in detail["decisions"]:
        console.print(f"{cell(decision['created_at'])} stage {decision['stage'] + 1} [bold]{decision['action']}[/] by "
                      f"{decision['actor']}: {decision['reason']}", highlight=False, soft_wrap=True)
        for line in _gate_lines(decision["numbers"]):
            console.print(line, highlight=False, soft_wrap=True)
    evaluation = detail.get("evaluation") or {}
    if evaluation and detail["state"] not in ("completed", "aborted", "cancelled"):
        console.print(f"[bold]latest evaluation[/] ({evaluation.get('at')}): {evaluation.get('reason')}",
                      highlight=False, soft_wrap=True)
        for line in _gate_lines(evaluation):
            console.print(line, highlight=False, soft_wrap=True)


def _act(action: str, rollout_id: str, server: str, token: str | None, json_out: bool) -> None:
    detail = _request(server, token, "POST", f"/api/v1/rollouts/{rollout_id}/{action}")
    if json_out:
        emit_json(detail)
        return
    console.print(f"rollout {rollout_id}: {detail['state']}")


@rollout_app.command("approve")
def approve(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
            json_out: JsonOpt = False) -> None:
    """Let a rollout waiting for approval move past its current stage."""
    _act("approve", rollout_id, server, token, json_out)


@rollout_app.command("pause")
def pause(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
          json_out: JsonOpt = False) -> None:
    """Stop dispatching and promoting; devices already installing are still tracked."""
    _act("pause", rollout_id, server, token, json_out)


@rollout_app.command("resume")
def resume(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
           json_out: JsonOpt = False) -> None:
    """Continue a paused rollout."""
    _act("resume", rollout_id, server, token, json_out)


@rollout_app.command("abort")
def abort(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
          json_out: JsonOpt = False) -> None:
    """Stop and roll every touched device back to its previous version."""
    _act("abort", rollout_id, server, token, json_out)


@rollout_app.command("cancel")
def cancel(rollout_id: IdArg, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
           json_out: JsonOpt = False) -> None:
    """Force-cancel: stop at once, without rolling anything back."""
    _act("cancel", rollout_id, server, token, json_out)


@rollout_app.command("label")
def label(
    device_id: Annotated[str, typer.Argument(help="device id")],
    tag: Annotated[list[str] | None, typer.Option(help="a tag (repeat for several)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="a group (repeat for several)")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Replace a device's tags and groups (what a rollout target selects on)."""
    labels = _request(server, token, "PUT", f"/api/v1/devices/{device_id}/labels",
                      {"tags": tag or [], "groups": group or []})
    console.print(f"{device_id}: tags {labels['tags']}, groups {labels['groups']}", highlight=False)


@rollout_app.command("engine")
def engine(
    base_url: Annotated[str, typer.Option(help="where devices download packages (the control plane's URL)")],
    tick_s: Annotated[float, typer.Option(min=0.05, help="seconds between passes")] = 1.0,
    name: Annotated[str | None, typer.Option(help="engine name in the decision log")] = None,
) -> None:
    """Run a rollout engine process (settings from EDGEFLEET_* like `edgefleet serve`)."""

    settings = Settings()
    if not settings.mqtt_url:
        fail("a separate engine needs EDGEFLEET_MQTT_URL (the embedded broker lives in `edgefleet serve`)",
             Exit.BAD_INPUT)
    run_engine(settings, base_url=base_url, tick_s=tick_s, name=name)
