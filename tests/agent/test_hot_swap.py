"""Hot swap under a steady synthetic feed: no frame is lost to the swap.

The feed offers 60 frames/s, the rate limiter keeps 30/s, and the ``every`` frame
policy makes the hand-off lossless by construction, so the only way a frame could
go missing is the swap itself. Two swaps happen while frames flow.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def test_frames_processed_equal_frames_offered_minus_rate_limited(
    cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path
) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    releases = [cloud.release(f"{n}.0.0", [(models[f"v{n}"], ORT_FP32)]) for n in (1, 2, 3)]
    results = tmp_path / "results.jsonl"
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, source_fps=60.0, target_fps=30.0,
                                            frame_policy="every", results_jsonl_path=str(results)))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    for release in releases:
        job = cloud.deploy(device_id, release)
        assert cloud.wait_final(job, 60).state == "succeeded", agent.log[-3000:]
        cloud.wait_serving(device_id, release.model_version)
    assert agent.stop() == 0

    # The clean stop drains the frame in hand and sends a last window with cumulative totals
    # before the offline status.
    wait_for(lambda: cloud.observed.status.get(device_id, [])[-1].state == "offline", 30, what="offline status")
    totals = [t for t in cloud.telemetry(device_id) if t.frame_totals is not None][-1].frame_totals
    assert totals is not None
    assert totals.skipped_by_rate_limit > 0, "the feed must be faster than the target rate"
    assert totals.overwritten == 0
    assert totals.inference_errors_total == 0 and totals.invalid_outputs_total == 0
    assert totals.processed == totals.captured - totals.skipped_by_rate_limit
    # The local consumer saw every processed frame, in order, across both swaps.
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == totals.processed
    assert [r["frame_seq"] for r in lines] == list(range(1, len(lines) + 1))
    versions = [r["model_version"] for r in lines]
    assert versions == sorted(versions) and set(versions) == {"1.0.0", "2.0.0", "3.0.0"}
