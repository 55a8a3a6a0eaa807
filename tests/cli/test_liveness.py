"""A device that stops reporting turns offline, in the API, the CLI and /metrics alike, without any Last Will."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from agent.contract import DeviceState, StatusReport, TelemetryReport, Topics
from agent.contract.broker_url import parse_broker_url
from cloud.cli import app
from cloud.core.config import Settings
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

DEVICE = "cam-quiet"
# The interval the device reports (its telemetry window); it publishes more often than that, so a
# loaded test machine never makes it look silent while it still reports.
INTERVAL_S = 2.0
PUBLISH_EVERY_S = 0.5


def _cli(args: list[str], plane: ControlPlane) -> tuple[int, str]:
    token = control_plane_admin_headers(plane)["Authorization"].removeprefix("Bearer ")
    env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": token, "COLUMNS": "200", "TERM": "dumb"})
    result = CliRunner().invoke(app, args, env=env)  # type: ignore[arg-type]
    return result.exit_code, result.stdout + result.stderr


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_a_device_that_stops_reporting_turns_offline_everywhere(tmp_path: Path, mqtt_url: str, database_url: str,
                                                               topic_prefix: str) -> None:
    settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                        topic_prefix=topic_prefix, api_port=0, offline_after_intervals=3)
    plane = ControlPlane(settings)
    plane.start()
    plane.serve_http_in_thread()
    api = httpx.Client(base_url=plane.base_url, timeout=15, headers=control_plane_admin_headers(plane))
    topics = Topics(topic_prefix)
    address = parse_broker_url(mqtt_url)
    # A device without a Last Will, like one whose Will fired while the control plane was down.
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"quiet-{topic_prefix[2:12]}", protocol=mqtt.MQTTv311)
    stop_reporting = threading.Event()

    def report() -> None:
        device.publish(topics.status(DEVICE), StatusReport(device_id=DEVICE, state=DeviceState.ONLINE).to_bytes(),
                       qos=1, retain=True)
        while not stop_reporting.wait(PUBLISH_EVERY_S):
            device.publish(topics.telemetry(DEVICE), TelemetryReport(
                device_id=DEVICE, window_s=INTERVAL_S, frames=5, fps=10.0).to_bytes(), qos=1)

    reporter = threading.Thread(target=report, daemon=True)
    try:
        assert api.post("/api/v1/devices", json={"id": DEVICE}).status_code == 201
        device.connect(address.host, address.port)
        device.loop_start()
        reporter.start()
        wait_for(lambda: api.get(f"/api/v1/devices/{DEVICE}").json()["online"]
                 and api.get(f"/api/v1/devices/{DEVICE}/telemetry").json(), 30, what="the device online, reporting")
        code, out = _cli(["device", "list", "--json"], plane)
        assert code == 0 and json.loads(out)[0]["online"] is True, out
        assert _metric(api.get("/metrics").text, "edgefleet_devices_online") == 1

        stop_reporting.set()
        reporter.join(timeout=10)
        device.loop_stop()  # silent: no DISCONNECT, no offline status, no Will

        wait_for(lambda: not api.get(f"/api/v1/devices/{DEVICE}").json()["online"], 30,
                 what="the API to call the silent device offline")
        shown = api.get(f"/api/v1/devices/{DEVICE}").json()
        assert shown["gone_quiet"] is True
        fleet = api.get("/api/v1/fleet").json()
        assert [(row["device_id"], row["online"], row["gone_quiet"]) for row in fleet] == [(DEVICE, False, True)]
        code, out = _cli(["device", "list", "--json"], plane)
        assert code == 0 and json.loads(out)[0]["online"] is False, out
        code, out = _cli(["device", "list", "--offline"], plane)
        assert code == 0 and DEVICE in out, out
        code, out = _cli(["status"], plane)
        assert "gone quiet" in out and DEVICE in out, out
        metrics = api.get("/metrics").text
        assert _metric(metrics, "edgefleet_devices_online") == 0
        assert re.search(r'^edgefleet_devices\{hardware_profile="[^"]+",state="offline"\} 1\.0$', metrics, re.MULTILINE)
    finally:
        stop_reporting.set()
        device.loop_stop()
        api.close()
        plane.stop()
