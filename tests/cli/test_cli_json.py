"""Every CLI listing prints one parseable JSON document with ``--json``.

Listing commands are discovered by walking the typer app, so commands other modules
add (``model``, ``rollout``, ``alerts`` ...) are covered as soon as they are registered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.security.tables import Role
from tests.ui.helpers import make_release, make_token, publish_reports

pytestmark = pytest.mark.integration

# Command names that list or show state; each must offer --json.
LISTING_NAMES = frozenset({"list", "show", "status", "fleet", "lineage", "history", "stats", "evidence", "alerts",
                           "proposals", "audit", "windows", "devices"})
MUST_HAVE_JSON = frozenset({"list", "show"})
# Commands whose names look like listings but compute something that needs more set-up.
NOT_LISTINGS = {("drift", "fleet"): "a statistical test of a package against its drift reference"}


# Typer ships its own copy of click, so commands are matched by shape, not by class.
Command = Any


def _walk(command: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


def _has_json(command: Command) -> bool:
    return any("--json" in getattr(p, "opts", []) for p in command.params)


def listing_commands() -> list[tuple[tuple[str, ...], Command]]:
    return [(path, cmd) for path, cmd in _walk(get_command(app))
            if path and path not in NOT_LISTINGS and (path[-1] in LISTING_NAMES or path[-1].startswith("list"))]


def test_every_list_and_show_command_offers_json() -> None:
    missing = [" ".join(path) for path, cmd in listing_commands() if path[-1] in MUST_HAVE_JSON and not _has_json(cmd)]
    assert not missing, f"listing commands without --json: {missing}"
    # The walk must have found at least this module's own listings, or it is broken.
    found = {" ".join(path) for path, _ in listing_commands()}
    assert {"device list", "device show", "deployment list", "deployment show", "fleet", "status"} <= found


@pytest.fixture
def populated(control_plane, api, tmp_path: Path) -> dict[str, Any]:
    """Two devices (one reporting), a release, a deployment and a rollout: something for every listing to show."""
    for device_id, profile in (("cam-01", "x86-64-avx2"), ("cam-02", "rpi5-arm64")):
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": profile}).status_code == 201
    release = make_release(control_plane, tmp_path / "models")
    publish_reports(control_plane, "cam-01", model_version=release.model_version)
    from tests.support.services import wait_for

    wait_for(lambda: api.get("/api/v1/devices/cam-01/telemetry").json(), 20, what="telemetry from cam-01")
    deployment = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": ["cam-02"]})
    assert deployment.status_code == 201, deployment.text
    rollout = api.post("/api/v1/rollouts", json={"name": "cli listing", "release": {"package_id": release.package_id},
                                                 "target": {"device_ids": ["cam-01", "cam-02"]},
                                                 "stages": [{"percent": 100}], "soak_s": 3600})
    assert rollout.status_code == 201, rollout.text
    from datetime import UTC, datetime

    from sqlmodel import Session

    from cloud.monitor.tables import SampleRecord

    with Session(control_plane.engine) as session:
        session.add(SampleRecord(message_id="msg-json-0001", sample_id="smp-json-0001", device_id="cam-01",
                                 model_version=release.model_version, sampler="random",
                                 captured_at=datetime.now(UTC), predicted_label="circle", confidence=0.7))
        session.commit()
    # A finished job (a small dataset import) for `jobs list` and `jobs show`.
    from cloud.pipeline.data.synth import write_synthetic_dataset
    from tests.support.jobs import wait_for_job

    # The API imports only from its import root (EDGEFLEET_DATASET_IMPORT_ROOT).
    write_synthetic_dataset(control_plane.settings.imports_dir / "shapes", images_per_class=4)
    imported = api.post("/api/v1/datasets", json={"path": "shapes"})
    assert imported.status_code == 202, imported.text
    assert wait_for_job(api, imported.json()["job_id"])["state"] == "succeeded"
    return {
        "sample_id": "smp-json-0001", "job_id": imported.json()["job_id"],
        "device_id": "cam-01", "deployment_id": deployment.json()["id"], "package_id": release.package_id,
        "version": release.model_version, "model_version": release.model_version, "rollout_id": rollout.json()["id"],
    }


def _env(plane, token: str) -> dict[str, str]:
    # Commands that talk HTTP use the first two; ones that open the database use the rest.
    return {
        "EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": token,
        "EDGEFLEET_DATABASE_URL": plane.settings.resolved_database_url,
        "EDGEFLEET_DATA_DIR": str(plane.settings.data_dir), "EDGEFLEET_MQTT_URL": plane.broker_url,
        "EDGEFLEET_TOPIC_PREFIX": plane.settings.topic_prefix, "COLUMNS": "200",
    }


def _argument_value(param: Any, path: tuple[str, ...], known: dict[str, Any], runner: CliRunner,
                    env: dict[str, str]) -> str | None:
    name = param.name or ""
    for key in (name, name.removesuffix("_id") + "_id", name.removesuffix("_id")):
        if key in known:
            return str(known[key])
    # Otherwise take the first item the sibling `list --json` prints.
    listing = runner.invoke(app, [*path[:-1], "list", "--json"], env=env)
    if listing.exit_code == 0:
        try:
            items = json.loads(listing.stdout)
        except ValueError:
            return None
        if isinstance(items, dict):
            items = items.get("items", [])
        if items and isinstance(items[0], dict):
            for key in (name, "id", "version"):
                if key in items[0]:
                    return str(items[0][key])
    return None


def test_every_listing_parses_as_json(control_plane, populated: dict[str, Any]) -> None:
    # A viewer token: listings must work for the least privileged operator role.
    env = _env(control_plane, make_token(control_plane, Role.VIEWER))
    admin = make_token(control_plane, Role.ADMIN)
    runner = CliRunner()
    checked: list[str] = []
    problems: list[str] = []
    for path, command in listing_commands():
        if not _has_json(command):
            continue
        args: list[str] = []
        for param in command.params:
            if param.param_type_name in ("argument", "option") and param.required:
                value = _argument_value(param, path, populated, runner, env)
                if value is None:
                    problems.append(f"{' '.join(path)}: no value for {param.param_type_name} {param.name!r}; "
                                    "add it to `populated`")
                    break
                # A required option (`camera list --device ID`) goes with its flag.
                args.extend([param.opts[0], value] if param.param_type_name == "option" else [value])
        else:
            result = runner.invoke(app, [*path, *args, "--json"], env=env)
            if result.exit_code == Exit.AUTH:
                # Admin-only listings (API tokens): a viewer is refused, as it should be.
                result = runner.invoke(app, [*path, *args, "--json"], env={**env, "EDGEFLEET_TOKEN": admin})
            label = " ".join([*path, *args, "--json"])
            if result.exit_code != 0:
                problems.append(f"{label}: exit {result.exit_code}: {result.output[-400:]}")
                continue
            try:
                json.loads(result.stdout)
            except ValueError as exc:
                problems.append(f"{label}: stdout is not JSON ({exc}): {result.stdout[:300]!r}")
                continue
            checked.append(label)
    assert not problems, "\n".join(problems)
    assert len(checked) >= 6, checked


def test_listing_json_holds_the_data(control_plane, populated: dict[str, Any]) -> None:
    env = _env(control_plane, make_token(control_plane, Role.VIEWER))
    runner = CliRunner()
    devices = json.loads(runner.invoke(app, ["device", "list", "--json"], env=env).stdout)
    assert [d["id"] for d in devices] == ["cam-01", "cam-02"]
    online = json.loads(runner.invoke(app, ["device", "list", "--online", "--json"], env=env).stdout)
    assert [d["id"] for d in online] == ["cam-01"]
    shown = json.loads(runner.invoke(app, ["device", "show", "cam-01", "--json"], env=env).stdout)
    assert shown["device"]["running_model_version"] == populated["version"]
    assert len(shown["telemetry"]) == 3
    fleet = json.loads(runner.invoke(app, ["fleet", "--json"], env=env).stdout)
    assert {r["device_id"]: r["online"] for r in fleet} == {"cam-01": True, "cam-02": False}
    deployment = json.loads(runner.invoke(app, ["deployment", "show", populated["deployment_id"], "--json"],
                                          env=env).stdout)
    assert [j["device_id"] for j in deployment["jobs"]] == ["cam-02"]
    table = runner.invoke(app, ["device", "list"], env=env)
    assert table.exit_code == 0 and "cam-02" in table.stdout and "devices (2)" in table.stdout


def test_exit_codes_mean_something(control_plane, populated: dict[str, Any]) -> None:
    runner = CliRunner()
    viewer = _env(control_plane, make_token(control_plane, Role.VIEWER))
    operator = _env(control_plane, make_token(control_plane, Role.OPERATOR))

    missing = runner.invoke(app, ["device", "show", "no-such-cam", "--json"], env=viewer)
    assert missing.exit_code == Exit.NOT_FOUND and "does not exist" in missing.stderr and missing.stdout == ""
    assert runner.invoke(app, ["device", "list"], env={**viewer, "EDGEFLEET_TOKEN": "efo_wrong"}).exit_code == Exit.AUTH
    forbidden = runner.invoke(app, ["deployment", "create", "--package", populated["package_id"], "--device", "cam-01",
                                    "--no-wait"], env=viewer)
    assert forbidden.exit_code == Exit.AUTH, forbidden.output
    no_targets = runner.invoke(app, ["deployment", "create", "--package", populated["package_id"]], env=operator)
    assert no_targets.exit_code == Exit.BAD_INPUT and "--device" in no_targets.stderr
    bad_id = runner.invoke(app, ["device", "register", "bad/id"], env=operator)
    assert bad_id.exit_code == Exit.BAD_INPUT, bad_id.output
    # cam-02 is offline and never answers: waiting ends in the timeout code, not a hang.
    waited = runner.invoke(app, ["deployment", "create", "--package", populated["package_id"], "--device", "cam-02",
                                 "--timeout", "1", "--json"], env=operator)
    assert waited.exit_code == Exit.TIMEOUT, waited.output
    assert json.loads(waited.stdout)["state"] == "in_progress"
    unreachable = runner.invoke(app, ["fleet", "--json"], env={**viewer, "EDGEFLEET_SERVER": "http://127.0.0.1:9"})
    assert unreachable.exit_code == Exit.UNAVAILABLE and "cannot reach" in unreachable.stderr
