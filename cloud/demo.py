"""``edgefleet demo``: the whole loop on embedded defaults, with N agent processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from cloud.core.config import Settings
from cloud.fleet import crud
from cloud.fleet.liveness import Liveness
from cloud.fleet.summary import fleet_rows
from cloud.pipeline.data.synth import write_synthetic_dataset
from cloud.pipeline.data.video import VideoSettings, write_scene_video
from cloud.pipeline.presets import QUICKSTART
from cloud.pipeline.quickstart import train_and_package
from cloud.security.tables import Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane

DEMO_PROFILE = "x86-64-avx2"


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


def run_demo(*, devices: int, seconds: float, workdir: Path, console: Console) -> str:
    """Run the demo; return the summary line."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=workdir, api_port=0)
    plane = ControlPlane(settings)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        plane.start()
        base_url = plane.serve_http_in_thread()
        console.print(f"[bold]control plane[/] {base_url}  broker {plane.broker_url}  "
                      f"database {settings.resolved_database_url}")

        data_root = workdir / "data" / "shapes"
        if not (data_root / "metadata.csv").exists():
            console.print("[bold]data[/] generating a synthetic scene dataset (4 classes)")
            write_synthetic_dataset(data_root, images_per_class=QUICKSTART.images_per_class,
                                    size=QUICKSTART.image_size, seed=QUICKSTART.dataset_seed)
        result = train_and_package(plane.engine, data_root=data_root, models_dir=settings.models_dir,
                                   packages_dir=settings.packages_dir,
                                   hardware_profiles=[DEMO_PROFILE, "x86-64-avx512-vnni"])
        console.print(f"[bold]model[/] {result.model_version} test accuracy {result.accuracy:.3f}; "
                      f"package {result.package_id}")

        # Scenes like the training images (`edgefleet data video`), so drift stays quiet on every camera.
        video = workdir / "camera.avi"
        if not video.exists():
            write_scene_video(video, VideoSettings(seconds=30.0, fps=15.0, seed=7))

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
        time.sleep(seconds)

        table = Table(title="fleet")
        for column in ("device", "model version", "fps", "p95 ms", "mean confidence"):
            table.add_column(column)
        with Session(plane.engine) as session:
            for row in fleet_rows(session, Liveness.from_settings(settings)):
                table.add_row(str(row["device_id"]), str(row["model_version"]),
                              f"{row['fps']:.1f}" if row["fps"] is not None else "-",
                              f"{row['p95_latency_ms']:.2f}" if row["p95_latency_ms"] is not None else "-",
                              f"{row['mean_confidence']:.3f}" if row["mean_confidence"] is not None else "-")
            reporting = crud.devices_reporting(session, result.model_version)
        console.print(table)
        return f"demo: devices={devices} reporting={reporting} model={result.model_version}"
    finally:
        stop_processes(agents)
        plane.stop()
