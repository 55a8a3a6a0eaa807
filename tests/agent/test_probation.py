"""Probation on real agents: a NaN model, a model with 25x the work and a model whose
confidence collapsed are rolled back locally.

All pass their golden self-test (the NaN model is finite on the all-zero golden
input), so only the live-feed probation can catch them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("bad_model", "reason"), [
    ("nan", "probation_invalid_outputs"), ("slow", "probation_latency"), ("flat", "probation_confidence_collapse")])
def test_probation_rolls_back_a_bad_model(bad_model: str, reason: str, cloud: CloudSim, models: dict[str, Path],
                                          agents: list[AgentProcess], tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    good = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    bad = cloud.release("2.0.0", [(models[bad_model], ORT_FP32)])
    # Latency is judged here: p95 over at least 40 frames, rollback above 2.5x the previous model.
    config = cloud.agent_config(device_id, tmp_path / device_id, probation_window_s=2.0, probation_min_frames=40,
                                probation_max_p95_latency_ratio=2.5)
    agent = AgentProcess(config)
    agents.append(agent.start())
    cloud.wait_online(device_id)
    assert cloud.wait_final(cloud.deploy(device_id, good)).state == "succeeded", agent.log[-3000:]
    cloud.wait_serving(device_id, "1.0.0")

    job = cloud.deploy(device_id, bad)
    final = cloud.wait_final(job, 60)
    assert (final.state, final.error_code) == ("failed", reason), agent.log[-3000:]
    assert final.install_state == "rollback" and final.running_model_version == "1.0.0"
    # The self-test passed and the model served: it was probation that caught it.
    assert any(r.install_state == "probation" for r in cloud.job_reports(job))
    assert final.probation["passed"] == 0.0
    if bad_model == "slow":
        p95, baseline = final.probation["p95_latency_ms"], final.probation["baseline_p95_latency_ms"]
        assert p95 is not None and baseline is not None and p95 > 2.5 * baseline
    elif bad_model == "flat":
        confidence, baseline = final.probation["mean_confidence"], final.probation["baseline_mean_confidence"]
        assert confidence is not None and baseline is not None and confidence < 0.5 * baseline
    else:
        assert (final.probation["invalid_outputs"] or 0) > 0
    cloud.wait_serving(device_id, "1.0.0")
    wait_for(lambda: (s := cloud.latest_status(device_id)) is not None and s.running_model_version == "1.0.0", 30,
             what="status naming the old model again")
    assert agent.exited() is None
