"""One real agent installs a package through TUF, picks its runtime by measurement,
serves it, and reports the choice and the measurements."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.contract import ModelArtifact
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim

pytestmark = pytest.mark.integration


def test_install_and_serve(cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path) -> None:
    # The same model for both runtimes the x86-64-avx2 profile names at fp32.
    openvino = ModelArtifact(file="model.onnx", runtime="openvino", precision="fp32")
    release = cloud.release("1.0.0", [(models["v1"], ORT_FP32), (models["v1"], openvino)])
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    job = cloud.deploy(device_id, release)
    final = cloud.wait_final(job, 60)
    assert final.state == "succeeded", (final, agent.log[-3000:])
    cloud.wait_serving(device_id, "1.0.0")
    measured = {(m.runtime, m.accepted) for m in final.runtime_measurements}
    assert measured == {("onnxruntime", True), ("openvino", True)}
    assert all(m.median_latency_ms and m.max_abs_error is not None for m in final.runtime_measurements)
    fastest = min(final.runtime_measurements, key=lambda m: m.median_latency_ms or 1e9)
    assert final.runtime is not None and final.runtime.startswith(f"{fastest.runtime}/fp32/")
    status = cloud.wait_online(device_id)
    assert status.install_state in ("idle", "commit")
