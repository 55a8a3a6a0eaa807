"""Issue 6 on real Mosquitto and the test database, with 50+ simulated devices on two profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rollout.fleet_helpers import (
    ARM,
    X86,
    actions,
    create,
    fast_spec,
    publish_constant,
    rows,
    start_fleet,
    wait_state,
)

pytestmark = pytest.mark.integration

FLEET = {X86: 40, ARM: 20}


def test_good_release_passes_every_stage_and_reaches_every_online_device(plane, api, tmp_path: Path) -> None:
    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, FLEET, old)
    try:
        detail = create(api, fast_spec("good", {"package_id": new.package_id}))
        assert detail["plan"]["strata"] == {f"{ARM}/onnxruntime": 20, f"{X86}/onnxruntime": 40}
        done = wait_state(api, detail["id"])
        assert done["state"] == "completed", actions(done)
        assert actions(done) == ["created", "promote", "promote", "complete"]
        # Every decision carries the gate numbers per stratum, against a live control group.
        first_promotion = done["decisions"][1]["numbers"]["strata"]
        assert set(first_promotion) == {f"{ARM}/onnxruntime", f"{X86}/onnxruntime"}
        for verdict in first_promotion.values():
            assert verdict["control_source"] == "live"
            assert {g["gate"]: g["status"] for g in verdict["gates"]} == {
                "install_failure_rate": "pass", "error_rate": "pass", "restarts": "pass",
                "p95_latency_ratio": "pass", "mean_confidence": "pass", "class_distribution": "pass"}
        assert set(fleet.running().values()) == {new.package_id}
        assert {r["state"] for r in rows(api, detail["id"]).values()} == {"succeeded"}
        # Exactly one install command per device: nothing was dispatched twice.
        assert set(fleet.log.for_package(new.package_id).values()) == {1}
        assert len(fleet.log.for_package(new.package_id)) == 60
    finally:
        fleet.stop()
