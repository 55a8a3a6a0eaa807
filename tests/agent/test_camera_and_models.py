"""Frame pipeline and multi-model tests with real agents: a camera that vanishes and
returns, two cameras with two models, and the memory budget."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.capture.scenes import write_video
from agent.contract.broker_url import parse_broker_url
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def test_camera_source_vanishes_and_returns(cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess],
                                            tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    video = tmp_path / "camera.avi"
    write_video(str(video), frames=10, fps=20.0, seed=3)
    # A non-looping file behaves like a stream that ends: at its end the source is
    # "gone" and the agent reconnects, with backoff, for as long as it stays gone.
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, source=str(video), source_loop=False,
                                            source_fps=20.0, target_fps=0.0))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    assert cloud.wait_final(cloud.deploy(device_id, cloud.release("1.0.0", [(models["v1"], ORT_FP32)]))).state \
        == "succeeded"
    cloud.wait_serving(device_id, "1.0.0")

    hidden = video.rename(tmp_path / "unplugged.avi")
    seen = len(cloud.telemetry(device_id))
    wait_for(lambda: any(not t.camera_ok and t.frames == 0 for t in cloud.telemetry(device_id)[seen:]), 30,
             what="telemetry reporting the camera gone")
    assert agent.exited() is None, "a vanished camera must not stop the agent"

    hidden.rename(video)
    seen = len(cloud.telemetry(device_id))
    wait_for(lambda: any(t.camera_ok and t.frames > 0 for t in cloud.telemetry(device_id)[seen:]), 30,
             what="frames flowing again after the camera returned")
    last = cloud.telemetry(device_id)[-1].frame_totals
    assert last is not None and last.camera_reconnects >= 1


def test_two_cameras_two_models_within_the_memory_budget(cloud: CloudSim, models: dict[str, Path],
                                                         agents: list[AgentProcess], tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    pipelines = [
        {"name": "front", "source": "synthetic:1", "source_fps": 20.0},
        {"name": "back", "source": "synthetic:2", "source_fps": 20.0},
    ]
    # Per-frame results also go to a local MQTT topic (here the test broker).
    results_topic = f"{cloud.prefix}-results/{device_id}"
    results: list[dict[str, object]] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    listener.on_message = lambda c, u, m: results.append(json.loads(m.payload))
    address = parse_broker_url(cloud.mqtt_url)
    listener.connect(address.host, address.port)
    listener.subscribe(f"{results_topic}/#")
    listener.loop_start()
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, pipelines=pipelines,
                                            memory_budget_mb=2048, results_mqtt_url=cloud.mqtt_url,
                                            results_mqtt_topic=results_topic))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    front = cloud.release("1.0.0", [(models["v1"], ORT_FP32)], name="people")
    back = cloud.release("7.0.0", [(models["v2"], ORT_FP32)], name="vehicles")
    assert cloud.wait_final(cloud.deploy(device_id, front, pipeline="front")).state == "succeeded"
    assert cloud.wait_final(cloud.deploy(device_id, back, pipeline="back")).state == "succeeded"
    cloud.wait_serving(device_id, "1.0.0", pipeline="front")
    cloud.wait_serving(device_id, "7.0.0", pipeline="back")

    def both_reported() -> bool:
        status = cloud.latest_status(device_id)
        return status is not None and {(p.name, p.model_version) for p in status.pipelines} == {
            ("front", "1.0.0"), ("back", "7.0.0")}

    wait_for(both_reported, 30, what="status naming both pipelines' models")
    # Each pipeline's telemetry carries its own model's predictions (v1 says circle, v2 square).
    recent = cloud.telemetry(device_id)[-6:]
    assert {t.pipeline: set(t.class_counts) for t in recent if t.frames} == {"front": {"circle"}, "back": {"square"}}
    wait_for(lambda: {(r["pipeline"], r["model_version"], r["label"]) for r in results} >= {
        ("front", "1.0.0", "circle"), ("back", "7.0.0", "square")}, 30, what="results on the local MQTT topic")
    listener.loop_stop()
    listener.disconnect()


def test_install_beyond_the_memory_budget_is_refused(cloud: CloudSim, models: dict[str, Path],
                                                     agents: list[AgentProcess], tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, memory_budget_mb=1))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    final = cloud.wait_final(cloud.deploy(device_id, cloud.release("1.0.0", [(models["v1"], ORT_FP32)])))
    assert (final.state, final.error_code, final.install_state) == ("failed", "memory_budget", "abort")
    assert final.running_model_version is None
    assert agent.exited() is None
