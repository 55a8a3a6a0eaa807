"""Malformed and oversized drift and sample messages are rejected and counted.

First the contract alone (table-driven, no broker), then the running control plane
on the real broker and database: every hostile message is counted by reason, a
redelivered window is a duplicate, good reports still get through, and the HTTP
upload refuses oversized, non-JPEG and misaddressed images.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import ContractError, DriftReport, ReportKind, SampleReport, parse_report
from agent.contract.broker_url import parse_broker_url
from agent.contract.drift import encode_histograms
from agent.contract.messages import MAX_DRIFT_REPORT_BYTES, MAX_SAMPLE_REPORT_BYTES
from tests.support.services import wait_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)
JPEG = base64.b64decode(  # a valid 1x1 JPEG
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0"
    "Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8A"
    "KP/Z")


def drift(device_id: str = "cam-1", **changes: Any) -> dict[str, Any]:
    counts = np.zeros((3, 32), dtype=np.int64)
    counts[:, 5] = 40
    report = DriftReport(device_id=device_id, window_seq=0, window_started_at=NOW, window_ended_at=NOW,
                         frames_seen=400, frames=40, features=["luma_mean", "luma_std", "top_score"],
                         histograms=encode_histograms(counts), means=[80.0, 20.0, 0.9], stds=[5.0, 3.0, 0.1],
                         class_counts=[10, 10, 10, 10])
    return {**report.model_dump(mode="json"), **changes}


def sample(device_id: str = "cam-1", **changes: Any) -> dict[str, Any]:
    report = SampleReport(device_id=device_id, sample_id="s" * 12, sampler="uncertainty", captured_at=NOW,
                          predicted_label="circle", confidence=0.4, features={"luma_mean": 80.0},
                          upload="inline", image_sha256=hashlib.sha256(JPEG).hexdigest(), image_bytes=len(JPEG),
                          image_b64=base64.b64encode(JPEG).decode())
    return {**report.model_dump(mode="json"), **changes}


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


HOSTILE: list[tuple[str, ReportKind, bytes, str]] = [
    ("drift not json", ReportKind.DRIFT, b"\x00\xffnope", "malformed"),
    ("drift oversized (under the generic cap)", ReportKind.DRIFT,
     raw(drift(padding="x" * MAX_DRIFT_REPORT_BYTES)), "oversized"),
    ("drift histogram of the wrong length", ReportKind.DRIFT,
     raw(drift(histograms=base64.b64encode(b"\x00" * 10).decode())), "schema"),
    ("drift histogram not base64", ReportKind.DRIFT, raw(drift(histograms="%%%")), "schema"),
    ("drift counts more frames than it has", ReportKind.DRIFT, raw(drift(frames=2)), "schema"),
    ("drift moments do not match features", ReportKind.DRIFT, raw(drift(means=[1.0])), "schema"),
    ("drift unknown field", ReportKind.DRIFT, raw(drift(extra_field=1)), "schema"),
    ("drift for another device", ReportKind.DRIFT, raw(drift(device_id="cam-2")), "device_mismatch"),
    ("sample oversized", ReportKind.SAMPLES, raw(sample(reason="x" * MAX_SAMPLE_REPORT_BYTES)), "oversized"),
    ("sample image does not match its hash", ReportKind.SAMPLES, raw(sample(image_sha256="0" * 64)), "schema"),
    ("stats-only sample with an image", ReportKind.SAMPLES, raw(sample(stats_only=True)), "schema"),
    ("inline sample without its image", ReportKind.SAMPLES, raw(sample(image_b64=None)), "schema"),
    ("sample with an unknown sampler", ReportKind.SAMPLES, raw(sample(sampler="everything")), "schema"),
    ("sample confidence out of range", ReportKind.SAMPLES, raw(sample(confidence=3.0)), "schema"),
]


@pytest.mark.parametrize(("name", "kind", "payload", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_contract_rejects(name: str, kind: ReportKind, payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_report(kind, payload, "cam-1")
    assert caught.value.reason == reason, str(caught.value)


def test_contract_accepts_the_good_ones() -> None:
    assert isinstance(parse_report(ReportKind.DRIFT, raw(drift()), "cam-1"), DriftReport)
    assert isinstance(parse_report(ReportKind.SAMPLES, raw(sample()), "cam-1"), SampleReport)


@pytest.mark.integration
def test_control_plane_rejects_counts_and_survives(control_plane, api) -> None:
    assert api.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    topics = control_plane.topics
    address = parse_broker_url(control_plane.broker_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-drift-client")
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        expected: dict[str, int] = {}
        for _, kind, payload, reason in HOSTILE:
            topic = topics.drift("cam-1") if kind == ReportKind.DRIFT else topics.samples("cam-1")
            client.publish(topic, payload, qos=1).wait_for_publish(5)
            expected[reason] = expected.get(reason, 0) + 1
        # Valid on the wire, refused by the monitor: an HTTP upload that never happened.
        missing = sample(sample_id="m" * 12, upload="http", image_b64=None)
        client.publish(topics.samples("cam-1"), raw(missing), qos=1).wait_for_publish(5)
        expected["missing_upload"] = 1
        wait_for(lambda: api.get("/api/v1/ingest/stats").json()["rejected"] == expected, 30,
                 what=f"rejections {expected}")

        good_window = raw(drift())
        for _ in range(2):  # a QoS 1 redelivery: stored once
            client.publish(topics.drift("cam-1"), good_window, qos=1).wait_for_publish(5)
        client.publish(topics.samples("cam-1"), raw(sample()), qos=1).wait_for_publish(5)
        wait_for(lambda: len(api.get("/api/v1/drift/devices/cam-1/windows").json()) == 1
                 and len(api.get("/api/v1/samples").json()) == 1, 30, what="the good window and sample")
        window = api.get("/api/v1/drift/devices/cam-1/windows").json()[0]
        assert window["tested"] is False and "reference" in window["untested_reason"]
        stored = api.get("/api/v1/samples").json()[0]
        assert api.get(f"/api/v1/samples/{stored['sample_id']}/image").content == JPEG
        assert api.get("/api/v1/ingest/stats").json()["rejected"] == expected
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.integration
def test_sample_upload_refuses_oversized_non_jpeg_and_other_devices(control_plane, api) -> None:
    from sqlmodel import Session

    from cloud.security.tables import Role
    from cloud.security.tokens import create_api_token

    for device_id in ("cam-1", "cam-2"):
        assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
    with Session(control_plane.engine) as session:
        token, _ = create_api_token(session, name="cam-1", role=Role.DEVICE, device_id="cam-1")
    device = {"Authorization": f"Bearer {token}"}
    url = control_plane.base_url + "/api/v1/devices/{}/samples/blobs"
    import httpx

    ok = httpx.put(url.format("cam-1"), content=JPEG, headers=device)
    assert ok.status_code == 201 and ok.json()["sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert httpx.put(url.format("cam-2"), content=JPEG, headers=device).status_code == 403
    assert httpx.put(url.format("cam-1"), content=b"GIF89a", headers=device).status_code == 415
    huge = httpx.put(url.format("cam-1"), content=b"\xff\xd8" + b"\x00" * (300 * 1024), headers=device)
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]
    assert httpx.put(url.format("cam-1"), content=JPEG).status_code == 401
    # A device token reaches nothing else of the monitoring API.
    assert httpx.get(control_plane.base_url + "/api/v1/samples", headers=device).status_code == 403
