"""A real agent with RTSP cameras from a real RTSP server: outage and recovery, a camera with
wrong credentials, and a password that never reaches the log or the telemetry."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from agent.contract.messages import TelemetryReport
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.rtsp import RtspServer, require_rtsp_server
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "door-Pa55-4711"


def _camera(report: TelemetryReport) -> tuple[str | None, str | None, int]:
    camera = report.frame_totals.camera if report.frame_totals else None
    return (camera.state, camera.error_code, camera.outages) if camera else (None, None, 0)


def test_agent_cameras_survive_an_rtsp_outage_and_report_wrong_credentials(
        cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path) -> None:
    require_rtsp_server()
    device_id = f"rtsp-{uuid.uuid4().hex[:8]}"
    with RtspServer(user="viewer", password=PASSWORD) as server:
        pipelines = [
            # Credentials come from the secret directory through credentials_ref, never from the config.
            {"name": "door", "source": server.url(), "credentials_ref": "door", "rtsp_transport": "udp",
             "stall_timeout_s": 5.0, "camera_reconnect_max_s": 5.0},
            {"name": "yard", "source": server.url(userinfo="viewer:wrong-password")},
            {"name": "lobby", "source": "synthetic:1", "source_fps": 20.0},
        ]
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir()
        (secrets_dir / "door").write_text(f"viewer:{PASSWORD}\n")
        agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, pipelines=pipelines,
                                                memory_budget_mb=2048, camera_secrets_dir=str(secrets_dir),
                                                results_jsonl_path=str(tmp_path / "results.jsonl")))
        agents.append(agent.start())
        cloud.wait_online(device_id)
        release = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
        for pipeline in ("door", "lobby"):
            assert cloud.wait_final(cloud.deploy(device_id, release, pipeline=pipeline)).state == "succeeded"
        cloud.wait_serving(device_id, "1.0.0", pipeline="door", timeout_s=90)
        wait_for(lambda: any(t.pipeline == "yard" and _camera(t)[1] == "auth_failed"
                             for t in cloud.telemetry(device_id)), 60, what="yard reporting auth_failed")

        server.stop()
        wait_for(lambda: any(t.pipeline == "door" and _camera(t)[0] == "down" for t in cloud.telemetry(device_id)),
                 60, what="door reporting its camera down")
        seen = len(cloud.telemetry(device_id))
        time.sleep(10)  # the outage lasts; the lobby camera must keep serving meanwhile
        during = cloud.telemetry(device_id)[seen:]
        assert sum(t.frames for t in during if t.pipeline == "lobby") > 0
        assert all(t.frames == 0 for t in during[len(during) // 2:] if t.pipeline == "door")
        server.start()

        def door_recovered() -> bool:
            return any(t.pipeline == "door" and t.frames > 0 and _camera(t)[:2] == ("streaming", None)
                       and _camera(t)[2] >= 1 for t in cloud.telemetry(device_id)[seen:])

        wait_for(door_recovered, 120, what="door streaming again with the outage counted")
        door = [t for t in cloud.telemetry(device_id) if t.pipeline == "door" and t.frames > 0][-1]
        assert door.frame_totals is not None and door.frame_totals.camera is not None
        camera = door.frame_totals.camera
        assert camera.outage_s > 0 and camera.width == 640 and camera.height == 480
        assert camera.capture_to_result_p50_ms is not None and camera.capture_to_result_p95_ms is not None
        assert camera.source is not None and "***@" in camera.source
        # Unreachable while the server was down, the yard camera is refused again once it is back.
        wait_for(lambda: _camera([t for t in cloud.telemetry(device_id) if t.pipeline == "yard"][-1])[1]
                 == "auth_failed", 120, what="yard reporting auth_failed again")
    # Every result carries its frame's capture time and its capture-to-result latency.
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    door_results = [r for r in results if r["pipeline"] == "door"]
    # Causality and presence of the fields, not a speed: a result never precedes its frame.
    assert door_results and all(_result_follows_its_frame(r) for r in door_results)
    log = agent.log
    assert "yard" in log and PASSWORD not in log and "wrong-password" not in log
    assert all(PASSWORD not in t.model_dump_json() for t in cloud.telemetry(device_id))


def _result_follows_its_frame(result: dict[str, object]) -> bool:
    """The result's time is not before its frame's capture time, and the gap it reports is not negative."""
    captured, produced, gap = result["captured_at"], result["at"], result["capture_to_result_ms"]
    # Both times are Unix epoch seconds (floats); the gap is milliseconds.
    assert isinstance(captured, float) and isinstance(produced, float) and isinstance(gap, (int, float))
    return captured <= produced and not gap < 0
