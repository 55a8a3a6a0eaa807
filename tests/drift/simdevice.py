"""In-process simulated camera devices for the drift tests.

Each device runs the real device code (``agent.infer.engine.load_model`` for the
model, ``agent.telemetry.drift.DeviceMonitor`` for windows and samples), talks to
the real broker with its own MQTT client, uploads sample JPEGs to the real API
with its own device token, and installs the package a deploy command names.
Time is simulated (one subsampled frame per simulated second), so budgets and
windows are exercised without waiting and without wall-clock assertions.

The world it films is the synthetic scene generator; because the device knows
the true class of every frame it renders, it can answer as the labelling oracle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt

from agent.capture.scenes import SCENE_CLASSES, SceneConditions, render_scene
from agent.contract import (
    DeployCommand,
    DeviceState,
    JobState,
    JobStatusReport,
    PackageManifest,
    SampleReport,
    StatusReport,
    Topics,
    parse_command,
)
from agent.contract.broker_url import parse_broker_url
from agent.contract.drift import DriftReference
from agent.infer.detect import detect
from agent.infer.engine import LoadedModel, load_model
from agent.telemetry.drift import DeviceMonitor, FrameSubsampler
from agent.telemetry.samples import (
    BudgetLimits,
    DriftTriggeredSampler,
    NearDuplicateFilter,
    RandomSampler,
    SampleBudget,
    SampleCollector,
    UncertaintySampler,
)
from tests.support.services import wait_for

LIGHTING = (0.7, 1.0, 1.2)  # the training generator's dim / normal / bright
BASE_NOISE = 3.0
SIZE = 64


@dataclass(frozen=True)
class Shift:
    brightness: float = 1.0
    blur_sigma: float = 0.0


CLEAN = Shift()
DARK_AND_BLURRED = Shift(brightness=0.5, blur_sigma=1.5)


class World:
    """Scenes as a subsampled camera sees them: a new scene, or (``repeat``) the same one again."""

    def __init__(self, seed: int, shift: Shift = CLEAN, repeat: float = 0.2) -> None:
        self.rng = np.random.default_rng(seed)
        self.shift = shift
        self.repeat = repeat
        self._last: tuple[np.ndarray, str] | None = None

    def render(self) -> tuple[np.ndarray, str]:
        label = SCENE_CLASSES[int(self.rng.integers(len(SCENE_CLASSES)))]
        light = LIGHTING[int(self.rng.integers(len(LIGHTING)))]
        conditions = SceneConditions(brightness=light * self.shift.brightness, blur_sigma=self.shift.blur_sigma,
                                     noise_std=BASE_NOISE)
        return render_scene(label, self.rng, size=SIZE, conditions=conditions), label

    def next(self) -> tuple[np.ndarray, str]:
        if self._last is None or self.rng.random() >= self.repeat:
            self._last = self.render()
        return self._last


@dataclass(frozen=True)
class SceneShift:
    """How a detection camera's scenes differ from the training scenes."""

    object_scale: float = 1.0
    class_weights: tuple[float, ...] | None = None


AS_TRAINED = SceneShift()


class DetectionWorld:
    """Synthetic detection scenes (the training generator's lighting and cameras), optionally shifted.

    ``next`` returns the frame and an empty label: detection samples are not labelled here.
    """

    def __init__(self, seed: int, shift: SceneShift = AS_TRAINED, width: int = 200, height: int = 150) -> None:
        from cloud.pipeline.data.synth_detection import CAMERAS
        from cloud.pipeline.data.synth_detection import LIGHTING as SCENE_LIGHTING

        self.rng = np.random.default_rng(seed)
        self.shift = shift
        self.width, self.height = width, height
        self._lighting, self._cameras = tuple(SCENE_LIGHTING), tuple(CAMERAS)

    def next(self) -> tuple[np.ndarray, str]:
        from cloud.pipeline.data.synth_detection import render_detection_scene

        light = self._lighting[int(self.rng.integers(len(self._lighting)))]
        camera = self._cameras[int(self.rng.integers(len(self._cameras)))]
        frame, _ = render_detection_scene(self.rng, width=self.width, height=self.height, lighting=light,
                                          camera=camera, min_size=16.0 * self.shift.object_scale,
                                          max_size=56.0 * self.shift.object_scale,
                                          class_weights=self.shift.class_weights)
        return frame, ""


def labelled_images(seed: int, count: int, shift: Shift = CLEAN) -> tuple[list[np.ndarray], list[str]]:
    world = World(seed, shift, repeat=0.0)
    pairs = [world.render() for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def default_budget() -> BudgetLimits:
    return BudgetLimits(per_minute_count=8, per_hour_count=200, per_day_count=400, per_minute_bytes=48 * 1024,
                        per_hour_bytes=1024 * 1024, per_day_bytes=2 * 1024 * 1024)


@dataclass
class SimDevice:
    device_id: str
    broker_url: str
    topics: Topics
    api_url: str
    token: str
    packages_dir: Path
    world: World | DetectionWorld
    window_frames: int = 40
    budget: BudgetLimits = field(default_factory=default_budget)
    seed: int = 0
    # The agent pipeline (camera) this simulates; several SimDevices with one device_id are one
    # device's cameras.
    pipeline: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def __post_init__(self) -> None:
        self.now_s = 0.0
        self.oracle: dict[str, str] = {}  # sample_id -> true label
        self.commands: queue.Queue[DeployCommand] = queue.Queue()
        self.model: LoadedModel | None = None
        self.monitor: DeviceMonitor | None = None
        self.collector = SampleCollector(
            [RandomSampler(0.2, seed=self.seed), DriftTriggeredSampler(0.3, active_s=900, seed=self.seed + 1),
             UncertaintySampler("margin", margin_below=0.3)],
            SampleBudget(self.budget), dedupe=NearDuplicateFilter(max_hamming=2), max_side=SIZE, jpeg_quality=90,
            # Keep room for the unbiased random stream (the next release's reference comes from it).
            sampler_budgets={"uncertainty": SampleBudget(BudgetLimits(per_minute_count=2)),
                             "drift": SampleBudget(BudgetLimits(per_minute_count=2))})
        self.published = {"drift": 0, "sample": 0}
        self.uploaded_bytes = 0
        address = parse_broker_url(self.broker_url)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{self.device_id}-{uuid.uuid4().hex[:6]}",
                                   protocol=mqtt.MQTTv311)
        self._client.on_message = lambda client, userdata, message: self._on_command(message.payload)
        self._client.on_connect = lambda client, userdata, flags, rc, props: client.subscribe(
            self.topics.commands(self.device_id), qos=1)
        self._client.connect(address.host, address.port, keepalive=30)
        self._client.loop_start()
        self._http = httpx.Client(base_url=self.api_url, timeout=15,
                                  headers={"Authorization": f"Bearer {self.token}"})
        self._pending: list[mqtt.MQTTMessageInfo] = []

    # -- model ---------------------------------------------------------------------
    def install(self, package_id: str, manifest_sha256: str | None = None) -> None:
        directory = self.packages_dir / package_id
        raw = (directory / "manifest.json").read_bytes()
        if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
            raise AssertionError(f"manifest of {package_id} does not match the command")
        manifest = PackageManifest.from_bytes(raw)
        self.model = load_model(manifest, directory, threads=1)
        reference = None
        reference_sha = None
        if manifest.drift_reference_file is not None:
            ref_raw = (directory / manifest.drift_reference_file).read_bytes()
            reference = DriftReference.from_bytes(ref_raw)
            reference_sha = hashlib.sha256(ref_raw).hexdigest()
        self.monitor = DeviceMonitor(device_id=self.device_id, manifest=manifest, reference=reference,
                                     reference_sha256=reference_sha, subsampler=FrameSubsampler(interval_s=1.0),
                                     collector=self.collector, window_frames=self.window_frames, window_s=3600,
                                     pipeline=self.pipeline)
        self._publish(self.topics.status(self.device_id), StatusReport(
            device_id=self.device_id, state=DeviceState.ONLINE, hardware_profile="x86-64-avx2",
            running_model_version=manifest.model_version, running_package_id=manifest.package_id,
            runtime="onnxruntime").to_bytes(), retain=True)

    def _on_command(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.commands.put(parse_command(payload))

    def handle_commands(self) -> list[str]:
        installed = []
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return installed
            if command.device_id != self.device_id:
                continue
            self.install(command.package_id, command.manifest_sha256)
            self._publish(self.topics.job(self.device_id, command.job_id), JobStatusReport(
                device_id=self.device_id, job_id=command.job_id, package_id=command.package_id,
                state=JobState.SUCCEEDED, running_model_version=command.model_version).to_bytes())
            installed.append(command.package_id)

    # -- running -------------------------------------------------------------------
    def run_windows(self, windows: int) -> None:
        assert self.model is not None and self.monitor is not None, "install a package first"
        for _ in range(windows * self.window_frames):
            self.step()

    def step(self) -> None:
        assert self.model is not None and self.monitor is not None
        from agent.preprocess import preprocess

        frame, label = self.world.next()
        manifest = self.model.manifest
        output = self.model.backend.run(preprocess(frame, manifest.preprocessing))
        self.now_s += 1.0
        captured_at = self.started_at + timedelta(seconds=self.now_s)
        if manifest.detection is not None:
            # The device's decoder and thresholds, then the device's drift window and samplers.
            found = detect(output, detection=manifest.detection, labels=manifest.labels,
                           preprocessing=manifest.preprocessing, source_width=frame.shape[1],
                           source_height=frame.shape[0])
            observed = self.monitor.observe_detections(frame, tuple(found), now_s=self.now_s,
                                                       captured_at=captured_at)
        else:
            observed = self.monitor.observe(frame, output[0], now_s=self.now_s,
                                            activation=self.model.artifact.output_activation,
                                            captured_at=captured_at)
        for report in observed.reports:
            self._publish(self.topics.drift(self.device_id), report.to_bytes())
            self.published["drift"] += 1
        for sample in observed.samples:
            assert sample.jpeg is not None
            response = self._http.put(f"/api/v1/devices/{self.device_id}/samples/blobs", content=sample.jpeg,
                                      headers={"content-type": "image/jpeg"})
            response.raise_for_status()
            self.uploaded_bytes += len(sample.jpeg)
            self.oracle[sample.sample_id] = label
            report = sample.to_report(self.device_id, upload="http", model_version=self.model.version,
                                      package_id=self.model.manifest.package_id, pipeline=self.pipeline)
            self._publish(self.topics.samples(self.device_id), report.to_bytes())
            self.published["sample"] += 1

    def publish_sample(self, jpeg: bytes, report: SampleReport) -> None:
        """Upload a sample's JPEG over HTTP and publish its report (``upload="http"``), as the agent does."""
        response = self._http.put(f"/api/v1/devices/{self.device_id}/samples/blobs", content=jpeg,
                                  headers={"content-type": "image/jpeg"})
        response.raise_for_status()
        self.uploaded_bytes += len(jpeg)
        self._publish(self.topics.samples(self.device_id), report.to_bytes())
        self.published["sample"] += 1

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._pending.append(self._client.publish(topic, payload, qos=1, retain=retain))

    def flush(self, timeout_s: float = 30.0) -> None:
        for info in self._pending:
            info.wait_for_publish(timeout=timeout_s)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._client.loop_stop()
        self._client.disconnect()
        self._http.close()


def oracle_labels(devices: list[SimDevice], sample_ids: list[str]) -> dict[str, str]:
    truth: dict[str, str] = {}
    for device in devices:
        truth.update(device.oracle)
    return {sample_id: truth[sample_id] for sample_id in sample_ids if sample_id in truth}


def dump(document: object) -> str:
    return json.dumps(document, indent=1, default=str)[:4000]


def colour_model(path: Path, classes: int) -> Path:
    """A tiny linear model on the mean colour: nearly uniform (uncertain) scores that still vary."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).normal(0, 0.05, size=(3, classes)).astype(np.float32)
    graph = helper.make_graph(
        nodes=[helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
               helper.make_node("MatMul", ["pooled", "weights"], ["logits"])],
        name="colour",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[helper.make_tensor("weights", TensorProto.FLOAT, [3, classes], weights.reshape(-1).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def register_device(plane: Any, device_id: str, hardware_profile: str = "x86-64-avx2") -> str:
    """Register a device with the control plane and return its device token."""
    from sqlmodel import Session

    from cloud.fleet import crud
    from cloud.fleet.tables import DeviceCreate
    from cloud.security.tables import Role
    from cloud.security.tokens import create_api_token

    with Session(plane.engine) as session:
        crud.create_device(session, DeviceCreate(id=device_id, hardware_profile=hardware_profile))
        token, _ = create_api_token(session, name=f"{device_id} device", role=Role.DEVICE, device_id=device_id)
    return token


def stored_drift_windows(plane: Any) -> list[Any]:
    """Every drift window the control plane stored (``DriftWindowRecord`` rows)."""
    from sqlmodel import Session, select

    from cloud.monitor.tables import DriftWindowRecord

    with Session(plane.engine) as session:
        return list(session.exec(select(DriftWindowRecord)))


def open_alert_devices(plane: Any) -> set[str]:
    """The devices with an open drift alert."""
    from sqlmodel import Session, col, select

    from cloud.monitor.tables import DriftAlert

    with Session(plane.engine) as session:
        return {a.device_id for a in session.exec(select(DriftAlert).where(col(DriftAlert.state) == "open"))
                if a.device_id}


def installed_device(plane: Any, device_id: str, package_id: str, *, world: World | DetectionWorld, seed: int,
                     window_frames: int, token: str | None = None, pipeline: str | None = None,
                     hardware_profile: str = "x86-64-avx2") -> SimDevice:
    """A device on the plane's broker and API running ``package_id``.

    Registers ``device_id`` first unless given its token: another camera (``pipeline``) of a
    device already registered shares the device's token.
    """
    device = SimDevice(device_id=device_id, broker_url=plane.broker_url, topics=plane.topics,
                       api_url=plane.base_url, token=token or register_device(plane, device_id, hardware_profile),
                       packages_dir=plane.settings.packages_dir, world=world, window_frames=window_frames,
                       seed=seed, pipeline=pipeline)
    device.install(package_id)
    return device


def start_fleet(plane: Any, worlds: Mapping[str, World | DetectionWorld], package_id: str, *, window_frames: int,
                hardware_profile: str = "x86-64-avx2") -> list[SimDevice]:
    """One registered device per entry of ``worlds``, running ``package_id``; each samples with its position as seed."""
    return [installed_device(plane, device_id, package_id, world=world, seed=index, window_frames=window_frames,
                             hardware_profile=hardware_profile)
            for index, (device_id, world) in enumerate(worlds.items())]


def run_until_stored(plane: Any, fleet: list[SimDevice], windows: int) -> int:
    """Every device of ``fleet`` sends ``windows`` more drift windows; returns, once the plane has stored
    them all, how many the fleet published in total.

    ``fleet`` is every device of the plane: its total is compared with all windows stored.
    """
    before = sum(d.published["drift"] for d in fleet)
    for device in fleet:
        device.run_windows(windows)
        device.flush()
    published = sum(d.published["drift"] for d in fleet)
    assert published == before + windows * len(fleet)
    wait_for(lambda: len(stored_drift_windows(plane)) >= published, 60, what=f"{published} drift windows stored")
    return published


def colour_release(plane: Any, workdir: Path) -> str:
    """Release the colour model (:func:`colour_model`) with a reference from clean scenes; its package id.

    The camera tests' model: its drift reference, not its accuracy, is what they exercise.
    """
    from sqlmodel import Session

    from agent.contract.drift import DEFAULT_WINDOW_FRAMES
    from cloud.governance.retrain import package_release
    from cloud.monitor.reference import build_reference, run_logits
    from cloud.pipeline.train.trainer import DEFAULT_SPEC

    labels = sorted(SCENE_CLASSES)
    workdir.mkdir(parents=True, exist_ok=True)
    onnx = colour_model(workdir / "model.onnx", len(labels))
    images, _ = labelled_images(seed=21, count=400)
    reference = build_reference(images, run_logits(onnx, images, DEFAULT_SPEC), labels, DEFAULT_SPEC,
                                window_frames=DEFAULT_WINDOW_FRAMES, calibration_windows=200)
    with Session(plane.engine) as session:
        return package_release(session, onnx_path=onnx, labels=labels, model_name="colour", dataset_id="ds-none",
                               packages_dir=plane.settings.packages_dir, hardware_profiles=["x86-64-avx2"],
                               reference=reference, spec=DEFAULT_SPEC).id
