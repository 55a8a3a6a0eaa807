"""One machine on the embedded defaults (SQLite, embedded broker): restarting `edgefleet serve` keeps agents connected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cloud.cli import app
from cloud.core.broker import PORT_FILE, choose_port
from cloud.demo import spawn_agent, stop_processes
from tests.support.services import free_port, wait_for

pytestmark = pytest.mark.integration

DEVICE = "cam-restart"


class Serve:
    """`edgefleet serve` as an operator runs it: its own process, a data directory, nothing else configured."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "serve.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFLEET_")}
        env.update({"EDGEFLEET_DATA_DIR": str(self.data_dir), **extra})
        return env

    def start(self, **extra: str) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from cloud.cli import main; main()", "serve", "--port", str(self.port),
                 "--log-level", "WARNING"], env=self.env(**extra), stdout=log, stderr=log)
        wait_for(lambda: self.healthy() or self.process.poll() is not None, 60, what="serve answering")
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    plane = Serve(tmp_path / "data", free_port())
    yield plane
    plane.stop()


def _telemetry_ids(client: httpx.Client) -> set[str]:
    # A window is known by when the device sent it.
    response = client.get(f"/api/v1/devices/{DEVICE}/telemetry", params={"limit": 1000})
    return {row["sent_at"] for row in response.json()} if response.status_code == 200 else set()


def test_agents_reconnect_after_the_control_plane_restarts_and_follow_a_moved_broker(
        serve: Serve, tmp_path: Path) -> None:
    created = CliRunner().invoke(app, ["token", "create", "--name", "admin", "--role", "admin"],
                                 env={"EDGEFLEET_DATA_DIR": str(serve.data_dir)})
    assert created.exit_code == 0, created.output
    admin = created.stdout.strip()
    serve.start()
    client = httpx.Client(base_url=serve.url, timeout=15, headers={"Authorization": f"Bearer {admin}"})
    state_dir = tmp_path / "device"
    state_dir.mkdir()
    config_path = state_dir / "agent.yaml"
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": DEVICE}).json()["token"]
    subprocess.run([sys.executable, "-m", "agent", "enroll", "--server", serve.url, "--token", token,
                    "--config", str(config_path)], check=True, capture_output=True, timeout=60)
    config = yaml.safe_load(config_path.read_text())
    enrolled_url = config["mqtt_url"]
    config.update({"source": "synthetic:1", "target_fps": 5.0, "telemetry_interval_s": 0.5,
                   "inference_threads": 1, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0})
    agent = spawn_agent(config, config_path, state_dir / "agent.log")

    def agent_log() -> str:
        return (state_dir / "agent.log").read_text(errors="replace")[-3000:]

    try:
        wait_for(lambda: _telemetry_ids(client), 60, what="the agent's first telemetry")

        # 1. Same data directory, nothing else changed: the broker comes back where the agent knows it.
        before = _telemetry_ids(client)
        serve.stop()
        serve.start()
        try:
            wait_for(lambda: _telemetry_ids(client) - before, 60, what="telemetry after the restart")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{agent_log()}") from None
        assert client.get(f"/api/v1/devices/{DEVICE}").json()["mqtt_url"] == enrolled_url

        # 2. The operator moves the broker: the agent asks the API where it went, and remembers it.
        moved_port = free_port()
        moved_url = f"mqtt://127.0.0.1:{moved_port}"
        serve.stop()
        serve.start(EDGEFLEET_EMBEDDED_BROKER_PORT=str(moved_port))
        # Telemetry the old broker delivered just before the stop may still be ingested after the
        # start, so new telemetry is counted only from the moment the agent has taken the new URL.
        try:
            wait_for(lambda: yaml.safe_load(config_path.read_text())["mqtt_url"] == moved_url, 90,
                     what="the agent remembering the moved broker")
            before = _telemetry_ids(client)
            wait_for(lambda: _telemetry_ids(client) - before, 60, what="telemetry after the broker moved")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{agent_log()}") from None
        assert client.get(f"/api/v1/devices/{DEVICE}").json()["mqtt_url"] == moved_url
    finally:
        stop_processes([agent])
        client.close()


def test_a_taken_embedded_broker_port_fails_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        (tmp_path / PORT_FILE).write_text(f"{taken}\n")
        with pytest.raises(RuntimeError, match="EDGEFLEET_EMBEDDED_BROKER_PORT"):
            choose_port(tmp_path, 0)
        with pytest.raises(RuntimeError, match="EDGEFLEET_EMBEDDED_BROKER_PORT"):
            choose_port(tmp_path / "elsewhere", taken)
    assert choose_port(tmp_path, 0) == taken
