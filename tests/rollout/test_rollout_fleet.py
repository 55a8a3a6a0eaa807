"""On real Mosquitto and the test database, with 50+ simulated devices on two profiles."""

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


def _oracle_fleet(plane, api, tmp_path: Path, trained_model, candidates: dict[str, object]):
    """Devices whose telemetry comes from running the real models (agent load_model + onnxruntime)."""
    from tests.rollout.fleet_helpers import package_dir, publish_trained
    from tests.support.rollout_devices import ModelOracle

    old = publish_trained(plane, trained_model, "shapes")
    oracle = ModelOracle()
    oracle.add_package(package_dir(plane, old))
    for result in candidates.values():
        oracle.add_package(package_dir(plane, result))
    return old, start_fleet(plane, api, FLEET, old, oracle=oracle)


def test_nan_release_aborts_in_first_stage_and_every_touched_device_rolls_back(plane, api, trained_model,
                                                                               tmp_path: Path) -> None:
    nan = publish_constant(plane, tmp_path, "shapes-nan", value=float("nan"))
    old, fleet = _oracle_fleet(plane, api, tmp_path, trained_model, {"nan": nan})
    try:
        detail = create(api, fast_spec("nan", {"package_id": nan.package_id}))
        done = wait_state(api, detail["id"])
        assert done["state"] == "aborted", actions(done)
        # Each stratum was stopped in stage 0 by its own error-rate gate (NaN outputs are errors).
        stops = [d for d in done["decisions"] if d["action"] in ("halt_strata", "abort")]
        assert stops[-1]["action"] == "abort" and {d["stage"] for d in stops} == {0}
        stopped = {}
        for decision in stops:
            for stratum in decision["numbers"]["failed_strata"]:
                stopped[stratum] = {g["gate"]: g for g in decision["numbers"]["strata"][stratum]["gates"]}
        assert set(stopped) == set(detail["plan"]["strata"])
        for gates in stopped.values():
            assert gates["error_rate"]["status"] == "fail" and gates["error_rate"]["observed"] == 1.0
        touched = set(fleet.log.for_package(nan.package_id))
        stage_zero = {d for d, r in rows(api, detail["id"]).items() if r["stage"] == 0}
        assert touched == stage_zero
        assert len(touched) == sum(detail["plan"]["stage_sizes"][0].values()) == 6
        # Every touched device runs the old version again; nobody else was ever sent the release.
        assert set(fleet.running(touched).values()) == {old.package_id}
        assert {r["state"] for d, r in rows(api, detail["id"]).items() if d in touched} == {"rolled_back"}
        assert set(fleet.running().values()) == {old.package_id}
    finally:
        fleet.stop()


def test_release_crashing_the_agent_aborts_in_first_stage_and_crashed_devices_roll_back(plane, api,
                                                                                         tmp_path: Path) -> None:
    from tools.fleet_sim import DeployPlan

    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-crash")
    fleet = start_fleet(plane, api, FLEET, old)
    for sim in fleet.sims.values():
        # The agent dies while loading the release and says nothing more: no failure report, just gone.
        sim.set_deploy_hook(lambda device, command: DeployPlan.crash("installing")
                            if command.package_id == new.package_id else DeployPlan.succeed())
    try:
        detail = create(api, fast_spec("crash", {"package_id": new.package_id}, timeouts={"installing_s": 3}))
        wait_state(api, detail["id"], ("aborting",), timeout_s=60)
        touched = set(fleet.log.for_package(new.package_id))
        assert len(touched) == 6 == sum(detail["plan"]["stage_sizes"][0].values())
        stops = [d for d in api.get(f"/api/v1/rollouts/{detail['id']}").json()["decisions"]
                 if d["action"] in ("halt_strata", "abort")]
        assert {d["stage"] for d in stops} == {0}
        assert all("install_failure_rate" in d["reason"] for d in stops)
        # Crashed devices are not counted apart as "offline": they failed. Their rollback waits
        # until they come back (the agent restarts on its old version), then completes.
        states = rows(api, detail["id"])
        assert {states[d]["state"] for d in touched} == {"rollback_pending"}
        for device_id in touched:
            fleet.sim_of(device_id).go_online(device_id)
        done = wait_state(api, detail["id"])
        assert done["state"] == "aborted", actions(done)
        assert {r["state"] for d, r in rows(api, detail["id"]).items() if d in touched} == {"rolled_back"}
        assert set(fleet.running().values()) == {old.package_id}
    finally:
        fleet.stop()


# Sensitive to load on a shared 2-core machine (how much arrives before a deadline);
# one rerun, which must itself pass in full.
@pytest.mark.flaky(reruns=1)
def test_release_predicting_a_different_class_distribution_is_stopped_by_the_quality_gate(
        plane, api, trained_model, tmp_path: Path) -> None:
    # Installs and runs without a single error, but has collapsed onto one class.
    collapsed = publish_constant(plane, tmp_path, "shapes-collapsed", value=0.0)
    old, fleet = _oracle_fleet(plane, api, tmp_path, trained_model, {"collapsed": collapsed})
    try:
        # The oracle's frames are independent renders (one scene each), so one frame is one sample.
        detail = create(api, fast_spec("collapsed", {"package_id": collapsed.package_id},
                                       gates={"frames_per_independent_sample": 1}))
        done = wait_state(api, detail["id"])
        assert done["state"] == "aborted", actions(done)
        stops = [d for d in done["decisions"] if d["action"] in ("halt_strata", "abort")]
        assert {d["stage"] for d in stops} == {0}  # before the second stage
        for decision in stops:
            for stratum in decision["numbers"]["failed_strata"]:
                gates = {g["gate"]: g for g in decision["numbers"]["strata"][stratum]["gates"]}
                assert gates["error_rate"]["status"] == "pass"
                assert gates["install_failure_rate"]["status"] == "pass"
                # Stopped by model quality: the class distribution, the confidence, or both.
                failing = {name for name, gate in gates.items() if gate["status"] == "fail"}
                assert failing and failing <= {"class_distribution", "mean_confidence"}, failing
                if "class_distribution" in failing:
                    assert gates["class_distribution"]["numbers"]["tvd"] > 0.5
        assert len(fleet.log.for_package(collapsed.package_id)) == 6
        assert set(fleet.running().values()) == {old.package_id}
    finally:
        fleet.stop()


def test_shuffled_labels_are_stopped_by_the_shadow_phase_before_any_switch(plane, api, trained_model,
                                                                          tmp_path: Path) -> None:
    from tests.rollout.fleet_helpers import publish_trained

    # The same network with its label mapping shuffled: it installs and runs healthily,
    # but names the wrong class for every frame.
    shuffled_labels = trained_model.labels[1:] + trained_model.labels[:1]
    shuffled = publish_trained(plane, trained_model, "shapes-shuffled", labels=shuffled_labels)
    old, fleet = _oracle_fleet(plane, api, tmp_path, trained_model, {"shuffled": shuffled})
    try:
        spec = fast_spec("shuffled", {"package_id": shuffled.package_id},
                         shadow={"duration_s": 2, "sample_fraction": 0.5, "min_frames": 30, "stages": [0]})
        detail = create(api, spec)
        done = wait_state(api, detail["id"])
        assert done["state"] == "aborted", actions(done)
        stops = [d for d in done["decisions"] if d["action"] in ("halt_strata", "abort")]
        assert stops and all(d["stage"] == 0 and d["numbers"]["phase"] == "shadow" for d in stops)
        for decision in stops:
            for stratum in decision["numbers"]["failed_strata"]:
                gates = {g["gate"]: g for g in decision["numbers"]["strata"][stratum]["gates"]}
                assert gates["shadow_agreement"]["status"] == "fail"
                assert gates["shadow_agreement"]["observed"] < 0.5
        # The candidate ran only in shadow, on the first stage's devices; nobody switched to it.
        assert len(fleet.log.for_package(shuffled.package_id, mode="shadow")) == 6
        assert not fleet.log.for_package(shuffled.package_id)
        assert set(fleet.running().values()) == {old.package_id}
    finally:
        fleet.stop()


def test_release_failing_on_one_hardware_profile_is_stopped_for_that_stratum_only(plane, api,
                                                                                  tmp_path: Path) -> None:
    from tools.fleet_sim import ModelBehaviour

    old = publish_constant(plane, tmp_path, "cam-old")
    # One release, one package per hardware profile.
    new_x86 = publish_constant(plane, tmp_path, "cam-x86", profiles=[X86])
    new_arm = publish_constant(plane, tmp_path, "cam-arm", profiles=[ARM])
    fleet = start_fleet(plane, api, FLEET, old)
    # The ARM build installs fine but half its inferences fail at runtime on that hardware.
    fleet.sims[ARM].set_behaviour(new_arm.model_version, ModelBehaviour(error_rate=0.5))
    arm_stratum, x86_stratum = f"{ARM}/onnxruntime", f"{X86}/onnxruntime"
    try:
        detail = create(api, fast_spec("per-profile", {"packages": {X86: new_x86.package_id,
                                                                    ARM: new_arm.package_id}}))
        done = wait_state(api, detail["id"])
        assert done["state"] == "completed", actions(done)
        assert done["halted_strata"] == [arm_stratum]
        halt = next(d for d in done["decisions"] if d["action"] == "halt_strata")
        assert halt["stage"] == 0 and halt["numbers"]["failed_strata"] == [arm_stratum]
        gates = {g["gate"]: g["status"] for g in halt["numbers"]["strata"][arm_stratum]["gates"]}
        assert gates["error_rate"] == "fail"
        # The healthy stratum went on through every stage.
        assert actions(done)[-1] == "complete"
        states = rows(api, detail["id"])
        arm_touched = set(fleet.log.for_package(new_arm.package_id))
        assert len(arm_touched) == 2 and all(states[d]["stage"] == 0 for d in arm_touched)
        assert {states[d]["state"] for d in arm_touched} == {"rolled_back"}
        assert {r["state"] for d, r in states.items() if r["stratum"] == arm_stratum and d not in arm_touched} == {
            "halted"}
        assert {r["state"] for r in states.values() if r["stratum"] == x86_stratum} == {"succeeded"}
        running = fleet.running()
        assert {running[d] for d in states if d.startswith("arm")} == {old.package_id}
        assert {running[d] for d in states if d.startswith("x86")} == {new_x86.package_id}
    finally:
        fleet.stop()


def test_offline_devices_are_counted_apart_get_the_release_on_return_or_expire(plane, api, tmp_path: Path) -> None:
    from tests.rollout.fleet_helpers import wait_device_state
    from tests.support.services import wait_for

    old = publish_constant(plane, tmp_path, "cam-old")
    new = publish_constant(plane, tmp_path, "cam-new")
    fleet = start_fleet(plane, api, FLEET, old)
    returning, lost = "x86-010", "arm64-005"
    try:
        for device_id in (returning, lost):
            fleet.sim_of(device_id).go_offline(device_id, mode="network")
        wait_for(lambda: not any(api.get(f"/api/v1/devices/{d}").json()["online"] for d in (returning, lost)),
                 30, what="the two devices offline")
        # With a passing shadow phase first (simulated agreement 97 %).
        spec = fast_spec("offline", {"package_id": new.package_id}, timeouts={"offline_expiry_s": 8},
                         shadow={"duration_s": 1, "sample_fraction": 0.5, "min_frames": 20, "stages": [0]})
        detail = create(api, spec)
        rollout_id = detail["id"]
        wait_device_state(api, rollout_id, returning, "offline")
        fleet.sim_of(returning).go_online(returning)
        done = wait_state(api, rollout_id)
        assert done["state"] == "completed", actions(done)
        assert actions(done)[:2] == ["created", "start_install"]  # the shadow phase passed
        states = rows(api, rollout_id)
        assert states[returning]["state"] == "succeeded"
        assert fleet.device(returning).running_package_id == new.package_id
        assert not done["halted_strata"]
        assert states[lost]["state"] == "expired"
        assert lost not in fleet.log.for_package(new.package_id)
        # Offline devices never counted as failures in any gate.
        for decision in done["decisions"]:
            for verdict in decision["numbers"].get("strata", {}).values():
                install = next((g for g in verdict["gates"] if g["gate"] == "install_failure_rate"), None)
                assert install is None or install["numbers"]["failed"] == 0
        online = {d for d in states if d != lost}
        assert set(fleet.running(online).values()) == {new.package_id}
    finally:
        fleet.stop()
