"""With real agent processes running detection packages: the canary gate compares boxes per
frame with the control group, stops a release that finds half the objects, and lets an
equally good one through after a shadow phase whose boxes all match. Samples from the
agents carry their boxes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.rollout.fleet_helpers import X86, actions, create, fast_spec, wait_state
from tests.support.detection_models import SCENE, half_recall, publish_detector
from tests.support.fleet import start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

DEVICES = ["det-1", "det-2"]
CONTROL_WINDOW_S = 2.0


def _running(api: Any) -> set[str | None]:
    return {api.get(f"/api/v1/devices/{d}").json()["running_package_id"] for d in DEVICES}


def _gates(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gate"]: g for g in next(iter(decision["numbers"]["strata"].values()))["gates"]}


def test_a_detector_that_misses_half_the_objects_is_stopped_and_an_equal_one_passes(plane, api,
                                                                                    tmp_path: Path) -> None:
    current = publish_detector(plane, tmp_path / "models", "detector", SCENE, profiles=[X86])
    bad = publish_detector(plane, tmp_path / "models", "detector", half_recall(), profiles=[X86])
    equal = publish_detector(plane, tmp_path / "models", "detector-retrained", SCENE, profiles=[X86])
    for device_id in DEVICES:
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": X86}).status_code == 201
    # Every detection frame may become a sample (the budget still caps them), so boxes reach the cloud.
    monitoring = {"monitoring": {"random_probability": 1.0, "subsample_interval_s": 0.5}}
    agents = [start_agent(plane, tmp_path, d, fps=10.0, extra=monitoring) for d in DEVICES]
    try:
        wait_for(lambda: all(api.get(f"/api/v1/devices/{d}").json()["online"] for d in DEVICES), 60,
                 what="agents online")
        deployment = api.post("/api/v1/deployments", json={"package_id": current.package_id, "device_ids": DEVICES})
        assert deployment.status_code == 201, deployment.text
        wait_for(lambda: _running(api) == {current.package_id}, 90, what="both agents serving the current detector")

        def spec(name: str, package_id: str, **extra: Any) -> dict[str, Any]:
            # One canary against one control device; frames of these synthetic scenes are
            # independent draws (frames_per_independent_sample 1). Latency is not under test
            # here, and sub-millisecond models are noisy on a shared machine.
            return fast_spec(name, {"package_id": package_id}, target={"device_ids": DEVICES},
                             stages=[{"count": 1}, {"percent": 100}],
                             gates={"min_frames": 20, "min_latency_windows": 2, "probation_min_windows": 2,
                                    "frames_per_independent_sample": 1, "max_p95_latency_ratio": 50,
                                    "control_window_s": CONTROL_WINDOW_S}, **extra)

        # Half the recall: the canary reports 3 boxes a frame against the control's 6.
        stopped = wait_state(api, create(api, spec("half-recall", bad.package_id))["id"], timeout_s=90)
        assert stopped["state"] == "aborted", actions(stopped)
        stop = next(d for d in stopped["decisions"] if d["action"] == "abort")
        assert "boxes_per_frame" in stop["reason"], stop["reason"]
        gates = _gates(stop)
        boxes = gates["boxes_per_frame"]
        # About -50 %: the window in which the canary switched models holds a few frames of the old one.
        assert boxes["status"] == "fail" and boxes["observed"] == pytest.approx(-0.5, abs=0.08)
        assert boxes["numbers"]["canary"] == pytest.approx(3.0, abs=0.5)
        assert boxes["numbers"]["control"] == pytest.approx(6.0)
        assert "mean_confidence" not in gates and "class_distribution" not in gates
        wait_for(lambda: _running(api) == {current.package_id}, 60, what="the canary rolled back")
        # The control window must not reach back to the aborted canary's frames.
        time.sleep(CONTROL_WINDOW_S + 1.0)

        # The same detector under a new name: the canary agent first shadows it (its boxes all
        # match the active model's), then the canary gate passes and both agents switch.
        shadow = {"duration_s": 2, "sample_fraction": 1.0, "min_frames": 20, "stages": [0]}
        passed = wait_state(api, create(api, spec("equal", equal.package_id, shadow=shadow))["id"], timeout_s=120)
        assert passed["state"] == "completed", [(d["action"], d["reason"]) for d in passed["decisions"]]
        agreement = _gates(next(d for d in passed["decisions"] if d["action"] == "start_install"))["shadow_agreement"]
        assert agreement["observed"] == 1.0 and agreement["numbers"]["boxes_matched"] >= 20 * len(SCENE)
        assert agreement["numbers"]["boxes_active"] == agreement["numbers"]["boxes_candidate"]
        promote = next(d for d in passed["decisions"] if d["action"] == "promote")
        gates = _gates(promote)
        assert {gates[g]["status"] for g in ("boxes_per_frame", "class_counts_per_frame", "mean_box_score")} \
            == {"pass"}
        assert gates["boxes_per_frame"]["observed"] == pytest.approx(0.0, abs=0.01)
        wait_for(lambda: _running(api) == {equal.package_id}, 60, what="both agents serving the equal detector")

        # Samples of detection frames carry the boxes the agent found (fractions of the frame).
        samples = wait_for(lambda: [s for s in api.get("/api/v1/samples", params={"status": "", "device_id": DEVICES,
                                                                                  "limit": 50}).json()
                                    if s["boxes"]] or None, 30, what="a detection sample with boxes")
        detail = api.get(f"/api/v1/samples/{samples[0]['sample_id']}").json()
        assert {b["label"] for b in detail["boxes"]} <= {"person", "car", "dog"} and detail["boxes"]
        assert all(0 <= b["x1"] < b["x2"] <= 1 and 0 <= b["y1"] < b["y2"] <= 1 for b in detail["boxes"])
    finally:
        stop_agents(agents)
