"""Pure core: gate statistics, device transitions, stage decisions, operator actions."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from cloud.rollout.decisions import (
    Action,
    DeviceObservation,
    DeviceState,
    InvalidAction,
    OperatorAction,
    RolloutState,
    StratumVerdict,
    apply_operator_action,
    decide_stage,
    next_device_state,
    next_rollback_state,
)
from cloud.rollout.gates import (
    GateStatus,
    InstallOutcomes,
    ShadowStats,
    TelemetryWindow,
    aggregate,
    class_distribution_test,
    evaluate_shadow,
    evaluate_stratum,
)
from cloud.rollout.spec import GateThresholds, RolloutSpec, ShadowSpec, Timeouts

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BALANCED = {"circle": 50, "square": 50, "triangle": 50, "stripes": 50}


def _windows(device_count: int, *, frames: int = 200, errors: int = 0, p95: float = 5.0, confidence: float = 0.9,
             classes: dict[str, int] | None = None, prefix: str = "d") -> list[TelemetryWindow]:
    return [TelemetryWindow(f"{prefix}{i}", frames, errors, p95, confidence, dict(classes or BALANCED))
            for i in range(device_count) for _ in range(3)]


def _gates(canary: list[TelemetryWindow], control: list[TelemetryWindow], *, installs: InstallOutcomes | None = None,
           canary_restarts: int = 0) -> dict[str, GateStatus]:
    results = evaluate_stratum(GateThresholds(), installs=installs or InstallOutcomes(succeeded=3),
                               canary=aggregate(canary, restarts=canary_restarts), control=aggregate(control))
    return {r.gate: r.status for r in results}


def test_a_healthy_canary_passes_every_gate() -> None:
    statuses = _gates(_windows(3), _windows(10, prefix="c"))
    assert set(statuses.values()) == {GateStatus.PASS}, statuses


def test_a_latency_ratio_of_sub_millisecond_figures_is_not_a_slower_canary() -> None:
    control = _windows(10, prefix="c", p95=0.6)
    assert _gates(_windows(3, p95=1.1), control)["p95_latency_ratio"] == GateStatus.PASS
    assert _gates(_windows(3, p95=2.9), control)["p95_latency_ratio"] == GateStatus.FAIL


def test_each_gate_fails_on_its_own_symptom() -> None:
    control = _windows(10, prefix="c")
    assert _gates(_windows(3), control, installs=InstallOutcomes(succeeded=1, failed=2))[
        "install_failure_rate"] == GateStatus.FAIL
    assert _gates(_windows(3, frames=0, errors=200), control)["error_rate"] == GateStatus.FAIL
    assert _gates(_windows(3, p95=20.0), control)["p95_latency_ratio"] == GateStatus.FAIL
    assert _gates(_windows(3, confidence=0.4), control)["mean_confidence"] == GateStatus.FAIL
    shuffled = {"circle": 170, "square": 10, "triangle": 10, "stripes": 10}
    assert _gates(_windows(3, classes=shuffled), control)["class_distribution"] == GateStatus.FAIL
    assert _gates(_windows(3), control, canary_restarts=3)["restarts"] == GateStatus.FAIL


def test_small_samples_are_insufficient_not_passing() -> None:
    statuses = _gates(_windows(1, frames=10, classes={"circle": 10}), _windows(10, prefix="c"),
                      installs=InstallOutcomes())
    assert statuses["install_failure_rate"] == GateStatus.INSUFFICIENT
    assert statuses["error_rate"] == GateStatus.INSUFFICIENT
    assert statuses["class_distribution"] == GateStatus.INSUFFICIENT


def test_chi_square_needs_significance_and_a_material_effect() -> None:
    _chi2, p_value, tvd = class_distribution_test(Counter({"a": 5100, "b": 4900}), Counter({"a": 4900, "b": 5100}))
    # Significant at 10 000 independent frames per group but only a 2 % shift: not a different model.
    assert p_value < 0.01 and tvd == pytest.approx(0.02)
    # The same counts from a camera (one independent sample per 10 frames): not even significant.
    assert class_distribution_test(Counter({"a": 5100, "b": 4900}), Counter({"a": 4900, "b": 5100}),
                                   frames_per_sample=10)[1] > 0.05
    statuses = _gates(_windows(3, classes={"circle": 2550, "square": 2450}),
                      _windows(3, classes={"circle": 2450, "square": 2550}, prefix="c"))
    assert statuses["class_distribution"] == GateStatus.PASS


def test_shadow_gate_on_agreement() -> None:
    spec = ShadowSpec(min_frames=100)
    agreeing = evaluate_shadow(spec, ShadowStats(devices=3, frames=300, agreements=290,
                                                 candidate_p95_latency_ms=[4.0], active_p95_latency_ms=[4.0]))
    assert {r.status for r in agreeing} == {GateStatus.PASS}
    disagreeing = {r.gate: r.status for r in evaluate_shadow(spec, ShadowStats(devices=3, frames=300, agreements=80))}
    assert disagreeing["shadow_agreement"] == GateStatus.FAIL
    assert {r.status for r in evaluate_shadow(spec, ShadowStats(frames=10))} == {GateStatus.INSUFFICIENT}


# --- device transitions --------------------------------------------------------
def _obs(state: DeviceState, *, age_s: float = 0, online: bool = True, job: str | None = None, attempts: int = 1,
         running: str | None = None, windows: int = 0) -> DeviceObservation:
    return DeviceObservation(state=state, state_since=NOW - timedelta(seconds=age_s), attempts=attempts,
                             online=online, job_state=job, running_package_id=running, target_package_id="new",
                             windows_on_target=windows)


def _next(obs: DeviceObservation, **timeouts: float):
    return next_device_state(obs, now=NOW, timeouts=Timeouts(**timeouts), max_retries=1, probation_min_windows=2)


@pytest.mark.parametrize("obs, expected", [
    (_obs(DeviceState.QUEUED, job="received"), DeviceState.DOWNLOADING),
    (_obs(DeviceState.QUEUED, job="succeeded"), DeviceState.PROBATION),
    (_obs(DeviceState.DOWNLOADING, job="installing"), DeviceState.INSTALLING),
    (_obs(DeviceState.PROBATION, job="succeeded", running="new", windows=2), DeviceState.SUCCEEDED),
    (_obs(DeviceState.PROBATION, job="succeeded", running="old"), DeviceState.FAILED),  # local rollback
    (_obs(DeviceState.INSTALLING, job="failed", attempts=1), DeviceState.PENDING),  # retried
    (_obs(DeviceState.INSTALLING, job="failed", attempts=2), DeviceState.FAILED),  # out of retries
    (_obs(DeviceState.QUEUED, age_s=700, online=False), DeviceState.OFFLINE),  # counted apart
    (_obs(DeviceState.QUEUED, age_s=700, attempts=2), DeviceState.FAILED),  # online and silent
    (_obs(DeviceState.DOWNLOADING, age_s=2000, job="downloading", attempts=2), DeviceState.FAILED),
    (_obs(DeviceState.INSTALLING, age_s=700, job="installing", attempts=2), DeviceState.FAILED),
    # Offline after installing is never "counted apart": probation runs out and it fails.
    (_obs(DeviceState.PROBATION, age_s=1000, job="succeeded", online=False), DeviceState.FAILED),
    # Acknowledged, then vanished mid-install (a crash): failed at once, not retried into "offline".
    (_obs(DeviceState.INSTALLING, age_s=700, job="installing", online=False, attempts=1), DeviceState.FAILED),
    (_obs(DeviceState.OFFLINE, online=True), DeviceState.PENDING),
    (_obs(DeviceState.OFFLINE, age_s=8 * 86400, online=False), DeviceState.EXPIRED),
])
def test_every_non_final_state_moves_or_times_out(obs: DeviceObservation, expected: DeviceState) -> None:
    transition = _next(obs)
    assert transition is not None and transition.state == expected, transition


def test_nothing_changes_inside_the_deadlines() -> None:
    assert _next(_obs(DeviceState.QUEUED, age_s=10)) is None
    assert _next(_obs(DeviceState.PROBATION, age_s=10, job="succeeded", running="new", windows=1)) is None
    assert _next(_obs(DeviceState.OFFLINE, age_s=10, online=False)) is None


def test_rollback_confirmed_by_running_version() -> None:
    obs = DeviceObservation(DeviceState.ROLLING_BACK, NOW, 1, True, "succeeded", running_package_id="old",
                            target_package_id="old")
    done = next_rollback_state(obs, previous_package_id="old", now=NOW, timeouts=Timeouts(), max_retries=1)
    assert done is not None and done.state == DeviceState.ROLLED_BACK


# --- stage decisions -------------------------------------------------------------
def _verdict(statuses: list[GateStatus], *, in_flight: int = 0, halted: bool = False) -> StratumVerdict:
    from cloud.rollout.gates import GateResult

    return StratumVerdict("s", {"queued": in_flight, "succeeded": 3},
                          [GateResult(f"g{i}", s, None, None, "m") for i, s in enumerate(statuses)], halted)


SPEC = RolloutSpec.model_validate({"name": "r", "release": {"package_id": "p"}, "target": {"all_devices": True},
                                   "stages": [{"percent": 10}, {"percent": 100}], "soak_s": 60,
                                   "gates": {"gate_wait_s": 100}})


@pytest.mark.parametrize("verdicts, elapsed_s, stage, expected", [
    ({"a": _verdict([GateStatus.PASS])}, 61, 0, Action.PROMOTE),
    ({"a": _verdict([GateStatus.PASS])}, 61, 1, Action.COMPLETE),
    ({"a": _verdict([GateStatus.PASS])}, 30, 0, Action.WAIT),  # soaking
    ({"a": _verdict([GateStatus.PASS], in_flight=1)}, 500, 0, Action.WAIT),  # devices still installing
    ({"a": _verdict([GateStatus.INSUFFICIENT])}, 100, 0, Action.WAIT),  # collecting samples
    ({"a": _verdict([GateStatus.INSUFFICIENT])}, 161, 0, Action.AWAIT_APPROVAL),  # never promote on no evidence
    ({"a": _verdict([GateStatus.FAIL]), "b": _verdict([GateStatus.PASS])}, 1, 0, Action.HALT_STRATA),
    ({"a": _verdict([GateStatus.FAIL]), "b": _verdict([GateStatus.FAIL])}, 1, 0, Action.ABORT),
    ({"a": _verdict([GateStatus.FAIL]), "b": _verdict([GateStatus.PASS], halted=True)}, 1, 0, Action.ABORT),
])
def test_decide_stage(verdicts: dict[str, StratumVerdict], elapsed_s: float, stage: int, expected: Action) -> None:
    decision = decide_stage(SPEC, stage=stage, phase="install", verdicts=verdicts, elapsed_s=elapsed_s)
    assert decision.action == expected, decision.reason
    assert decision.numbers["strata"].keys() == verdicts.keys()  # the numbers travel with it


def test_failure_aborts_whole_rollout_when_configured() -> None:
    spec = SPEC.model_copy(update={"on_gate_failure": "abort"})
    decision = decide_stage(spec, stage=0, phase="install", elapsed_s=1,
                            verdicts={"a": _verdict([GateStatus.FAIL]), "b": _verdict([GateStatus.PASS])})
    assert decision.action == Action.ABORT and decision.failed_strata == ["a"]


def test_stage_requiring_approval_pauses_after_passing() -> None:
    spec = SPEC.model_copy(update={"stages": [SPEC.stages[0].model_copy(update={"require_approval": True}),
                                              SPEC.stages[1]]})
    decision = decide_stage(spec, stage=0, phase="install", elapsed_s=61, verdicts={"a": _verdict([GateStatus.PASS])})
    assert decision.action == Action.AWAIT_APPROVAL


def test_operator_actions() -> None:
    assert apply_operator_action(RolloutState.RUNNING, OperatorAction.PAUSE) == RolloutState.PAUSED
    assert apply_operator_action(RolloutState.PAUSED, OperatorAction.RESUME) == RolloutState.RUNNING
    assert apply_operator_action(RolloutState.AWAITING_APPROVAL, OperatorAction.APPROVE) == RolloutState.RUNNING
    assert apply_operator_action(RolloutState.RUNNING, OperatorAction.ABORT) == RolloutState.ABORTING
    assert apply_operator_action(RolloutState.ABORTING, OperatorAction.CANCEL) == RolloutState.CANCELLED
    with pytest.raises(InvalidAction, match="cannot resume a rollout that is running"):
        apply_operator_action(RolloutState.RUNNING, OperatorAction.RESUME)
    with pytest.raises(InvalidAction):
        apply_operator_action(RolloutState.COMPLETED, OperatorAction.ABORT)


def test_interim_looks_need_stronger_evidence_for_a_class_shift() -> None:
    # A modest shift (p about 2e-4): enough at the decision, not on one of many interim looks.
    canary = _windows(1, classes={"circle": 24, "cross": 12, "square": 12, "triangle": 12})
    control = _windows(10, prefix="c", classes={"circle": 25, "cross": 25, "square": 25, "triangle": 25})
    thresholds = GateThresholds(class_distribution_min_tvd=0.1, min_frames=100, frames_per_independent_sample=1)

    def status(interim: bool) -> GateStatus:
        results = evaluate_stratum(thresholds, installs=InstallOutcomes(succeeded=1),
                                   canary=aggregate(canary), control=aggregate(control), interim=interim)
        return next(r.status for r in results if r.gate == "class_distribution")

    assert status(interim=False) == GateStatus.FAIL
    assert status(interim=True) == GateStatus.PASS


def test_drift_gate_only_when_drift_is_reported() -> None:
    canary, control = aggregate(_windows(3)), aggregate(_windows(10, prefix="c"))
    names = {r.gate for r in evaluate_stratum(GateThresholds(), installs=InstallOutcomes(succeeded=3),
                                              canary=canary, control=control)}
    assert "drift_score" not in names
    canary.drift_scores, control.drift_scores = [5.0, 6.0, 7.0], [0.5, 1.0, 0.8]
    results = {r.gate: r.status for r in evaluate_stratum(GateThresholds(), installs=InstallOutcomes(succeeded=3),
                                                          canary=canary, control=control)}
    assert results["drift_score"] == GateStatus.FAIL
