"""Labelling a first fleet and governing it: labels checked against the model's classes and
kept as a history, `samples show`, a retraining refusal that says how long to wait and what
to change, and an audit log that names the API token behind every operator action."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.fleet.tables import ModelVersion
from cloud.security.tables import Role
from tests.ui.helpers import LABELS, make_release, make_token

pytestmark = pytest.mark.integration


def _env(plane: Any, token: str) -> dict[str, str]:
    return {"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": token, "COLUMNS": "200"}


def _jpeg(value: int = 90) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), value, dtype=np.uint8))
    assert ok
    return bytes(jpeg.tobytes())


def _add_sample(plane: Any, sample_id: str, device_id: str, *, model_version: str | None, sampler: str = "uncertainty",
                received_at: datetime | None = None, image: bytes | None = None) -> None:
    from cloud.monitor.tables import SampleBlob, SampleRecord

    image = image if image is not None else _jpeg()
    digest = hashlib.sha256(image).hexdigest()
    with Session(plane.engine) as session:
        if session.get(SampleBlob, digest) is None:
            session.add(SampleBlob(sha256=digest, device_id=device_id, content=image, size_bytes=len(image)))
        record = SampleRecord(message_id=f"msg-{sample_id}", sample_id=sample_id, device_id=device_id,
                              model_version=model_version, sampler=sampler, reason="margin 0.10",
                              captured_at=datetime.now(UTC), predicted_label="circle", confidence=0.42,
                              image_sha256=digest, image_bytes=len(image), image_width=32, image_height=32)
        if received_at is not None:
            record.received_at = received_at
        session.add(record)
        session.commit()


def test_labels_must_be_model_classes_and_a_relabel_is_recorded(control_plane, api, tmp_path: Path) -> None:
    release = make_release(control_plane, tmp_path / "models")
    assert api.post("/api/v1/devices", json={"id": "cam-l1"}).status_code == 201
    image = _jpeg(77)
    _add_sample(control_plane, "smp-l-0001", "cam-l1", model_version=release.model_version, image=image)
    runner = CliRunner()
    operator = _env(control_plane, make_token(control_plane, Role.OPERATOR, "alice (night shift)"))

    # A class the model does not have: refused, naming the valid ones; nothing changes.
    wrong = api.post("/api/v1/samples/labels", json={"labels": {"smp-l-0001": "hexagon"}})
    assert wrong.status_code == 422, wrong.text
    assert "hexagon" in wrong.json()["detail"] and ", ".join(LABELS) in wrong.json()["detail"]
    refused = runner.invoke(app, ["samples", "label", "smp-l-0001=hexagon"], env=operator)
    assert refused.exit_code == Exit.BAD_INPUT and "valid classes: circle, square" in refused.stderr
    assert api.get("/api/v1/samples/smp-l-0001").json()["status"] == "unlabelled"

    first = runner.invoke(app, ["samples", "label", "smp-l-0001=square"], env=operator)
    assert first.exit_code == 0, first.output
    assert "smp-l-0001: square" in first.stdout and "relabelled" not in first.stdout
    second = runner.invoke(app, ["samples", "label", "smp-l-0001=triangle"], env=operator)
    assert second.exit_code == 0, second.output
    assert "relabelled from square to triangle" in second.stdout

    sample = api.get("/api/v1/samples/smp-l-0001").json()
    assert sample["label"] == "triangle" and sample["classes"] == LABELS
    assert [(h["actor"], h["from"], h["to"]) for h in sample["history"]] == [
        ("operator:alice (night shift)", None, "square"), ("operator:alice (night shift)", "square", "triangle")]

    out = tmp_path / "sample.jpg"
    shown = runner.invoke(app, ["samples", "show", "smp-l-0001", "--out", str(out)], env=operator)
    assert shown.exit_code == 0, shown.output
    assert out.read_bytes() == image
    text = shown.stdout
    for expected in ("smp-l-0001", "cam-l1", "circle (confidence 0.42)", "triangle by operator:alice (night shift)",
                     str(out), "square → triangle", "unlabelled → square"):
        assert expected in text, (expected, text)
    as_json = runner.invoke(app, ["samples", "show", "smp-l-0001", "--json"], env=operator)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert Path(document["image_file"]).read_bytes() == image and len(document["history"]) == 2
    missing = runner.invoke(app, ["samples", "show", "smp-none"], env=operator)
    assert missing.exit_code == Exit.NOT_FOUND and "smp-none" in missing.stderr

    labelled = api.get("/api/v1/governance/audit", params={"action": "samples.labelled"}).json()
    assert labelled[-1]["actor"] == "operator:alice (night shift)"
    assert labelled[-1]["details"]["relabelled"] == [{"sample_id": "smp-l-0001", "from": "square", "to": "triangle"}]


def test_retrain_refusal_says_how_many_how_fast_how_long_and_which_settings(control_plane, api) -> None:
    from cloud.governance.tables import RetrainingProposal

    now = datetime.now(UTC)
    with Session(control_plane.engine) as session:
        session.add(RetrainingProposal(id="rp-wait-1", created_by="monitor", base_package_id="pkg-base",
                                       base_dataset_id="ds-base", base_model_version="shapes-v1",
                                       device_ids=["cam-a", "cam-b"]))
        session.commit()
    # cam-a: 12 random samples over the last 30 minutes (24/h); cam-b: 6 (12/h); and uncertainty
    # samples, which do not count: 18 of 64, at 36/h, so 46 more take about 77 minutes.
    for index in range(12):
        _add_sample(control_plane, f"smp-a-{index}", "cam-a", model_version=None, sampler="random",
                    received_at=now - timedelta(minutes=30) + timedelta(seconds=150 * index), image=_jpeg(index))
    for index in range(6):
        _add_sample(control_plane, f"smp-b-{index}", "cam-b", model_version=None, sampler="random",
                    received_at=now - timedelta(minutes=30) + timedelta(seconds=300 * index), image=_jpeg(100 + index))
    for index in range(5):
        _add_sample(control_plane, f"smp-u-{index}", "cam-a", model_version=None, sampler="uncertainty",
                    received_at=now - timedelta(minutes=5), image=_jpeg(200 + index))

    answer = api.post("/api/v1/governance/proposals/rp-wait-1/retrain")
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert "only 18 random-stream samples" in detail and "(cam-a: 12, cam-b: 6)" in detail
    assert "needs 64, so 46 more" in detail
    rate = re.search(r"arrived at ([0-9.]+) samples/h", detail)
    assert rate is not None and 34 <= float(rate.group(1)) <= 37, detail
    eta = re.search(r"enough in about (\d+) min", detail)
    assert eta is not None and 74 <= int(eta.group(1)) <= 82, detail
    for setting in ("EDGEFLEET_MONITOR_MIN_REFERENCE_SAMPLES", "monitoring.random_probability",
                    "monitoring.per_minute_count"):
        assert setting in detail, (setting, detail)

    result = CliRunner().invoke(app, ["governance", "retrain", "rp-wait-1"],
                                env=_env(control_plane, make_token(control_plane, Role.OPERATOR)))
    assert result.exit_code == Exit.BAD_INPUT, result.output
    assert "enough in about" in result.stderr and "EDGEFLEET_MONITOR_MIN_REFERENCE_SAMPLES" in result.stderr

    # Devices that stopped sending: no estimate, and it says what to check.
    with Session(control_plane.engine) as session:
        session.add(RetrainingProposal(id="rp-wait-2", created_by="monitor", base_package_id="pkg-base",
                                       base_dataset_id="ds-base", device_ids=["cam-c"]))
        session.commit()
    _add_sample(control_plane, "smp-c-0", "cam-c", model_version=None, sampler="random",
                received_at=now - timedelta(hours=5), image=_jpeg(250))
    stalled = api.post("/api/v1/governance/proposals/rp-wait-2/retrain").json()["detail"]
    assert "only 1 random-stream samples" in stalled and "None arrived in the last hour" in stalled
    assert "monitoring.samples" in stalled


def test_every_operator_action_is_audited_with_the_token_name(control_plane, api, tmp_path: Path) -> None:
    for device_id, profile in (("cam-x1", "x86-64-avx2"), ("cam-x2", "x86-64-avx2")):
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": profile}).status_code == 201
    release = make_release(control_plane, tmp_path / "models")
    runner = CliRunner()
    operator_token = make_token(control_plane, Role.OPERATOR, "carol from ops")
    operator = _env(control_plane, operator_token)
    admin = _env(control_plane, make_token(control_plane, Role.ADMIN, "dana the admin"))
    def as_operator(method: str, path: str, body: Any = None) -> httpx.Response:
        with httpx.Client(base_url=control_plane.base_url, timeout=15,
                          headers={"authorization": f"Bearer {operator_token}"}) as client:
            return client.request(method, path, json=body)

    # Only a validated model can be promoted: mark it as the training gate would have.
    with Session(control_plane.engine) as session:
        model = session.exec(select(ModelVersion).where(ModelVersion.version == release.model_version)).one()
        model.status = "validated"
        session.add(model)
        session.commit()
    promoted = runner.invoke(app, ["model", "promote", release.model_version], env=operator)
    assert promoted.exit_code == 0, promoted.output
    deployment = as_operator("POST", "/api/v1/deployments", {"package_id": release.package_id,
                                                             "device_ids": ["cam-x1"]})
    assert deployment.status_code == 201, deployment.text
    rollout = as_operator("POST", "/api/v1/rollouts", {
        "name": "audited", "release": {"package_id": release.package_id}, "target": {"device_ids": ["cam-x2"]},
        "stages": [{"percent": 100}], "soak_s": 3600})
    assert rollout.status_code == 201, rollout.text
    rollout_id = rollout.json()["id"]
    for action in ("pause", "resume", "abort"):
        assert as_operator("POST", f"/api/v1/rollouts/{rollout_id}/{action}").status_code == 200, action
    _add_sample(control_plane, "smp-x-0001", "cam-x1", model_version=release.model_version)
    assert runner.invoke(app, ["samples", "label", "smp-x-0001=square"], env=operator).exit_code == 0

    with httpx.Client(base_url=control_plane.base_url, timeout=15,
                      headers={"authorization": f"Bearer {admin['EDGEFLEET_TOKEN']}"}) as client:
        created = client.post("/api/v1/tokens", json={"name": "temp bot", "role": "viewer"})
    assert created.status_code == 201, created.text
    token_id = created.json()["id"]
    assert runner.invoke(app, ["token", "revoke", token_id], env=admin).exit_code == 0
    assert runner.invoke(app, ["device", "revoke", "cam-x1"], env=admin).exit_code == 0
    assert api.post("/api/v1/devices/cam-x1/readmit").status_code == 200

    events = api.get("/api/v1/governance/audit", params={"limit": 1000}).json()
    by_action = {(e["action"], e["subject_id"]): e["actor"] for e in events}
    carol, dana = "operator:carol from ops", "operator:dana the admin"
    expected = {
        ("model.promoted", release.model_version): carol,
        ("deployment.created", deployment.json()["id"]): carol,
        ("rollout.created", rollout_id): carol,
        ("rollout.operator_pause", rollout_id): carol,
        ("rollout.operator_resume", rollout_id): carol,
        ("rollout.operator_abort", rollout_id): carol,
        ("samples.labelled", "smp-x-0001"): carol,
        ("token.created", token_id): dana,
        ("token.revoked", token_id): dana,
        ("device.revoked", "cam-x1"): dana,
        ("device.readmitted", "cam-x1"): "operator:tests admin",
    }
    for key, actor in expected.items():
        assert by_action.get(key) == actor, (key, actor, by_action)
    assert not [e for e in events if e["actor"] == "operator"]

    # The model's lineage carries its promotion, deployment and rollout with who did them.
    lineage = api.get(f"/api/v1/governance/lineage/{release.model_version}").json()
    trail = {(e["action"], e["actor"]) for e in lineage["audit"]}
    assert {("model.promoted", carol), ("deployment.created", carol), ("rollout.created", carol),
            ("rollout.operator_abort", carol)} <= trail, trail

    # The CLI shows the log, filtered by an action prefix.
    shown = runner.invoke(app, ["governance", "audit", "--action", "rollout.", "--json"], env=operator)
    assert shown.exit_code == 0, shown.output
    assert {e["action"] for e in json.loads(shown.stdout)} == {"rollout.created", "rollout.operator_pause",
                                                                "rollout.operator_resume", "rollout.operator_abort"}
