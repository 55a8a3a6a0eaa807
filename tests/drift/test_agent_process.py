"""A real enrolled agent process publishes drift windows and uploads samples within budget.

The package comes the normal way (deployment → signed command → TUF → install →
probation); the agent's inference engine feeds its raw scores to the drift hook;
windows are tested against the package's reference; samples travel over HTTP
with the device's own token and the MQTT report names them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from agent.capture.scenes import SCENE_CLASSES, render_frame
from cloud.governance.retrain import package_release
from cloud.monitor.reference import build_reference, run_logits
from cloud.pipeline.train.trainer import DEFAULT_SPEC
from tests.drift.simdevice import colour_model
from tests.support.fleet import start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

PER_MINUTE = 3




def test_agent_publishes_tested_windows_and_uploads_samples(control_plane, api, tmp_path: Path) -> None:
    import numpy as np

    labels = sorted(SCENE_CLASSES)
    # Equal logits: every frame is maximally uncertain, so the uncertainty sampler floods.
    (tmp_path / "model").mkdir()
    onnx = colour_model(tmp_path / "model" / "model.onnx", len(labels))
    rng = np.random.default_rng(0)
    images = [render_frame(labels[i % 4], rng, width=160, height=120) for i in range(128)]
    reference = build_reference(images, run_logits(onnx, images, DEFAULT_SPEC), labels, DEFAULT_SPEC,
                                window_frames=20, calibration_windows=50)
    with Session(control_plane.engine) as session:
        package = package_release(session, onnx_path=onnx, labels=labels, model_name="constant", dataset_id="ds-none",
                                  packages_dir=control_plane.settings.packages_dir, hardware_profiles=["x86-64-avx2"],
                                  reference=reference, spec=DEFAULT_SPEC)
        package_id = package.id
    monitoring = {"window_frames": 20, "subsample_interval_s": 0.05, "samples": "http", "random_probability": 0.0,
                  "uncertainty_per_minute_count": PER_MINUTE, "per_minute_count": PER_MINUTE}
    agent = start_agent(control_plane, tmp_path, "cam-m", fps=10.0, extra={"monitoring": monitoring})
    try:
        wait_for(lambda: api.get("/api/v1/devices/cam-m").json()["online"], 60, what="agent online")
        response = api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": ["cam-m"]})
        assert response.status_code == 201, response.text
        deployment = response.json()["id"]
        wait_for(lambda: api.get(f"/api/v1/deployments/{deployment}").json()["state"] == "succeeded", 90,
                 what=f"the deployment to succeed; agent log:\n{agent.log[-3000:]}")

        def tested_windows() -> list[dict]:
            windows = api.get("/api/v1/drift/devices/cam-m/windows").json()
            return [w for w in windows if w["package_id"] == package_id and w["tested"]]

        windows = wait_for(lambda: len(tested_windows()) >= 2 and tested_windows(), 60,
                           what=f"tested drift windows; ingest {api.get('/api/v1/ingest/stats').json()}; windows {api.get('/api/v1/drift/devices/cam-m/windows').json()[:2]}; agent log:\n{agent.log[-3000:]}")
        assert all(w["frames"] == 20 and w["frames_seen"] >= 20 for w in windows)
        samples = wait_for(lambda: api.get("/api/v1/samples", params={"device_id": "cam-m"}).json(), 60,
                           what="an uploaded sample")
        first = samples[0]
        assert first["sampler"] == "uncertainty" and first["image_sha256"]
        image = api.get(f"/api/v1/samples/{first['sample_id']}/image")
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        assert {"luma_mean", "sharpness_log_lapvar", "top_score"} <= set(first["features"])
    finally:
        stop_agents([agent])
    # Every frame was uncertain, yet no sliding minute holds more than the budget.
    samples = api.get("/api/v1/samples", params={"device_id": "cam-m"}).json()
    times = sorted(s["captured_at"] for s in samples)
    from datetime import datetime

    moments = [datetime.fromisoformat(t) for t in times]
    # The sampler's per-minute budget, checked over the samples' capture timestamps.
    for start in moments:
        captured_in_that_minute = sum(1 for m in moments if 0 <= (m - start).total_seconds() < 60)
        assert captured_in_that_minute <= PER_MINUTE
