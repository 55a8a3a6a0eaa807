"""The operator surface. Spec errors as 4xx saying what to fix, labels, the
``edgefleet rollout`` CLI (plan, create, show) and approve / pause / resume / abort / cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cloud.cli import app
from tests.rollout.fleet_helpers import (
    ARM,
    X86,
    create,
    fast_spec,
    publish_constant,
    rows,
    start_fleet,
    wait_state,
)

pytestmark = pytest.mark.integration


def _cli(api, *args: str) -> str:
    token = api.headers["authorization"].split(" ", 1)[1]
    result = CliRunner().invoke(app, [*args, "--server", str(api.base_url).rstrip("/"), "--token", token])
    assert result.exit_code == 0, result.output
    return result.output


def test_bad_specs_and_actions_get_4xx_saying_what_to_fix(plane, api, tmp_path: Path) -> None:
    old = publish_constant(plane, tmp_path, "cam-old")
    fleet = start_fleet(plane, api, {X86: 2, ARM: 2}, old)
    try:
        base = fast_spec("bad", {"package_id": old.package_id})
        cases = [
            ({**base, "stages": [{"percent": 50}, {"percent": 10}]}, 422, "sizes are cumulative"),
            ({**base, "release": {"package_id": "nope"}}, 404, "package 'nope', which does not exist"),
            ({**base, "target": {"tags": ["nowhere"]}}, 422, "no device matches the target"),
            ({**base, "timeouts": {"queued_s": -1}}, 422, "timeouts.queued_s"),
            (base, 422, "every targeted device is skipped: already runs the release"),
        ]
        for body, status, fragment in cases:
            response = api.post("/api/v1/rollouts", json=body)
            assert response.status_code == status, response.text
            assert fragment in response.json()["detail"], response.json()["detail"]
        assert api.get("/api/v1/rollouts/ro-missing").status_code == 404
        assert api.post("/api/v1/rollouts/ro-missing/approve").status_code == 404
        assert api.put("/api/v1/devices/ghost/labels", json={"tags": ["a"]}).status_code == 404
        bad_label = api.put("/api/v1/devices/x86-000/labels", json={"tags": ["has space"]})
        assert bad_label.status_code == 422 and "tags" in bad_label.json()["detail"]
    finally:
        fleet.stop()


def test_cli_plan_labels_approve_pause_resume_abort_cancel_and_show(plane, api, tmp_path: Path) -> None:
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    newer = publish_constant(plane, tmp_path, "cam-newer")
    fleet = start_fleet(plane, api, {X86: 8, ARM: 6}, old)
    try:
        for device_id in ("x86-000", "x86-001", "x86-002", "arm64-000", "arm64-001"):
            _cli(api, "rollout", "label", device_id, "--tag", "lobby", "--group", "eu")
        spec = fast_spec("lobby", {"package_id": new.package_id}, target={"tags": ["lobby"]},
                         stages=[{"count": 2, "require_approval": True}, {"percent": 100}])
        spec_path = tmp_path / "lobby.yaml"
        spec_path.write_text(yaml.safe_dump(spec))

        # Dry run: every stage takes devices from both strata; only the labelled devices.
        planned = json.loads(_cli(api, "rollout", "plan", str(spec_path), "--json"))
        assert [len(s["devices"]) for s in planned["stages"]] == [2, 3]
        assert {d for s in planned["stages"] for d in s["devices"]} == {
            "x86-000", "x86-001", "x86-002", "arm64-000", "arm64-001"}
        assert "x86-00" in _cli(api, "rollout", "plan", str(spec_path))
        assert api.get("/api/v1/rollouts").json() == []  # a dry run stores nothing

        created = _cli(api, "rollout", "create", str(spec_path))
        rollout_id = created.split()[1]
        wait_state(api, rollout_id, ("awaiting_approval",))
        assert "paused" in _cli(api, "rollout", "pause", rollout_id)
        assert "running" in _cli(api, "rollout", "resume", rollout_id)
        wait_state(api, rollout_id, ("awaiting_approval",))  # the stage still needs its approval
        assert api.post(f"/api/v1/rollouts/{rollout_id}/resume").status_code == 409
        _cli(api, "rollout", "approve", rollout_id)
        done = wait_state(api, rollout_id)
        assert done["state"] == "completed"
        shown = _cli(api, "rollout", "show", rollout_id)
        for fragment in ("await_approval", "operator_approve", "complete", "class_distribution", "observed: ",
                         "control: live"):
            assert fragment in shown, shown
        labelled = {"x86-000", "x86-001", "x86-002", "arm64-000", "arm64-001"}
        assert set(fleet.running(labelled).values()) == {new.package_id}
        assert set(fleet.running(set(fleet.running()) - labelled).values()) == {old.package_id}

        # Abort rolls every touched device back to its previous version.
        spec.update(name="abort-me", release={"package_id": newer.package_id})
        aborting = create(api, spec)["id"]
        wait_state(api, aborting, ("awaiting_approval",))
        touched = {d for d, r in rows(api, aborting).items() if r["state"] == "succeeded"}
        assert len(touched) == 2
        _cli(api, "rollout", "abort", aborting)
        assert wait_state(api, aborting)["state"] == "aborted"
        assert set(fleet.running(touched).values()) == {new.package_id}
        assert {r["state"] for d, r in rows(api, aborting).items() if d not in touched} == {"cancelled"}

        # Force-cancel stops at once and rolls nothing back.
        spec.update(name="cancel-me")
        cancelled = create(api, spec)["id"]
        wait_state(api, cancelled, ("awaiting_approval",))
        touched = {d for d, r in rows(api, cancelled).items() if r["state"] == "succeeded"}
        assert "cancelled" in _cli(api, "rollout", "cancel", cancelled)
        assert api.get(f"/api/v1/rollouts/{cancelled}").json()["state"] == "cancelled"
        assert set(fleet.running(touched).values()) == {newer.package_id}
        assert api.post(f"/api/v1/rollouts/{cancelled}/abort").status_code == 409
    finally:
        fleet.stop()
