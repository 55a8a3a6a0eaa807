"""The boot counter: a committed model that crashes the agent at start-up ends in a fallback, not a crash loop.

The pure decision is table-driven; the end-to-end case runs real agent processes that die
of a real SIGSEGV while loading the committed model, restarted as a supervisor would.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from agent.faults import SEGFAULT_ENV
from agent.update.boot import BootAction, BootRecord, decide_boot
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

MAX = 3


@pytest.mark.parametrize(("record", "package", "has_fallback", "action", "attempts"), [
    (None, "p2", True, BootAction.LOAD, 1),  # first start of a committed model
    (BootRecord(package_id="p1", attempts=3), "p2", True, BootAction.LOAD, 1),  # another model: a new count
    (BootRecord(package_id="p2", attempts=1), "p2", True, BootAction.LOAD, 2),  # the last start died
    (BootRecord(package_id="p2", attempts=2), "p2", True, BootAction.LOAD, 3),
    (BootRecord(package_id="p2", attempts=3), "p2", True, BootAction.FALL_BACK, None),  # the limit
    (BootRecord(package_id="p2", attempts=3), "p2", False, BootAction.REFUSE, 3),  # nothing to fall back to
])
def test_boot_decision(record: BootRecord | None, package: str, has_fallback: bool, action: BootAction,
                       attempts: int | None) -> None:
    decision = decide_boot(record, package, max_boot_attempts=MAX, has_fallback=has_fallback)
    assert decision.action is action
    assert (decision.record.attempts if decision.record else None) == attempts
    assert (decision.reason is not None) == (action is not BootAction.LOAD)


def test_boot_limit_must_allow_one_start() -> None:
    with pytest.raises(ValueError, match="max_boot_attempts"):
        decide_boot(None, "p", max_boot_attempts=0, has_fallback=True)


@pytest.mark.integration
def test_a_model_that_segfaults_at_start_up_falls_back_to_the_previous_one(
        cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess], tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    old = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    new = cloud.release("2.0.0", [(models["v2"], ORT_FP32)])
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, max_boot_attempts=MAX))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    assert cloud.wait_final(cloud.deploy(device_id, old)).state == "succeeded", agent.log[-3000:]
    second = cloud.deploy(device_id, new)
    assert cloud.wait_final(second).state == "succeeded", agent.log[-3000:]
    agent.stop()

    # From now on the runtime dies of SIGSEGV whenever it loads 2.0.0; a supervisor restarts the agent.
    crash = {SEGFAULT_ENV: "load@2.0.0"}
    for attempt in range(1, MAX + 1):
        agent.start(env=crash)
        wait_for(lambda: agent.exited() is not None, 60, what=f"start-up {attempt} to crash")
        assert agent.exited() == -signal.SIGSEGV, agent.log[-3000:]
        record = agent.install_record()
        assert record is not None and record["boot"]["attempts"] == attempt

    agent.start(env=crash)  # the fault stays: only the fallback can keep this start alive
    cloud.wait_serving(device_id, "1.0.0")
    wait_for(lambda: [r for r in cloud.job_reports(second) if r.error_code == "boot_loop"], 30,
             what="the boot loop reported on the install's job")
    reports = [r for r in cloud.job_reports(second) if r.error_code == "boot_loop"]
    assert reports[0].state == "failed" and reports[0].running_model_version == "1.0.0"
    assert "crash" in (reports[0].error or "")
    assert agent.exited() is None, agent.log[-3000:]
    wait_for(lambda: (s := cloud.latest_status(device_id)) is not None and s.running_model_version == "1.0.0",
             30, what="status naming the fallback model")
    # A healthy window clears the count for the model that now runs.
    wait_for(lambda: (agent.install_record() or {}).get("boot") is None, 30, what="the boot record cleared")
