"""/metrics on the control plane and on the agent pass Prometheus' own parser."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentConfig
from agent.contract import TelemetryReport, Topics
from agent.contract.broker_url import parse_broker_url
from agent.metrics import AgentMetrics, MetricsServer
from tests.support.services import wait_for
from tests.ui.helpers import make_release, publish_reports


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse with prometheus_client's parser (it raises on malformed exposition text)."""
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return parsed


def _publish_raw(plane, topic: str, payload: bytes) -> None:
    address = parse_broker_url(plane.broker_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(address.host, address.port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    client.loop_stop()
    client.disconnect()


@pytest.mark.integration
def test_control_plane_metrics_parse_and_count(control_plane, api, tmp_path: Path) -> None:
    # These devices report once and then stay silent: keep them online for the count below
    # (liveness expiry has its own test, tests/cli/test_liveness.py).
    control_plane.settings.offline_after_intervals = 100_000
    for device_id, profile in (("cam-01", "x86-64-avx2"), ("cam-02", "rpi5-arm64"), ("cam-03", "rpi5-arm64")):
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": profile}).status_code == 201
    release = make_release(control_plane, tmp_path)
    publish_reports(control_plane, "cam-01", model_version=release.model_version, windows=2)
    publish_reports(control_plane, "cam-02", model_version=release.model_version, windows=1, profile="rpi5-arm64")
    topics = Topics(control_plane.settings.topic_prefix)
    _publish_raw(control_plane, topics.telemetry("cam-03"), b"{not json")
    _publish_raw(control_plane, topics.telemetry("ghost"), TelemetryReport(
        device_id="ghost", window_s=1, frames=0, fps=0).model_dump_json().encode())
    wait_for(lambda: api.get("/api/v1/ingest/stats").json()["rejected_total"] >= 2, 20, what="two rejected reports")
    wait_for(lambda: api.get("/api/v1/ingest/stats").json()["accepted"].get("telemetry", 0) >= 3, 20,
             what="three telemetry windows")

    # Prometheus scrapes without a token, as it does by default.
    response = httpx.get(f"{control_plane.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = _families(response.text)

    assert metrics["edgefleet_devices_online"][()] == 2
    assert metrics["edgefleet_devices"][(("hardware_profile", "rpi5-arm64"), ("state", "offline"))] == 1
    assert metrics["edgefleet_devices"][(("hardware_profile", "rpi5-arm64"), ("state", "online"))] == 1
    assert metrics["edgefleet_devices_running"][(("model_version", release.model_version),)] == 2
    assert metrics["edgefleet_ingest_accepted_total"][(("kind", "telemetry"),)] == 3
    assert metrics["edgefleet_ingest_rejected_total"][(("reason", "malformed"),)] == 1
    assert metrics["edgefleet_ingest_rejected_total"][(("reason", "unknown_device"),)] == 1
    # Every reason has a series from the start, so rate() works before the first reject.
    assert metrics["edgefleet_ingest_rejected_total"][(("reason", "oversized"),)] == 0
    assert metrics["edgefleet_mqtt_connected"][()] == 1
    assert metrics["edgefleet_database_up"][()] == 1
    # Rollout and drift families are always declared (empty until those features hold rows).
    assert "# TYPE edgefleet_rollouts gauge" in response.text
    assert "# TYPE edgefleet_drift_alerts gauge" in response.text


def test_agent_metrics_endpoint_parses() -> None:
    metrics = AgentMetrics("cam-01", "0.1.0")
    for frames in (30, 25):
        metrics.observe_window(TelemetryReport(
            device_id="cam-01", model_version='shapes-"2"', runtime="onnxruntime", window_s=1.0, frames=frames,
            fps=float(frames), p95_latency_ms=4.5, mean_confidence=0.8, inference_errors=1, rejected_commands=2,
            pipeline="door"))
    server = MetricsServer(metrics, port=0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()
    parsed = _families(text)
    assert parsed["edgefleet_agent_frames_total"][()] == 55
    assert parsed["edgefleet_agent_inference_errors_total"][()] == 2
    assert parsed["edgefleet_agent_rejected_commands_total"][()] == 2
    assert parsed["edgefleet_agent_fps"][(("pipeline", "door"),)] == 25
    # Label values are escaped: a quote in a version cannot break the format.
    info = next(iter(parsed["edgefleet_agent_info"]))
    assert ("model_version", 'shapes-"2"') in info


def test_agent_metrics_are_off_unless_configured(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("device_id: cam-01\n")
    assert AgentConfig.load(path, env={}).metrics_port is None
    enabled = AgentConfig.load(path, env={"EDGEFLEET_AGENT_METRICS_PORT": "9108"})
    assert enabled.metrics_port == 9108 and enabled.metrics_host == "127.0.0.1"
    with pytest.raises(ValueError, match="metrics_port"):
        AgentConfig.load(path, env={"EDGEFLEET_AGENT_METRICS_PORT": "70000"})


@pytest.mark.integration
def test_a_real_agent_serves_metrics_when_configured(control_plane, api, tmp_path: Path) -> None:
    from tests.support.fleet import start_agent, stop_agents
    from tests.support.services import free_port

    assert api.post("/api/v1/devices", json={"id": "cam-m1", "hardware_profile": "x86-64-avx2"}).status_code == 201
    port = free_port()
    agent = start_agent(control_plane, tmp_path, "cam-m1", extra={"metrics_port": port})
    try:
        def scraped() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    parsed = _families(response.read().decode())
            except OSError:
                return None
            windows = parsed.get("edgefleet_agent_telemetry_windows_total", {}).get((), 0)
            return parsed if windows >= 2 else None

        parsed = wait_for(scraped, 60, what="two telemetry windows on the agent's /metrics")
        info = next(iter(parsed["edgefleet_agent_info"]))
        assert ("device_id", "cam-m1") in info
        assert parsed["edgefleet_agent_camera_ok"]
    finally:
        stop_agents([agent])
