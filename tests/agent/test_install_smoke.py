"""Smoke: one real agent installs a package through TUF and serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim

pytestmark = pytest.mark.integration


def test_install_and_serve(cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path) -> None:
    release = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    agent = AgentProcess(cloud.agent_config("cam-1", tmp_path / "cam-1"))
    agents.append(agent.start())
    cloud.wait_online("cam-1")
    job = cloud.deploy("cam-1", release)
    final = cloud.wait_final(job, 60)
    assert final.state == "succeeded", (final, agent.log[-3000:])
    cloud.wait_serving("cam-1", "1.0.0")
