"""Table-driven install fault tests with real agent processes (Mender's state tests are the model).

Each case installs 1.0.0, then installs 2.0.0 with one fault: a crash (``os._exit``
right after a state is persisted: to the device that is ``kill -9``), a corrupted
download or a failing disk. Where the agent died it is restarted without the fault.
Each case names the chain of install states the control plane must see and the
model that must end up serving, and reporting so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.contract import JobStatusReport
from agent.faults import CRASH_ENV, CRASH_EXIT_CODE, FAIL_WRITE_ENV
from tests.agent.conftest import ORT_FP32
from tests.agent.sim import AgentProcess, CloudSim
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

PRE = ["download", "verify", "stage", "self_test", "select_runtime"]
FULL = [*PRE, "switch", "probation", "commit"]


@dataclass(frozen=True)
class Case:
    name: str
    new_model: str = "v2"
    crash_at: str | None = None
    fail_write_at: str | None = None
    corrupt: str | None = None
    keep_fault_on_restart: bool = False
    restarts: int = 1
    expect_state: str = "succeeded"
    expect_serving: str = "2.0.0"
    expect_error: str | None = None
    expect_chain: tuple[str, ...] = tuple(FULL)


CASES = [
    # kill -9 before the switch: nothing served changed; the install is redone from the download.
    Case("crash-in-download", crash_at="download", expect_chain=tuple(FULL)),
    Case("crash-in-verify", crash_at="verify", expect_chain=("download", *FULL)),
    Case("crash-in-stage", crash_at="stage", expect_chain=("download", "verify", *FULL)),
    Case("crash-in-self_test", crash_at="self_test", expect_chain=(*PRE[:3], *FULL)),
    Case("crash-in-select_runtime", crash_at="select_runtime", expect_chain=(*PRE[:4], *FULL)),
    # kill -9 from the switch on: the new model may be what killed us; back to the old one.
    Case("crash-in-switch", crash_at="switch", expect_state="failed", expect_serving="1.0.0",
         expect_error="interrupted_in_switch", expect_chain=(*PRE, "rollback")),
    Case("crash-in-probation", crash_at="probation", expect_state="failed", expect_serving="1.0.0",
         expect_error="interrupted_in_probation", expect_chain=(*PRE, "switch", "rollback")),
    # kill -9 while committing or rolling back: that step is finished on restart.
    Case("crash-in-commit", crash_at="commit", expect_chain=(*PRE, "switch", "probation", "commit")),
    Case("crash-in-rollback", new_model="nan", crash_at="rollback", expect_state="failed", expect_serving="1.0.0",
         expect_error="probation_invalid_outputs", expect_chain=(*PRE, "switch", "probation", "rollback")),
    # A crash on every attempt: the loop counter (max_install_resumes=1) gives up and keeps 1.0.0.
    Case("crash-loop-in-self_test", crash_at="self_test", keep_fault_on_restart=True, restarts=2,
         expect_state="failed", expect_serving="1.0.0", expect_error="install_loop",
         expect_chain=(*PRE[:3], *PRE[:3], "abort")),
    # No crash: bad bytes and a failing disk are refused without touching what runs.
    Case("corrupted-download", corrupt="model.onnx", restarts=0, expect_state="rejected", expect_serving="1.0.0",
         expect_error="digest_mismatch", expect_chain=("download", "abort")),
    Case("write-failure-while-staging", fail_write_at="stage", restarts=0, expect_state="failed",
         expect_serving="1.0.0", expect_error="install_failed", expect_chain=("download", "verify", "stage", "abort")),
]


def _chain(cloud: CloudSim, job_id: str) -> list[str]:
    """Install states reported for ``job_id`` in the order the agent made them, each message once.

    QoS 1 may repeat a message, and the uplink re-sends the unacknowledged tail of a batch,
    so across a reconnect a report can first arrive after a later one: ``sent_at`` is the
    agent's order (arrival order breaks ties).
    """
    seen: set[str] = set()
    reports: list[JobStatusReport] = []
    for report in cloud.job_reports(job_id):
        if report.message_id not in seen and report.install_state is not None:
            seen.add(report.message_id)
            reports.append(report)
    reports.sort(key=lambda report: report.sent_at)  # stable: arrival order breaks ties
    return [str(report.install_state) for report in reports]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_install_fault(case: Case, cloud: CloudSim, models: dict[str, Path], agents: list[AgentProcess],
                       tmp_path: Path) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    old = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    new = cloud.release("2.0.0", [(models[case.new_model], ORT_FP32)])
    fault_env: dict[str, str] = {}
    if case.crash_at:
        fault_env[CRASH_ENV] = f"{case.crash_at}@2.0.0"
    if case.fail_write_at:
        fault_env[FAIL_WRITE_ENV] = f"{case.fail_write_at}@2.0.0"
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id, max_install_resumes=1), env=fault_env)
    agents.append(agent.start())
    cloud.wait_online(device_id)
    first = cloud.deploy(device_id, old)
    assert cloud.wait_final(first).state == "succeeded", agent.log[-3000:]

    if case.corrupt:
        cloud.corrupt_downloads(case.corrupt)
    job = cloud.deploy(device_id, new)
    for _ in range(case.restarts):
        wait_for(lambda: agent.exited() is not None, 60, what=f"the injected crash at {case.crash_at}")
        assert agent.exited() == CRASH_EXIT_CODE, agent.log[-3000:]
        agent.start(env=fault_env if case.keep_fault_on_restart else {})

    final = cloud.wait_final(job, 90)
    assert (final.state, final.error_code) == (case.expect_state, case.expect_error), agent.log[-4000:]
    assert final.running_model_version == case.expect_serving
    assert tuple(_chain(cloud, job)) == case.expect_chain
    # The model that really runs is what the device reports, in status and in telemetry.
    cloud.wait_serving(device_id, case.expect_serving)
    wait_for(lambda: (s := cloud.latest_status(device_id)) is not None
             and s.running_model_version == case.expect_serving, 30, what="status naming the running model")
    assert agent.exited() is None, "the agent must keep running after the fault"
    if case.expect_state == "succeeded":
        assert final.runtime and final.runtime_measurements and final.probation.get("passed") == 1.0


def test_real_sigkill_during_probation_rolls_back(cloud: CloudSim, models: dict[str, Path],
                                                  agents: list[AgentProcess], tmp_path: Path) -> None:
    """The hook above stands in for kill -9; here is the real signal, in the one state long enough to hit."""
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    old = cloud.release("1.0.0", [(models["v1"], ORT_FP32)])
    new = cloud.release("2.0.0", [(models["v2"], ORT_FP32)])
    agent = AgentProcess(cloud.agent_config(device_id, tmp_path / device_id))
    agents.append(agent.start())
    cloud.wait_online(device_id)
    assert cloud.wait_final(cloud.deploy(device_id, old)).state == "succeeded"
    agent.stop()
    agent.config["probation_window_s"] = 120.0  # a probation long enough to kill the agent inside it
    agent.start()
    cloud.wait_online(device_id)
    job = cloud.deploy(device_id, new)
    wait_for(lambda: "probation" in _chain(cloud, job), 60, what="the install to reach probation")
    agent.kill()
    record = agent.install_record()
    assert record is not None and record["install"]["state"] == "probation"
    agent.start()
    final = cloud.wait_final(job, 60)
    assert (final.state, final.error_code, final.running_model_version) == (
        "failed", "interrupted_in_probation", "1.0.0")
    cloud.wait_serving(device_id, "1.0.0")
