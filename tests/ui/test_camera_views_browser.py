"""In a browser, the rollout page and the drift page list a device's two cameras beneath it: on the
rollout page each with the model it runs and its own figures, on the drift page each with its own
last window and state. Reports go through the real ingest path (the broker and the bridge)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.contract import DriftReport, Topics
from agent.contract.drift import HISTOGRAM_BINS, encode_histograms
from tests.support.services import wait_for
from tests.ui.helpers import acknowledged_publisher, make_release, publish_camera_windows

pytestmark = pytest.mark.integration

DEVICE = "edge-cams"


def _publish_drift_windows(plane, package_id: str, model_version: str, cameras: list[str]) -> None:
    topics = Topics(plane.settings.topic_prefix)
    with acknowledged_publisher(plane, "drift") as publish:
        ended = datetime.now(UTC)
        for seq, camera in enumerate(cameras, start=1):
            counts = np.zeros((1, HISTOGRAM_BINS), dtype=np.int64)
            counts[0, 10 + seq] = 30
            report = DriftReport(device_id=DEVICE, model_version=model_version, package_id=package_id,
                                 pipeline=camera, window_seq=seq, window_started_at=ended - timedelta(minutes=5),
                                 window_ended_at=ended, frames_seen=300, frames=30, features=["luma_mean"],
                                 histograms=encode_histograms(counts), means=[0.4], stds=[0.1])
            publish(topics.drift(DEVICE), report.to_bytes())


def test_rollout_and_drift_pages_list_two_cameras_under_their_device(control_plane, api, login, tokens, screenshot,
                                                                      tmp_path: Path) -> None:
    plane = control_plane
    assert api.post("/api/v1/devices", json={"id": DEVICE, "hardware_profile": "x86-64-avx2"}).status_code == 201
    release = make_release(plane, tmp_path / "release")
    created = api.post("/api/v1/rollouts", json={
        "name": "cameras", "release": {"package_id": release.package_id}, "target": {"device_ids": [DEVICE]},
        "stages": [{"percent": 100}], "soak_s": 3600})
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    publish_camera_windows(plane, DEVICE, package_id=release.package_id, model_version=release.model_version,
                           windows={"dock": 3, "gate": 2}, detecting=frozenset({"dock"}))
    _publish_drift_windows(plane, release.package_id, release.model_version, ["dock", "gate"])
    wait_for(lambda: sum(c["windows"] for c in api.get(f"/api/v1/rollouts/{rollout_id}/devices").json()[0]["cameras"])
             == 5, 20, what="the cameras' telemetry stored")
    wait_for(lambda: [len(r["cameras"]) for r in api.get("/api/v1/drift/devices").json()] == [2], 20,
             what="both cameras' drift windows stored")

    page = login(tokens["viewer"])
    page.goto(f"/ui/rollouts/{rollout_id}")
    table = page.locator("#rollout-devices")
    rows = table.locator("tbody tr")
    # The device, then its two cameras beneath it.
    assert [rows.nth(i).get_attribute("data-camera") for i in range(3)] == [None, "dock", "gate"]
    assert rows.nth(0).get_attribute("data-device") == DEVICE
    dock, gate = (table.locator(f'tr.camera-row[data-camera-of="{DEVICE}"][data-camera="{name}"]')
                  for name in ("dock", "gate"))
    for camera in (dock, gate):
        assert camera.locator('[data-figure="model"]').inner_text() == release.model_version
    assert dock.locator('[data-figure="frames"]').inner_text() == "33 frames in 3 windows"
    assert "car 33, person 66" in dock.locator('[data-figure="objects"]').inner_text()
    assert dock.locator('[data-figure="capture-p95"]').inner_text() == "capture-to-result p95 12.0 ms"
    assert gate.locator('[data-figure="stale"]').inner_text() == "8 stale frames dropped"
    assert gate.locator('[data-figure="confidence"]').inner_text() == "mean confidence 0.90"
    assert gate.locator('[data-figure="p95"]').inner_text() == "inference p95 6.0 ms"
    screenshot(page, "rollout-cameras")

    page.goto("/ui/alerts")
    drift = page.locator("#drift-devices-table tbody tr")
    assert [drift.nth(i).get_attribute("data-camera") for i in range(3)] == [None, "dock", "gate"]
    assert drift.nth(0).get_attribute("data-drift-device") == DEVICE
    for i in (1, 2):
        assert drift.nth(i).get_attribute("data-camera-of") == DEVICE
        assert "not tested: no drift reference for this package" in drift.nth(i).locator(
            '[data-figure="test"]').inner_text()
    screenshot(page, "drift-cameras")


def test_the_device_drift_chart_draws_each_camera_apart() -> None:
    from cloud.dashboard.routes import _drift_series

    at = "2026-12-05T18:00:0{}+00:00"
    windows = [{"camera": camera, "window_ended_at": at.format(i), "score": 1.0 + i, "cusum": 0.0, "p_value": 0.5}
               for i, camera in enumerate(("door", "yard", "door"))]
    lines = {s.label: len(s.points) for s in _drift_series(windows)}
    assert lines == {"score (door)": 2, "cusum (door)": 2, "p_value (door)": 2,
                     "score (yard)": 1, "cusum (yard)": 1, "p_value (yard)": 1}
    # One camera: the lines keep their plain names.
    assert {s.label for s in _drift_series(windows[:1])} == {"score", "cusum", "p_value"}
