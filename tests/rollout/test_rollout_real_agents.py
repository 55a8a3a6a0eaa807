"""With real agent processes: the shadow phase runs the candidate beside the active
model in the agent itself (agent/infer/shadow.py), and gates the switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rollout.fleet_helpers import X86, actions, create, fast_spec, publish_trained, wait_state
from tests.support.fleet import start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

DEVICES = ["cam-s1", "cam-s2"]


def _running(api) -> set[str | None]:
    return {api.get(f"/api/v1/devices/{d}").json()["running_package_id"] for d in DEVICES}


def test_real_agents_shadow_the_candidate_and_switch_only_when_it_agrees(plane, api, trained_model,
                                                                         tmp_path: Path) -> None:
    old = publish_trained(plane, trained_model, "shapes", profiles=[X86])
    same = publish_trained(plane, trained_model, "shapes-retrained", profiles=[X86])
    shuffled = publish_trained(plane, trained_model, "shapes-shuffled", profiles=[X86],
                               labels=trained_model.labels[1:] + trained_model.labels[:1])
    for device_id in DEVICES:
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": X86}).status_code == 201
    agents = [start_agent(plane, tmp_path, d, fps=10.0) for d in DEVICES]
    try:
        wait_for(lambda: all(api.get(f"/api/v1/devices/{d}").json()["online"] for d in DEVICES), 60,
                 what="agents online")
        deployment = api.post("/api/v1/deployments", json={"package_id": old.package_id, "device_ids": DEVICES})
        assert deployment.status_code == 201, deployment.text
        wait_for(lambda: _running(api) == {old.package_id}, 120, what="both agents serving the old release")

        def spec(name: str, package_id: str) -> dict[str, object]:
            return fast_spec(name, {"package_id": package_id}, target={"device_ids": DEVICES},
                             stages=[{"count": 1}, {"percent": 100}],
                             shadow={"duration_s": 3, "sample_fraction": 1.0, "min_frames": 20, "stages": [0]},
                             gates={"min_frames": 20, "min_latency_windows": 2, "probation_min_windows": 2,
                                    # The subject is shadow agreement; latency beside a parallel worker is noise.
                                    "max_p95_latency_ratio": 10.0})

        # Labels shuffled: the agent shadows it, disagrees on every frame, and never switches.
        refused = wait_state(api, create(api, spec("shuffled", shuffled.package_id))["id"], timeout_s=120)
        assert refused["state"] == "aborted", actions(refused)
        stop = next(d for d in refused["decisions"] if d["action"] in ("abort", "halt_strata"))
        gates = {g["gate"]: g for g in next(iter(stop["numbers"]["strata"].values()))["gates"]}
        assert stop["numbers"]["phase"] == "shadow" and gates["shadow_agreement"]["status"] == "fail"
        assert gates["shadow_agreement"]["numbers"]["frames"] >= 20
        assert _running(api) == {old.package_id}

        # The same network under a new version: full agreement, then the install, on both agents.
        passed = wait_state(api, create(api, spec("same", same.package_id))["id"], timeout_s=180)
        assert passed["state"] == "completed", [(d["action"], d["reason"]) for d in passed["decisions"]]
        start = next(d for d in passed["decisions"] if d["action"] == "start_install")
        agreement = next(g for g in next(iter(start["numbers"]["strata"].values()))["gates"]
                         if g["gate"] == "shadow_agreement")
        assert agreement["observed"] == 1.0
        wait_for(lambda: _running(api) == {same.package_id}, 60, what="both agents serving the new release")
    finally:
        stop_agents(agents)
