"""A real agent process with five cameras on two models: four share one loaded instance, a
deploy to that model swaps it for all four at once, and telemetry's loaded-model count (the
agent's own) says how many instances there are."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.contract.messages import TelemetryReport
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

SHARED = ["cam0", "cam1", "cam2", "cam3"]

# The per-camera report fields that must be present (which fields are reported, not their values).
CAMERA_REPORT_FIELDS = frozenset({"capture_to_result_p50_ms", "capture_to_result_p95_ms", "stale_frames_dropped"})


def _latest(reports: list[TelemetryReport], camera: str) -> TelemetryReport | None:
    return next((r for r in reversed(reports) if r.pipeline == camera), None)


def _serving(cloud: CloudSim, device_id: str, cameras: list[str], version: str,
             loaded_models: int) -> dict[str, TelemetryReport] | None:
    """Each camera's latest report, once every one shows frames of ``version`` and the count."""
    reports = cloud.telemetry(device_id)
    latest = {camera: _latest(reports, camera) for camera in cameras}
    if all(r is not None and r.model_version == version and r.frames > 0 and r.loaded_models == loaded_models
           for r in latest.values()):
        return {camera: r for camera, r in latest.items() if r is not None}
    return None


def test_cameras_share_one_model_instance_per_package(
        cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path) -> None:
    device_id = f"shared-{uuid.uuid4().hex[:8]}"
    pipelines = [{"name": name, "source": f"synthetic:{i + 1}", "source_fps": 10.0, "target_fps": 5.0,
                  "model": "shapes"} for i, name in enumerate(SHARED)]
    # A region of interest on one camera; a fifth camera on a model of its own.
    pipelines[1]["roi"] = [0.25, 0.25, 0.5, 0.5]
    pipelines.append({"name": "gate", "source": "synthetic:9", "source_fps": 10.0, "target_fps": 5.0})
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, pipelines=pipelines,
                                            max_batch=4, batch_deadline_ms=20))
    agents.append(agent.start())
    cloud.wait_online(device_id)

    first = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    assert cloud.wait_final(cloud.deploy(device_id, first, pipeline="shapes")).state == "succeeded"
    shared = wait_for(lambda: _serving(cloud, device_id, SHARED, "1.0.0", loaded_models=1), 60,
                      what="four cameras served by one loaded model")
    for report in shared.values():
        assert report.model_group == "shapes"
        camera = report.frame_totals.camera if report.frame_totals else None
        # Each camera's report carries its latency figures and stale-frame count (their values are the benchmark's).
        assert camera is not None
        assert set(camera.model_dump(exclude_none=True)) >= CAMERA_REPORT_FIELDS
    # The fifth camera's model has nothing deployed yet: it serves nothing and loads nothing.
    assert all(r.frames == 0 for r in cloud.telemetry(device_id)[-10:] if r.pipeline == "gate")

    second = cloud.release("2.0.0", [(models["v2"], ORT_FP32)], name="gate-model")
    assert cloud.wait_final(cloud.deploy(device_id, second, pipeline="gate")).state == "succeeded"
    wait_for(lambda: _serving(cloud, device_id, ["gate"], "2.0.0", loaded_models=2), 60,
             what="a second package loaded as a second instance")

    # A deploy addressed to one camera of the shared model swaps the instance for all four,
    # through the usual install and probation; the old instance is released after commit.
    third = cloud.release("3.0.0", [(models["v3"], ORT_FP32)])
    final = cloud.wait_final(cloud.deploy(device_id, third, pipeline="cam2"))
    assert final.state == "succeeded" and final.probation is not None
    # The fifth camera's report comes last in each telemetry cycle, so it is waited for
    # with the others rather than read the moment the four shared ones arrive.
    wait_for(lambda: _serving(cloud, device_id, SHARED, "3.0.0", loaded_models=2)
             and _serving(cloud, device_id, ["gate"], "2.0.0", loaded_models=2), 60,
             what="all four cameras on the new shared instance, the old one released, the fifth unchanged")
    status = cloud.latest_status(device_id)
    assert status is not None
    assert {p.name: p.model_version for p in status.pipelines} == {**dict.fromkeys(SHARED, "3.0.0"), "gate": "2.0.0"}


def test_cameras_are_added_and_removed_on_a_running_agent(cloud: CloudSim, tmp_path: Path) -> None:
    """The serving layer's run-time API (what a camera-management command applies)."""
    from agent.app import AgentApp
    from agent.config import AgentConfig, PipelineConfig

    device_id = f"cams-{uuid.uuid4().hex[:8]}"
    config = AgentConfig.model_validate(cloud.agent_config(
        device_id, tmp_path / device_id, pipelines=[{"name": "cam0", "source": "synthetic:1", "model": "shapes"}]))
    app = AgentApp(config)
    app.start()
    try:
        joined = app.add_camera(PipelineConfig(name="cam1", source="synthetic:2", model="shapes"))
        app.add_camera(PipelineConfig(name="dock", source="synthetic:3", model="trucks"))
        assert joined.engine is app.pipelines["cam0"].engine, "a camera joining a model shares its engine"
        assert set(app.groups) == {"shapes", "trucks"} and app.groups["shapes"].cameras == ["cam0", "cam1"]
        assert sorted(app.groups["shapes"].engine.camera_names) == ["cam0", "cam1"]
        with pytest.raises(ValueError, match="exists already"):
            app.add_camera(PipelineConfig(name="cam1", source="synthetic:4"))
        app.remove_camera("cam0")
        assert app.groups["shapes"].engine.camera_names == ["cam1"]
        app.remove_camera("dock")
        assert "trucks" not in app.groups and "trucks" not in app.managers, "a model without cameras is unloaded"
        assert [p.name for p in app._status().pipelines] == ["cam1"]
        with pytest.raises(KeyError):
            app.remove_camera("nonexistent")
    finally:
        app.stop()
