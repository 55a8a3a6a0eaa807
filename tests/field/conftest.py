"""A control plane on this host and real agents in their own network namespaces.

The broker (a private Mosquitto) and the control plane's HTTP server listen on every
address of this host; agents reach them through their link's host address. Each
agent's link can then lose packets, be slowed to a radio's bandwidth, or be cut.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cloud.core.config import Settings
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.support.fleet import TEST_PROFILE, enroll_agent
from tests.support.netns import DeviceLink, netns_unavailable
from tests.support.services import REQUIRE_SERVICES, MosquittoProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def namespaces_usable() -> None:
    reason = netns_unavailable()
    if reason is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"EDGEFLEET_REQUIRE_SERVICES=1 but network namespaces are unusable: {reason}")
    pytest.skip(f"network namespaces are unusable here: {reason}")


@dataclass
class FieldAgent:
    device_id: str
    link: DeviceLink
    state_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        path = self.state_dir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report_seq(self) -> int:
        """How many telemetry windows this agent has numbered so far (its outbox's counter)."""
        with sqlite3.connect(f"file:{self.state_dir / 'outbox.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM counters WHERE name = 'report_seq'").fetchone()
        return int(row[0]) if row else 0


@dataclass
class Field:
    """The control plane, its broker, and agents behind impaired links."""

    plane: ControlPlane
    broker: MosquittoProcess
    hub: DeviceLink  # its host address is the one every device uses to reach this host
    workdir: Path
    api: httpx.Client
    agents: list[FieldAgent] = field(default_factory=list)

    @property
    def broker_url(self) -> str:
        return f"mqtt://{self.hub.host_address}:{self.broker.port}"

    def start_agent(self, device_id: str, *, link: DeviceLink | None = None, **extra: Any) -> FieldAgent:
        """Enroll ``device_id`` and run a real agent process inside its own namespace."""
        link = link or DeviceLink()
        if link.name not in _existing_namespaces():
            link.create()
        state_dir = self.workdir / "devices" / device_id
        state_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            # The control plane listens on the namespace's veth address, not loopback: plain http
            # to it is allowed explicitly (the token's pins still guard the trust anchors).
            **enroll_agent(self.plane, state_dir, device_id, profile=TEST_PROFILE, allow_http=True),
            "device_id": device_id, "mqtt_url": self.broker_url, "topic_prefix": self.plane.settings.topic_prefix,
            "api_url": self.plane.base_url, "state_dir": str(state_dir), "hardware_profile": TEST_PROFILE,
            "source": "synthetic:1", "target_fps": 10.0, "telemetry_interval_s": 1.0, "inference_threads": 1,
            **extra,
        }
        config_path = state_dir / "agent.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with (state_dir / "agent.log").open("ab") as log_file:
            process = subprocess.Popen(
                link.command([sys.executable, "-m", "agent", "run", "--config", str(config_path)]),
                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        agent = FieldAgent(device_id, link, state_dir, process)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents:
            try:
                agent.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait(timeout=5)
            agent.link.destroy()


def _existing_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


@pytest.fixture
def field_plane(namespaces_usable: None, tmp_path: Path, database_url: str, topic_prefix: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Field]:
    # Short engine ticks keep the rollout quick; correctness never depends on them.
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_TICK_S", "0.2")
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_ENGINE_ENABLED", "1")
    hub = DeviceLink()
    hub.create()
    broker_port = free_port()
    (tmp_path / "mosquitto").mkdir()
    broker = MosquittoProcess([f"listener {broker_port} 0.0.0.0", "allow_anonymous true"], port=broker_port,
                              workdir=tmp_path / "mosquitto").start()
    api_port = free_port()
    settings = Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=broker.url,
                        topic_prefix=topic_prefix, api_host="0.0.0.0", api_port=api_port,
                        public_url=f"http://{hub.host_address}:{api_port}")
    plane = ControlPlane(settings)
    plane.start()
    plane.serve_http_in_thread()
    api = httpx.Client(base_url=plane.base_url, timeout=15, headers=control_plane_admin_headers(plane))
    rig = Field(plane, broker, hub, tmp_path, api)
    try:
        yield rig
    finally:
        rig.stop()
        api.close()
        plane.stop()
        broker.stop()
        hub.destroy()
