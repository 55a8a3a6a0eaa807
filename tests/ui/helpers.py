"""Helpers shared by the operator-experience tests (tests/ui, tests/cli, tests/docs).

Releases are built from tiny constant ONNX models (no training), and reports are
published with the contract's own models, so the control plane ingests exactly
what a device would send.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlmodel import Session

from agent.contract import DeviceState, StatusReport, TelemetryReport, Topics
from agent.contract.broker_url import parse_broker_url
from cloud.pipeline.quickstart import PipelineResult, register_and_package
from cloud.security.models import Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane
from tests.support.models import constant_model

LABELS = ["circle", "square", "triangle", "background"]
PROFILES = ("x86-64-avx2", "rpi5-arm64")


def make_token(plane: ControlPlane, role: Role, name: str | None = None) -> str:
    with Session(plane.engine) as session:
        token, _ = create_api_token(session, name=name or f"{role.value} (tests)", role=role)
    return token


def make_release(plane: ControlPlane, workdir: Path, *, name: str = "shapes", value: float = 0.5,
                 profiles: tuple[str, ...] = PROFILES, metrics: dict[str, object] | None = None) -> PipelineResult:
    """Register and package a constant model as the next version of ``name``."""
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = constant_model(workdir / f"{name}-{value}-{time.monotonic_ns()}.onnx", len(LABELS), value)
    return register_and_package(
        plane.engine, onnx_path=onnx_path, labels=LABELS, model_name=name, dataset_id="ds-" + "0" * 12,
        packages_dir=plane.settings.packages_dir, hardware_profiles=list(profiles),
        metrics=metrics or {"accuracy": 0.91, "per_slice": {"dark": {"accuracy": 0.84, "count": 120},
                                                             "bright": {"accuracy": 0.95, "count": 130}}},
    )


def publish_reports(plane: ControlPlane, device_id: str, *, model_version: str | None, windows: int = 3,
                    profile: str = PROFILES[0]) -> None:
    """Publish an online status and ``windows`` telemetry windows for ``device_id`` (QoS 1, acknowledged)."""
    address = parse_broker_url(plane.broker_url)
    topics = Topics(plane.settings.topic_prefix)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ef-test-{device_id}-{time.monotonic_ns()}")
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        status = StatusReport(device_id=device_id, state=DeviceState.ONLINE, agent_version="test",
                              hardware_profile=profile, running_model_version=model_version,
                              runtime="onnxruntime" if model_version else None)
        infos = [client.publish(topics.status(device_id), status.model_dump_json(), qos=1, retain=False)]
        for index in range(windows):
            report = TelemetryReport(device_id=device_id, model_version=model_version, runtime="onnxruntime",
                                     window_s=1.0, frames=20 + index, fps=20.0 + index, p50_latency_ms=3.0,
                                     p95_latency_ms=4.0 + index / 10, mean_confidence=0.9,
                                     class_counts={"circle": 20 + index}, cpu_percent=12.0, memory_mb=150.0)
            infos.append(client.publish(topics.telemetry(device_id), report.model_dump_json(), qos=1))
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
