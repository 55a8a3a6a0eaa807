"""Helpers shared by the operator-experience tests (tests/ui, tests/cli, tests/docs).

Releases are built from tiny constant ONNX models (no training), and reports are
published with the contract's own models, so the control plane ingests exactly
what a device would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlmodel import Session

from agent.contract import DeviceState, StatusReport, TelemetryReport, Topics
from agent.contract.broker_url import parse_broker_url
from cloud.pipeline.quickstart import PipelineResult, register_and_package
from cloud.security.tables import Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane
from tests.support.models import constant_model
from tests.support.services import wait_for

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


@contextmanager
def acknowledged_publisher(plane: ControlPlane, name: str) -> Iterator[Callable[[str, str | bytes], None]]:
    """``publish(topic, payload)`` at QoS 1 on the plane's broker; leaving the block waits until the broker
    has acknowledged every message, so a test can then wait for what the plane stores."""
    address = parse_broker_url(plane.broker_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ef-test-{name}-{time.monotonic_ns()}")
    client.connect(address.host, address.port)
    client.loop_start()
    infos: list[mqtt.MQTTMessageInfo] = []
    try:
        yield lambda topic, payload: infos.append(client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def publish_reports(plane: ControlPlane, device_id: str, *, model_version: str | None, windows: int = 3,
                    profile: str = PROFILES[0]) -> None:
    """Publish an online status and ``windows`` telemetry windows for ``device_id`` (QoS 1, acknowledged)."""
    topics = Topics(plane.settings.topic_prefix)
    with acknowledged_publisher(plane, device_id) as publish:
        status = StatusReport(device_id=device_id, state=DeviceState.ONLINE, agent_version="test",
                              hardware_profile=profile, running_model_version=model_version,
                              runtime="onnxruntime" if model_version else None)
        publish(topics.status(device_id), status.model_dump_json())
        for index in range(windows):
            report = TelemetryReport(device_id=device_id, model_version=model_version, runtime="onnxruntime",
                                     window_s=1.0, frames=20 + index, fps=20.0 + index, p50_latency_ms=3.0,
                                     p95_latency_ms=4.0 + index / 10, mean_confidence=0.9,
                                     class_counts={"circle": 20 + index}, cpu_percent=12.0, memory_mb=150.0)
            publish(topics.telemetry(device_id), report.model_dump_json())


def publish_camera_windows(plane: ControlPlane, device_id: str, *, package_id: str, model_version: str,
                           windows: dict[str, int], detecting: frozenset[str] = frozenset(),
                           profile: str = PROFILES[0]) -> None:
    """Publish what an agent running several cameras sends: a status naming its cameras, and per camera
    (``windows``: camera -> number of windows) telemetry with its pipeline name, capture-to-result
    latency and stale frames. Cameras in ``detecting`` report a detection part (objects per class)."""
    from agent.contract import CameraSetStatus, CameraSpec, CameraState, DetectionWindow, FrameTotals
    from agent.contract.messages import CameraReport

    topics = Topics(plane.settings.topic_prefix)
    with acknowledged_publisher(plane, device_id) as publish:
        cameras = CameraSetStatus(cameras=[
            CameraState(spec=CameraSpec(name=name, source=f"synthetic:{i}"), frames_processed=100,
                        serving_package_id=package_id) for i, name in enumerate(sorted(windows))])
        status = StatusReport(device_id=device_id, state=DeviceState.ONLINE, agent_version="test",
                              hardware_profile=profile, running_model_version=model_version,
                              running_package_id=package_id, runtime="onnxruntime", cameras=cameras)
        publish(topics.status(device_id), status.model_dump_json())
        seq = 0
        for offset, (camera, count) in enumerate(sorted(windows.items())):
            for index in range(count):
                seq += 1
                frames = 10 * (offset + 1) + index
                detection = DetectionWindow(frames=frames, object_counts={"person": 2 * frames, "car": frames},
                                            mean_box_score=0.8, boxes_per_frame=3.0) if camera in detecting else None
                report = TelemetryReport(
                    device_id=device_id, model_version=model_version, package_id=package_id, runtime="onnxruntime",
                    pipeline=camera, report_seq=seq, window_s=2.0, frames=frames, fps=frames / 2.0,
                    p50_latency_ms=3.0, p95_latency_ms=5.0 + offset, inference_errors=offset,
                    mean_confidence=None if detection else 0.8 + offset / 10,
                    class_counts={} if detection else {"circle": frames},
                    detection=detection, frame_totals=FrameTotals(
                        captured=100 * (index + 1), processed=90 * (index + 1),
                        camera=CameraReport(stale_frames_dropped=offset * 7 + index,
                                            capture_to_result_p50_ms=8.0, capture_to_result_p95_ms=12.0 + offset)))
                publish(topics.telemetry(device_id), report.model_dump_json())


class Fleet:
    """A simulated fleet on the real broker: two hardware profiles, all running release ``v1``."""

    def __init__(self, plane: Any, api: Any, workdir: Path, per_profile: tuple[int, int] = (4, 2)) -> None:
        from tools.fleet_sim import FleetSimulator, ModelBehaviour

        self.plane = plane
        self.v1 = make_release(plane, workdir / "v1", value=0.5)
        self.v2 = make_release(plane, workdir / "v2", value=0.25)
        self.device_ids: dict[str, list[str]] = {}
        self.sims = []
        for profile, count in zip(PROFILES, per_profile, strict=True):
            ids = [f"{profile.split('-')[0]}-{i:02d}" for i in range(1, count + 1)]
            self.device_ids[profile] = ids
            for device_id in ids:
                response = api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": profile})
                assert response.status_code == 201, response.text
            # Both versions behave alike: a healthy release, so gates pass on evidence.
            self.sims.append(FleetSimulator(
                plane.broker_url, ids, topic_prefix=plane.settings.topic_prefix, telemetry_interval_s=0.5,
                hardware_profile=profile, initial_model_version=self.v1.model_version,
                initial_package_id=self.v1.package_id, default_behaviour=ModelBehaviour(fps=40.0),
                seed=len(self.sims)))
        for sim in self.sims:
            sim.start(timeout_s=60)
        wait_for(lambda: all(d["online"] and d["running_model_version"] == self.v1.model_version
                             for d in api.get("/api/v1/devices").json()), 60, what="the simulated fleet online on v1")

    @property
    def all_ids(self) -> list[str]:
        return sorted(i for ids in self.device_ids.values() for i in ids)

    def sim_for(self, device_id: str) -> Any:
        return next(s for s in self.sims if device_id in s.device_ids)

    def stop(self) -> None:
        for sim in self.sims:
            sim.stop()


def page_csrf(client: Any, path: str) -> str:
    """The CSRF value the dashboard page at ``path`` puts in its forms."""
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, f"{path} has no form with a CSRF value"
    return found.group(1)


def dashboard_login(client: Any, token: str, next_path: str = "/ui/fleet") -> Any:
    """Log ``client`` (an httpx.Client on the control plane) in to the dashboard, as a browser does."""
    return client.post("/ui/login", data={"token": token, "next": next_path, "csrf": page_csrf(client, "/ui/login")})
