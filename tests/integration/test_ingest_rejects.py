"""Malformed device messages are rejected and counted; the control plane keeps running."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import DeviceState, StatusReport, TelemetryReport
from agent.contract.broker_url import parse_broker_url
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def _publisher(url: str) -> mqtt.Client:
    address = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-test-client")
    client.connect(address.host, address.port)
    client.loop_start()
    return client


def test_malformed_reports_are_rejected_counted_and_survived(control_plane, api) -> None:
    assert api.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    topics = control_plane.topics
    good = TelemetryReport(device_id="cam-1", window_s=1.0, frames=10, fps=10.0, mean_confidence=0.9)
    hostile = [
        (topics.telemetry("cam-1"), b"\xff\xfe not json at all", "malformed"),
        (topics.telemetry("cam-1"), b'{"schema_version": 1, "device_id": "cam-1"}', "schema"),
        (topics.telemetry("cam-1"), json.dumps({**good.model_dump(mode="json"), "fps": -3}).encode(), "schema"),
        (topics.telemetry("cam-1"), b"[1, 2, 3]", "schema"),
        (topics.telemetry("cam-1"), b"{" + b" " * (control_plane.settings.max_report_bytes + 10) + b"}", "oversized"),
        # Valid JSON for cam-1, published on cam-2's topic: a device speaking for another.
        (topics.telemetry("cam-2"), good.to_bytes(), "device_mismatch"),
        (topics.status("cam-9"), StatusReport(device_id="cam-9", state=DeviceState.ONLINE).to_bytes(), "unknown_device"),
        (f"{topics.prefix}/cam-1/jobs/job-unknown", b'{"kind": "job"}', "schema"),
    ]
    client = _publisher(control_plane.broker_url)
    try:
        for topic, payload, _ in hostile:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        expected: dict[str, int] = {}
        for _, _, reason in hostile:
            expected[reason] = expected.get(reason, 0) + 1
        wait_for(lambda: api.get("/api/v1/ingest/stats").json()["rejected"] == expected, 20,
                 what=f"rejections {expected}")
        # Still alive and still ingesting good reports.
        client.publish(topics.telemetry("cam-1"), good.to_bytes(), qos=1).wait_for_publish(5)
        wait_for(lambda: len(api.get("/api/v1/devices/cam-1/telemetry").json()) == 1, 20, what="the good report")
        # QoS 1 redelivery of the same message id is stored once.
        client.publish(topics.telemetry("cam-1"), good.to_bytes(), qos=1).wait_for_publish(5)
        wait_for(lambda: api.get("/api/v1/ingest/stats").json()["duplicates"] == 1, 20, what="duplicate counted")
        assert len(api.get("/api/v1/devices/cam-1/telemetry").json()) == 1
        assert api.get("/api/v1/health").json()["mqtt_connected"] is True
    finally:
        client.loop_stop()
        client.disconnect()


def test_api_rejects_bad_requests_with_a_message_saying_what_to_fix(control_plane, api) -> None:
    response = api.post("/api/v1/devices", json={"id": "bad/id#"})
    assert response.status_code == 422
    assert "invalid device id" in response.json()["detail"]
    response = api.post("/api/v1/devices", json={"hardware_profile": "x"})
    assert response.status_code == 422 and "id" in response.json()["detail"]
    assert api.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    response = api.post("/api/v1/devices", json={"id": "cam-1"})
    assert response.status_code == 409 and "already exists" in response.json()["detail"]
    response = api.post("/api/v1/deployments", json={"package_id": "nope", "device_ids": ["cam-1"]})
    assert response.status_code == 404 and "nope" in response.json()["detail"]
    response = api.post("/api/v1/deployments", json={"package_id": "x", "device_ids": []})
    assert response.status_code == 422 and "device_ids" in response.json()["detail"]
    response = api.post("/api/v1/deployments", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert api.get("/api/v1/devices/ghost").status_code == 404
