"""``edgefleet demo``: the whole loop on embedded defaults, with N agent processes.

Two tasks: ``detection`` (the default: synthetic detection scenes, the grid detector, a video of
scenes with several objects per frame, and a fleet table of objects per class) and
``classification`` (synthetic shapes, the classifier, a fleet table of confidences).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from cloud.core.config import Settings
from cloud.core.timestamps import utc_now
from cloud.fleet import crud
from cloud.fleet.liveness import Liveness
from cloud.fleet.summary import fleet_rows
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.synth_detection import write_detection_dataset
from cloud.pipeline.data.video import (
    DetectionVideoSettings,
    VideoSettings,
    write_detection_video,
    write_scene_video,
)
from cloud.pipeline.presets import DETECTION_QUICKSTART, QUICKSTART, DetectionQuickstartSettings
from cloud.pipeline.quickstart import PipelineResult, detect_train_and_package, train_and_package
from cloud.pipeline.train.detector import DetectorConfig
from cloud.rollout.service import object_counts_by_device
from cloud.security.tables import Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane

DEMO_PROFILE = "x86-64-avx2"
DEMO_BUILD_PROFILES = [DEMO_PROFILE, "x86-64-avx512-vnni"]
TASKS = ("detection", "classification")


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def spawn_agent(config: dict[str, object], config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start one ``edgefleet-agent run`` process with ``config``; its log goes to ``log_path``."""
    config_path.write_text(yaml.safe_dump(config))
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def enroll_agent(client: httpx.Client, base_url: str, device_id: str, state_dir: Path) -> dict[str, object]:
    """Enroll a device as an operator would: a one-time token, then `edgefleet-agent enroll` on the device.

    Returns the settings enrollment wrote (certificate, TUF root, director key paths).
    """
    response = client.post("/api/v1/enrollment-tokens", json={"device_id": device_id, "hardware_profile": DEMO_PROFILE})
    response.raise_for_status()
    config_path = state_dir / "agent.yaml"
    subprocess.run([sys.executable, "-m", "agent", "enroll", "--server", base_url, "--token", response.json()["token"],
                    "--config", str(config_path), "--state-dir", str(state_dir)],
                   check=True, capture_output=True, timeout=60)
    enrolled = yaml.safe_load(config_path.read_text())
    assert isinstance(enrolled, dict)
    return enrolled


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo ended with; ``line`` is the summary it prints last."""

    task: str
    devices: int
    reporting: int
    model_version: str
    # Detection: objects per class each device reported after the rollout, by device id.
    object_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def line(self) -> str:
        return (f"demo: devices={self.devices} reporting={self.reporting} model={self.model_version} "
                f"task={self.task}")


def _model_and_video(console: Console, *, data_root: Path, data_note: str, write_data: Callable[[Path], object],
                     train_note: str | None, train: Callable[[Path], PipelineResult], metric: str,
                     video: Path, write_video: Callable[[Path], object]) -> tuple[PipelineResult, Path]:
    """The steps both tasks take: the dataset (kept from an earlier run), train and package, the camera video.

    A rerun in the same workdir reuses the dataset and the video, so only training repeats.
    """
    if not (data_root / "metadata.csv").exists():
        console.print(f"[bold]data[/] {data_note}")
        write_data(data_root)
    if train_note is not None:
        console.print(f"[bold]train[/] {train_note}")
    result = train(data_root)
    console.print(f"[bold]model[/] {result.model_version} test {metric} {result.accuracy:.3f}; "
                  f"package {result.package_id}")
    if not video.exists():
        write_video(video)
    return result, video


def _classification_model(plane: ControlPlane, workdir: Path, console: Console) -> tuple[PipelineResult, Path]:
    """Synthetic shapes → the classifier, packaged; and a video of scenes like its training images."""
    settings = plane.settings
    return _model_and_video(
        console, data_root=workdir / "data" / "shapes", data_note="generating a synthetic scene dataset (4 classes)",
        write_data=lambda root: write_synthetic_dataset(root, images_per_class=QUICKSTART.images_per_class,
                                                        size=QUICKSTART.image_size, seed=QUICKSTART.dataset_seed),
        train_note=None,
        train=lambda root: train_and_package(plane.engine, data_root=root, models_dir=settings.models_dir,
                                             packages_dir=settings.packages_dir,
                                             hardware_profiles=DEMO_BUILD_PROFILES),
        metric="accuracy",
        # Scenes like the training images (`edgefleet data video`), so drift stays quiet on every camera.
        video=workdir / "camera.avi",
        write_video=lambda path: write_scene_video(path, VideoSettings(seconds=30.0, fps=15.0, seed=7)))


def _detection_model(plane: ControlPlane, workdir: Path, console: Console,
                     preset: DetectionQuickstartSettings) -> tuple[PipelineResult, Path]:
    """Synthetic detection scenes → the grid detector, mAP-gated and packaged; and a video of such scenes."""
    settings = plane.settings
    return _model_and_video(
        console,
        # One directory per preset: a smaller one (tests) never reuses the default's frames, nor the reverse.
        data_root=workdir / "data" / f"scenes-{preset.images}-{preset.dataset_seed}",
        data_note=f"generating {preset.images} synthetic detection scenes (1-4 circles, squares, triangles per frame)",
        write_data=lambda root: write_detection_dataset(root, images=preset.images, seed=preset.dataset_seed),
        train_note=f"grid detector, width {preset.width}, {preset.epochs} epochs",
        train=lambda root: detect_train_and_package(
            plane.engine, data_root=root, models_dir=settings.models_dir, packages_dir=settings.packages_dir,
            hardware_profiles=DEMO_BUILD_PROFILES,
            config=DetectorConfig(epochs=preset.epochs, width=preset.width, batch_size=preset.batch_size,
                                  seed=preset.seed)),
        metric="mAP@0.5",
        # Scenes of the same generator, lighting and cameras (seed apart from the dataset's): what the detector
        # learned.
        video=workdir / "scenes.avi",
        write_video=lambda path: write_detection_video(path, DetectionVideoSettings(seconds=30.0, fps=15.0, seed=7)))


def _fleet_table(plane: ControlPlane, task: str, model_version: str,
                 object_counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="fleet")
    with Session(plane.engine) as session:
        rows = fleet_rows(session, Liveness.from_settings(plane.settings))
        labels = crud.get_model_version(session, model_version).labels
    columns = ["device", "model version", "fps", "p95 ms"]
    columns += [f"{label}s" for label in labels] if task == "detection" else ["mean confidence"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [str(row["device_id"]), str(row["model_version"]),
                 f"{row['fps']:.1f}" if row["fps"] is not None else "-",
                 f"{row['p95_latency_ms']:.2f}" if row["p95_latency_ms"] is not None else "-"]
        if task == "detection":
            counts = object_counts.get(str(row["device_id"]), {})
            cells += [str(counts.get(label, 0)) for label in labels]
        else:
            cells.append(f"{row['mean_confidence']:.3f}" if row["mean_confidence"] is not None else "-")
        table.add_row(*cells)
    return table


def run_demo(*, devices: int, seconds: float, workdir: Path, console: Console, task: str = "detection",
             detection_preset: DetectionQuickstartSettings = DETECTION_QUICKSTART) -> DemoOutcome:
    """Run the demo for ``task`` (``detection`` or ``classification``); ``seconds`` of inference after the rollout.

    ``detection_preset`` sets the detection dataset and training (tests pass a smaller one).

    Raises:
        ValueError: an unknown task.
        PipelineInputError: the trained model or every artifact was rejected by its gates.
        TimeoutError: agents did not come online or finish installing in time.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose {' or '.join(TASKS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=workdir, api_port=0)
    plane = ControlPlane(settings)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        plane.start()
        base_url = plane.serve_http_in_thread()
        console.print(f"[bold]control plane[/] {base_url}  broker {plane.broker_url}  "
                      f"database {settings.resolved_database_url}")
        result, video = (_detection_model(plane, workdir, console, detection_preset) if task == "detection"
                         else _classification_model(plane, workdir, console))
        # Every API call needs a token: the demo makes an admin one and shows how to use it.
        with Session(plane.engine) as session:
            admin_token, _ = create_api_token(session, name="demo admin", role=Role.ADMIN)
        console.print(f"[bold]api[/] admin token {admin_token}\n"
                      f"  curl -H 'Authorization: Bearer {admin_token}' {base_url}/api/v1/fleet\n"
                      f"  (more tokens: edgefleet token create --name NAME --role viewer|operator|admin)\n"
                      f"  dashboard while the demo runs: {base_url}/ui (log in with the token)")
        client = httpx.Client(base_url=base_url, timeout=10, headers={"Authorization": f"Bearer {admin_token}"})
        device_ids = [f"cam-{i:02d}" for i in range(1, devices + 1)]
        for device_id in device_ids:
            response = client.post("/api/v1/devices", json={"id": device_id, "hardware_profile": DEMO_PROFILE})
            if response.status_code not in (201, 409):
                response.raise_for_status()
            state_dir = workdir / "devices" / device_id
            state_dir.mkdir(parents=True, exist_ok=True)
            agents.append(spawn_agent({
                **enroll_agent(client, base_url, device_id, state_dir),
                "device_id": device_id, "mqtt_url": plane.broker_url, "topic_prefix": settings.topic_prefix,
                "api_url": base_url, "state_dir": str(state_dir), "hardware_profile": DEMO_PROFILE,
                "source": str(video), "target_fps": 15.0, "telemetry_interval_s": 2.0,
            }, state_dir / "agent.yaml", state_dir / "agent.log"))
        console.print(f"[bold]fleet[/] started {devices} agent processes")

        def all_online() -> bool:
            return all(d["online"] for d in client.get("/api/v1/devices").json())

        _wait(all_online, 60, "all agents to come online")
        deployment = client.post("/api/v1/deployments",
                                 json={"package_id": result.package_id, "device_ids": device_ids}).json()
        console.print(f"[bold]deployment[/] {deployment['id']} → {devices} devices")
        _wait(lambda: client.get(f"/api/v1/deployments/{deployment['id']}").json()["state"] != "in_progress",
              120, "every device to finish installing")
        state = client.get(f"/api/v1/deployments/{deployment['id']}").json()["state"]
        console.print(f"[bold]deployment[/] {state}; running inference for {seconds:.0f}s")
        inference_started = utc_now()
        time.sleep(seconds)

        with Session(plane.engine) as session:
            reporting = crud.devices_reporting(session, result.model_version)
            # Only this run's windows of this model: a reused workdir keeps earlier runs' telemetry.
            object_counts = (object_counts_by_device(session, inference_started, result.model_version)
                             if task == "detection" else {})
        console.print(_fleet_table(plane, task, result.model_version, object_counts))
        return DemoOutcome(task=task, devices=devices, reporting=reporting, model_version=result.model_version,
                           object_counts=object_counts)
    finally:
        stop_processes(agents)
        plane.stop()
