"""Operator commands that talk to a running control plane over HTTP.

``edgefleet device ...``, ``edgefleet deployment ...``, ``edgefleet package ...``,
``edgefleet fleet`` and ``edgefleet status``. Every listing takes ``--json`` and then
prints exactly one JSON document on stdout (nothing else), so scripts can pipe it.

The server and token come from ``--server`` / ``EDGEFLEET_SERVER`` and ``--token`` /
``EDGEFLEET_TOKEN``. Exit codes (see :class:`Exit`) are the same for every command,
including other engineers' modules that reuse :class:`ApiClient`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = [
    "ApiClient",
    "ApiError",
    "Exit",
    "JsonOpt",
    "ServerOpt",
    "TokenOpt",
    "client_from",
    "deployment_app",
    "device_app",
    "emit_json",
    "fail",
    "fleet_app",
    "package_app",
    "status_app",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"

console = Console()
# Errors go to stderr so ``--json`` output on stdout stays parseable even on failure.
err_console = Console(stderr=True)


class Exit(IntEnum):
    """Exit codes that mean the same thing for every ``edgefleet`` command."""

    OK = 0
    FAILED = 1  # the command ran, and what it did or watched failed (e.g. a deployment failed)
    BAD_INPUT = 2  # usage error, or the server refused the input (400, 409, 422)
    NOT_FOUND = 3  # the named resource does not exist (404)
    AUTH = 4  # no token, an unknown token, or a role too low (401, 403)
    UNAVAILABLE = 5  # the server cannot be reached or failed (5xx)
    TIMEOUT = 6  # waited for a final state longer than --timeout


class ApiError(Exception):
    """An HTTP error from the control plane, or no answer at all (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def exit_code(self) -> Exit:
        if self.status == 0 or self.status >= 500:
            return Exit.UNAVAILABLE
        if self.status in (401, 403):
            return Exit.AUTH
        if self.status == 404:
            return Exit.NOT_FOUND
        return Exit.BAD_INPUT


class ApiClient:
    """A thin JSON client for ``/api/v1`` that turns every failure into :class:`ApiError`."""

    def __init__(self, server: str, token: str | None, *, timeout_s: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout_s, transport=transport)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the control plane at {self.server}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def close(self) -> None:
        self._http.close()


ServerOpt = Annotated[str, typer.Option("--server", envvar="EDGEFLEET_SERVER", help="control plane base URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="EDGEFLEET_TOKEN",
                                              help="API token (viewer for listings, operator to act)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of a table")]


def client_from(server: str, token: str | None) -> ApiClient:
    return ApiClient(server, token)


def fail(message: str, code: Exit) -> NoReturn:
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(int(code))


def emit_json(document: Any) -> None:
    # Plain print, not rich: rich would wrap long lines and could add markup.
    print(json.dumps(document, indent=2, sort_keys=True, default=str))


def _cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if fmt and isinstance(value, int | float):
        return format(value, fmt)
    return str(value)


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _call(server: str, token: str | None, method: str, path: str, body: Any = None, **params: Any) -> Any:
    client = client_from(server, token)
    try:
        if method == "GET":
            return client.get(path, **params)
        return client.post(path, body)
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()


# --- devices -----------------------------------------------------------------
device_app = typer.Typer(help="Devices: list, inspect and register.", no_args_is_help=True)


@device_app.command("list")
def device_list(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    online: Annotated[bool | None, typer.Option("--online/--offline", help="only online or only offline devices")] = None,
    profile: Annotated[str | None, typer.Option(help="only this hardware profile")] = None,
) -> None:
    """List registered devices with their running version and whether they are online."""
    devices: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/devices", limit=1000)
    devices = [d for d in devices if (online is None or d["online"] == online)
               and (profile is None or d["hardware_profile"] == profile)]
    if json_out:
        emit_json(devices)
        return
    console.print(_table(f"devices ({len(devices)})", ["device", "online", "profile", "model version", "runtime",
                                                       "agent", "last seen"],
                         ([d["id"], _cell(d["online"]), d["hardware_profile"], _cell(d["running_model_version"]),
                           _cell(d["runtime"]), _cell(d["agent_version"]), _cell(d["last_seen_at"])]
                          for d in devices)))


@device_app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    windows: Annotated[int, typer.Option(min=1, max=1000, help="how many telemetry windows to show")] = 10,
) -> None:
    """One device: identity, running version and its latest telemetry windows."""
    device = _call(server, token, "GET", f"/api/v1/devices/{device_id}")
    telemetry = _call(server, token, "GET", f"/api/v1/devices/{device_id}/telemetry", limit=windows)
    if json_out:
        emit_json({"device": device, "telemetry": telemetry})
        return
    summary = Table.grid(padding=(0, 2))
    for key in ("id", "online", "hardware_profile", "running_model_version", "running_package_id", "runtime",
                "agent_version", "last_seen_at", "created_at"):
        summary.add_row(f"[bold]{key}[/]", _cell(device.get(key)))
    console.print(summary)
    console.print(_table("telemetry (newest first)", ["sent", "model", "frames", "fps", "p95 ms", "confidence",
                                                      "errors", "cpu %", "MiB"],
                         ([_cell(w["sent_at"]), _cell(w["model_version"]), _cell(w["frames"]), _cell(w["fps"], ".1f"),
                           _cell(w["p95_latency_ms"], ".2f"), _cell(w["mean_confidence"], ".3f"),
                           _cell(w["inference_errors"]), _cell(w["cpu_percent"], ".0f"), _cell(w["memory_mb"], ".0f")]
                          for w in telemetry)))


@device_app.command("register")
def device_register(
    device_id: Annotated[str, typer.Argument(help="device id: letters, digits, '_', '.', '-'")],
    hardware_profile: Annotated[str, typer.Option("--profile", help="firmware profile name")] = "x86-64-avx2",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a device so its reports are accepted (needs an operator token)."""
    device = _call(server, token, "POST", "/api/v1/devices", {"id": device_id, "hardware_profile": hardware_profile})
    if json_out:
        emit_json(device)
    else:
        console.print(f"registered {device['id']} ({device['hardware_profile']})")


# --- packages ----------------------------------------------------------------
package_app = typer.Typer(help="Built packages (what a deployment installs).", no_args_is_help=True)


@package_app.command("list")
def package_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List packages, newest first."""
    packages: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/packages")
    if json_out:
        emit_json(packages)
        return
    console.print(_table(f"packages ({len(packages)})", ["package", "model version", "profiles", "size", "created"],
                         ([p["id"], p["model_version"], ", ".join(p["hardware_profiles"]),
                           f"{p['size_bytes'] / 1024:.0f} KiB", _cell(p["created_at"])] for p in packages)))


@package_app.command("show")
def package_show(
    package_id: Annotated[str, typer.Argument(help="package id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One package."""
    package = _call(server, token, "GET", f"/api/v1/packages/{package_id}")
    if json_out:
        emit_json(package)
        return
    grid = Table.grid(padding=(0, 2))
    for key, value in package.items():
        grid.add_row(f"[bold]{key}[/]", _cell(", ".join(value) if isinstance(value, list) else value))
    console.print(grid)


# --- deployments -------------------------------------------------------------
deployment_app = typer.Typer(help="Direct deployments of a package to named devices.", no_args_is_help=True)
_FINAL_DEPLOYMENT_STATES = {"succeeded", "partial", "failed"}
_FINAL_JOB_STATES = {"succeeded", "failed", "rejected", "rolled_back", "expired", "cancelled"}


def _jobs_table(deployment: dict[str, Any]) -> Table:
    return _table(f"deployment {deployment['id']}: {deployment['state']}",
                  ["device", "state", "error code", "error", "updated"],
                  ([j["device_id"], j["state"], _cell(j["error_code"]), _cell(j["error"]), _cell(j["updated_at"])]
                   for j in deployment.get("jobs", [])))


@deployment_app.command("list")
def deployment_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List deployments, newest first."""
    deployments: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/deployments")
    if json_out:
        emit_json(deployments)
        return
    console.print(_table(f"deployments ({len(deployments)})", ["deployment", "package", "state", "created"],
                         ([d["id"], d["package_id"], d["state"], _cell(d["created_at"])] for d in deployments)))


@deployment_app.command("show")
def deployment_show(
    deployment_id: Annotated[str, typer.Argument(help="deployment id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One deployment with the state of every device job."""
    deployment = _call(server, token, "GET", f"/api/v1/deployments/{deployment_id}")
    if json_out:
        emit_json(deployment)
        return
    console.print(_jobs_table(deployment))


@deployment_app.command("create")
def deployment_create(
    package_id: Annotated[str, typer.Option("--package", help="package id (see `edgefleet package list`)")],
    device: Annotated[list[str] | None, typer.Option("--device", help="a target device id; repeat for more")] = None,
    all_online: Annotated[bool, typer.Option("--all-online", help="target every device online now")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow the jobs with a progress bar")] = True,
    timeout_s: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for final states")] = 300.0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a package to devices. Exit 0 when every job succeeded, 1 when any failed, 6 on timeout."""
    device_ids = list(device or [])
    if all_online:
        devices = _call(server, token, "GET", "/api/v1/devices", limit=1000)
        device_ids += [d["id"] for d in devices if d["online"] and d["id"] not in device_ids]
    if not device_ids:
        fail("no target devices: pass --device ID (repeatable) or --all-online", Exit.BAD_INPUT)
    deployment = _call(server, token, "POST", "/api/v1/deployments", {"package_id": package_id, "device_ids": device_ids})
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
    total = max(1, len(deployment.get("jobs", [])))
    deadline = time.monotonic() + timeout_s
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[states]}"), TimeElapsedColumn(),
                        console=err_console, disable=quiet, transient=False)
    with progress:
        task = progress.add_task(f"deploying {deployment['package_id']}", total=total, states="")
        while True:
            done = sum(1 for j in deployment.get("jobs", []) if j["state"] in _FINAL_JOB_STATES)
            states: dict[str, int] = {}
            for job in deployment.get("jobs", []):
                states[job["state"]] = states.get(job["state"], 0) + 1
            progress.update(task, completed=done, states=" ".join(f"{k}={v}" for k, v in sorted(states.items())))
            if deployment["state"] in _FINAL_DEPLOYMENT_STATES or time.monotonic() > deadline:
                return deployment
            time.sleep(0.5)
            deployment = _call(server, token, "GET", f"/api/v1/deployments/{deployment['id']}")


# --- fleet and status --------------------------------------------------------
fleet_app = typer.Typer(help="The fleet at a glance.", invoke_without_command=True)


@fleet_app.callback()
def fleet(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One row per device: online, profile, running version and its latest telemetry window."""
    if ctx.invoked_subcommand is not None:
        return
    rows: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/fleet")
    if json_out:
        emit_json(rows)
        return
    online = sum(1 for r in rows if r["online"])
    console.print(_table(f"fleet: {online}/{len(rows)} online", ["device", "online", "profile", "model version",
                                                                "runtime", "fps", "p95 ms", "confidence", "last seen"],
                         ([str(r["device_id"]), _cell(r["online"]), _cell(r["hardware_profile"]),
                           _cell(r["model_version"]), _cell(r["runtime"]), _cell(r["fps"], ".1f"),
                           _cell(r["p95_latency_ms"], ".2f"), _cell(r["mean_confidence"], ".3f"),
                           _cell(r["last_seen_at"])] for r in rows)))


status_app = typer.Typer(help="Control plane health and ingest counters.", invoke_without_command=True)


@status_app.callback()
def status(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Health (broker connection) and report ingest counts, rejections by reason."""
    if ctx.invoked_subcommand is not None:
        return
    health = _call(server, token, "GET", "/api/v1/health")
    ingest = _call(server, token, "GET", "/api/v1/ingest/stats")
    if json_out:
        emit_json({"health": health, "ingest": ingest})
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row("[bold]server[/]", server)
    grid.add_row("[bold]version[/]", _cell(health.get("version")))
    grid.add_row("[bold]broker connected[/]", _cell(health.get("mqtt_connected")))
    accepted = ingest.get("accepted", {})
    grid.add_row("[bold]reports accepted[/]", ", ".join(f"{k}={v}" for k, v in sorted(accepted.items())) or "0")
    rejected = ingest.get("rejected", {})
    grid.add_row("[bold]reports rejected[/]", ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "0")
    grid.add_row("[bold]duplicates[/]", _cell(ingest.get("duplicates")))
    console.print(grid)
    if not health.get("mqtt_connected"):
        raise typer.Exit(int(Exit.FAILED))


# --- rollout watch -----------------------------------------------------------
_FINAL_ROLLOUT_STATES = {"completed": Exit.OK, "aborted": Exit.FAILED, "cancelled": Exit.FAILED}
_SETTLED_DEVICE_STATES = {"succeeded", "failed", "expired", "cancelled", "halted", "rolled_back", "rollback_failed"}


def rollout_watch(
    rollout_id: Annotated[str, typer.Argument(help="rollout id")],
    interval_s: Annotated[float, typer.Option("--interval", min=0.2, help="seconds between polls")] = 2.0,
    timeout_s: Annotated[float, typer.Option("--timeout", min=1, help="give up after this many seconds")] = 3600.0,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow a rollout with a progress bar until it ends. Exit 0 completed, 1 aborted/cancelled, 6 timeout."""
    deadline = time.monotonic() + timeout_s
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                        console=err_console, disable=json_out)
    last_decision = None
    with progress:
        task = progress.add_task(rollout_id, total=None, detail="")
        while True:
            detail = _call(server, token, "GET", f"/api/v1/rollouts/{rollout_id}")
            counts: dict[str, int] = {}
            for states in detail.get("devices_by_stratum", {}).values():
                for state, n in states.items():
                    counts[state] = counts.get(state, 0) + n
            settled = sum(n for state, n in counts.items() if state in _SETTLED_DEVICE_STATES)
            decisions = detail.get("decisions") or []
            if decisions and decisions[-1].get("id") != last_decision:
                last_decision = decisions[-1].get("id")
                if not json_out:
                    newest = decisions[-1]
                    progress.console.print(f"stage {newest['stage'] + 1}: [bold]{newest['action']}[/] by "
                                           f"{newest['actor']}: {newest['reason']}", highlight=False)
            progress.update(task, total=max(1, int(detail.get("device_count") or 0)), completed=settled,
                            description=f"{rollout_id} {detail['state']} stage {detail['stage'] + 1}/{detail['stages']}",
                            detail=" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            if detail["state"] in _FINAL_ROLLOUT_STATES or time.monotonic() > deadline:
                break
            time.sleep(interval_s)
    if json_out:
        emit_json(detail)
    if detail["state"] not in _FINAL_ROLLOUT_STATES:
        fail(f"rollout {rollout_id} still {detail['state']} after {timeout_s:.0f}s", Exit.TIMEOUT)
    code = _FINAL_ROLLOUT_STATES[detail["state"]]
    if not json_out:
        console.print(f"rollout {rollout_id}: {detail['state']}", highlight=False)
    if code != Exit.OK:
        raise typer.Exit(int(code))


def register_rollout_watch(rollout_app: typer.Typer) -> None:
    """Add ``rollout watch`` to the rollout command group, unless it already has one."""
    if any(command.name == "watch" for command in rollout_app.registered_commands):
        return
    rollout_app.command("watch")(rollout_watch)


# --- actions that complete other groups (all over HTTP) ------------------------
@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="device id")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke every certificate of a device and rewrite the CRL (admin); then reload the broker."""
    result = _call(server, token, "POST", f"/api/v1/devices/{device_id}/revoke")
    if json_out:
        emit_json(result)
        return
    serials = result.get("revoked_serials", [])
    console.print(f"revoked {len(serials)} certificate(s) of {device_id}; CRL {result.get('crl_file')}\n"
                  "reload the broker so it reads the new CRL (e.g. systemctl reload mosquitto)", highlight=False)


def token_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """API tokens (never their secrets): who, which role, revoked or not (admin)."""
    tokens: list[dict[str, Any]] = _call(server, token, "GET", "/api/v1/tokens")
    if json_out:
        emit_json(tokens)
        return
    console.print(_table(f"API tokens ({len(tokens)})", ["id", "name", "role", "device", "created", "revoked"],
                         ([t["id"], t["name"], t["role"], _cell(t.get("device_id")), _cell(t["created_at"]),
                           _cell(t.get("revoked_at"))] for t in tokens)))


def token_revoke(
    token_id: Annotated[str, typer.Argument(help="token id (from `edgefleet token list`), not the secret")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Revoke an API token at once: the next request with it gets 401, the dashboard logs it out (admin)."""
    client = client_from(server, token)
    try:
        client.request("DELETE", f"/api/v1/tokens/{token_id}")
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()
    console.print(f"revoked token {token_id}", highlight=False)


def samples_label(
    assignments: Annotated[list[str], typer.Argument(help="SAMPLE_ID=LABEL, or SAMPLE_ID= to reject the sample")],
    labeller: Annotated[str | None, typer.Option(help="recorded in the audit log, e.g. 'oracle:synthetic'")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Label captured samples (they join the next retraining dataset)."""
    labels: dict[str, str | None] = {}
    for item in assignments:
        sample_id, sep, label = item.partition("=")
        if not sep or not sample_id:
            fail(f"{item!r} is not SAMPLE_ID=LABEL (use SAMPLE_ID= to reject a sample)", Exit.BAD_INPUT)
        labels[sample_id] = label or None
    result = _call(server, token, "POST", "/api/v1/samples/labels", {"labels": labels, "labeller": labeller})
    if json_out:
        emit_json(result)
    else:
        console.print(f"labelled {result.get('labelled')} sample(s)", highlight=False)


def governance_reject(
    rollout_proposal_id: Annotated[str, typer.Argument(help="rollout proposal id")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reject a pending canary rollout proposal."""
    client = client_from(server, token)
    try:
        result = client.request("POST", f"/api/v1/governance/rollout-proposals/{rollout_proposal_id}/reject",
                                params={"reason": reason})
    except ApiError as exc:
        fail(exc.detail, exc.exit_code)
    finally:
        client.close()
    if json_out:
        emit_json(result)
    else:
        console.print(f"rollout proposal {result['id']}: {result['state']}", highlight=False)


def _find_group(root: typer.Typer, name: str) -> typer.Typer | None:
    for info in root.registered_groups:
        if info.typer_instance is None:
            continue
        if info.name == name:
            return info.typer_instance
        found = _find_group(info.typer_instance, name)
        if found is not None:
            return found
    return None


def register_extras(root: typer.Typer) -> None:
    """Add the HTTP actions above to other modules' groups, unless a group already has the command.

    The groups (``token``, ``samples``, ``governance``) belong to other modules; these
    commands fill gaps so every operator action has a command, and step aside as soon
    as the owning module defines its own.
    """
    extras: dict[str, dict[str, Callable[..., None]]] = {"token": {"list": token_list, "revoke": token_revoke}, "samples": {"label": samples_label},
              "governance": {"reject": governance_reject}}
    for group_name, commands in extras.items():
        group = _find_group(root, group_name)
        if group is None:
            continue
        existing = {c.name for c in group.registered_commands}
        for name, function in commands.items():
            if name not in existing:
                group.command(name)(function)
