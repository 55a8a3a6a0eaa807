"""Operator actions that had no command (revoke a device or a token, label samples, reject a
rollout proposal) work over HTTP with the usual exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.security.tables import Role
from tests.ui.helpers import make_release, make_token

pytestmark = pytest.mark.integration


def _env(plane, token: str) -> dict[str, str]:
    return {"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": token}


def test_token_list_and_revoke(control_plane) -> None:
    runner = CliRunner()
    admin = _env(control_plane, make_token(control_plane, Role.ADMIN, "root"))
    victim = make_token(control_plane, Role.OPERATOR, "leaving operator")
    listed = runner.invoke(app, ["token", "list", "--json"], env=admin)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert all("token" not in row and "token_sha256" not in row for row in rows)  # never the secret
    victim_id = next(r["id"] for r in rows if r["name"] == "leaving operator")
    assert runner.invoke(app, ["device", "list"], env=_env(control_plane, victim)).exit_code == 0
    assert runner.invoke(app, ["token", "revoke", victim_id], env=_env(control_plane, victim)).exit_code == Exit.AUTH
    revoked = runner.invoke(app, ["token", "revoke", victim_id], env=admin)
    assert revoked.exit_code == 0, revoked.output
    assert runner.invoke(app, ["device", "list"], env=_env(control_plane, victim)).exit_code == Exit.AUTH
    assert runner.invoke(app, ["token", "revoke", "no-such-id"], env=admin).exit_code == Exit.NOT_FOUND


def test_device_revoke(control_plane, api) -> None:
    runner = CliRunner()
    assert api.post("/api/v1/devices", json={"id": "cam-r1"}).status_code == 201
    operator = _env(control_plane, make_token(control_plane, Role.OPERATOR))
    assert runner.invoke(app, ["device", "revoke", "cam-r1"], env=operator).exit_code == Exit.AUTH  # admin only
    admin = _env(control_plane, make_token(control_plane, Role.ADMIN))
    result = runner.invoke(app, ["device", "revoke", "cam-r1", "--json"], env=admin)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device_id"] == "cam-r1"


def test_label_samples_and_reject_a_rollout_proposal(control_plane, api, tmp_path) -> None:
    from cloud.governance.tables import RolloutProposal
    from cloud.monitor.tables import SampleRecord

    release = make_release(control_plane, tmp_path)
    assert api.post("/api/v1/devices", json={"id": "cam-s1"}).status_code == 201
    with Session(control_plane.engine) as session:
        session.add(SampleRecord(message_id="msg-cli-0001", sample_id="smp-cli-0001", device_id="cam-s1",
                                 sampler="uncertainty", captured_at=datetime.now(UTC), predicted_label="circle",
                                 confidence=0.4))
        session.add(RolloutProposal(id="rop-cli-1", model_version=release.model_version, package_id=release.package_id,
                                    device_ids=["cam-s1"], reason="test"))
        session.commit()
    runner = CliRunner()
    operator = _env(control_plane, make_token(control_plane, Role.OPERATOR))

    malformed = runner.invoke(app, ["samples", "label", "smp-cli-0001"], env=operator)
    assert malformed.exit_code == Exit.BAD_INPUT and "SAMPLE_ID=LABEL" in malformed.stderr
    labelled = runner.invoke(app, ["samples", "label", "smp-cli-0001=square", "--labeller", "cli-test", "--json"],
                             env=operator)
    assert labelled.exit_code == 0, labelled.output
    assert json.loads(labelled.stdout)["labelled"] == 1
    samples = api.get("/api/v1/samples", params={"status": "labelled"}).json()
    assert [(s["sample_id"], s["label"]) for s in samples] == [("smp-cli-0001", "square")]

    rejected = runner.invoke(app, ["governance", "reject", "rop-cli-1", "--reason", "not now", "--json"], env=operator)
    assert rejected.exit_code == 0, rejected.output
    assert json.loads(rejected.stdout)["state"] == "rejected"
    again = runner.invoke(app, ["governance", "reject", "rop-cli-1"], env=operator)
    assert again.exit_code == Exit.BAD_INPUT and "not pending" in again.stderr
