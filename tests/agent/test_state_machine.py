"""The install state machine and probation decisions as data: no broker, no disk."""

from __future__ import annotations

import pytest

from agent.update.machine import RESUME, TRANSITIONS, InstallState, job_state_for, next_state, resume_state
from agent.update.probation import Baseline, Evidence, ProbationLimits, Verdict, judge

S = InstallState


def test_happy_path_walks_every_step_in_order() -> None:
    chain, state = [], S.DOWNLOAD
    while state is not S.IDLE:
        chain.append(state)
        state = next_state(state, ok=True)
    assert chain == [S.DOWNLOAD, S.VERIFY, S.STAGE, S.SELF_TEST, S.SELECT_RUNTIME, S.SWITCH, S.PROBATION, S.COMMIT]


@pytest.mark.parametrize(("state", "on_failure"), [
    (S.DOWNLOAD, S.ABORT), (S.VERIFY, S.ABORT), (S.STAGE, S.ABORT), (S.SELF_TEST, S.ABORT),
    (S.SELECT_RUNTIME, S.ABORT), (S.SWITCH, S.ROLLBACK), (S.PROBATION, S.ROLLBACK),
])
def test_failure_before_the_switch_aborts_and_after_it_rolls_back(state: InstallState, on_failure: InstallState) -> None:
    assert next_state(state, ok=False) is on_failure
    assert next_state(on_failure, ok=True) is S.IDLE


def test_every_state_has_a_resume_entry_and_every_step_a_transition() -> None:
    assert set(RESUME) == set(S)
    assert set(TRANSITIONS) == set(S) - {S.IDLE}
    with pytest.raises(ValueError, match="no step"):
        next_state(S.IDLE, ok=True)


@pytest.mark.parametrize(("saved", "resumed"), [
    (S.IDLE, S.IDLE), (S.DOWNLOAD, S.DOWNLOAD), (S.VERIFY, S.DOWNLOAD), (S.STAGE, S.DOWNLOAD),
    (S.SELF_TEST, S.DOWNLOAD), (S.SELECT_RUNTIME, S.DOWNLOAD), (S.SWITCH, S.ROLLBACK), (S.PROBATION, S.ROLLBACK),
    (S.COMMIT, S.COMMIT), (S.ROLLBACK, S.ROLLBACK), (S.ABORT, S.ABORT),
])
def test_resume_table(saved: InstallState, resumed: InstallState) -> None:
    assert resume_state(saved, resumes=1, max_resumes=3) is resumed


@pytest.mark.parametrize(("saved", "forced"), [
    (S.DOWNLOAD, S.ABORT), (S.SELF_TEST, S.ABORT), (S.SWITCH, S.ROLLBACK), (S.PROBATION, S.ROLLBACK),
    (S.COMMIT, S.COMMIT), (S.ROLLBACK, S.ROLLBACK),
])
def test_loop_counter_forces_the_way_back(saved: InstallState, forced: InstallState) -> None:
    assert resume_state(saved, resumes=4, max_resumes=3) is forced


def test_job_states_the_cloud_sees() -> None:
    assert [job_state_for(s).value for s in (S.DOWNLOAD, S.VERIFY, S.STAGE, S.PROBATION)] == [
        "downloading", "verifying", "installing", "installing"]


LIMITS = ProbationLimits(window_s=10, min_frames=20, max_error_ratio=0.1, max_invalid_outputs=0,
                         max_p95_latency_ratio=3.0, min_confidence_ratio=0.5, max_wait_s=60)
BASE = Baseline(p95_latency_ms=4.0, mean_confidence=0.8)


def _evidence(**fields: float | int | None) -> Evidence:
    values: dict[str, float | int | None] = {"elapsed_s": 11.0, "frames": 100, "errors": 0, "invalid_outputs": 0,
                                             "p95_latency_ms": 4.5, "mean_confidence": 0.8}
    values.update(fields)
    return Evidence(**values)


@pytest.mark.parametrize(("evidence", "baseline", "expected"), [
    (_evidence(), BASE, (Verdict.PASS, "healthy")),
    (_evidence(elapsed_s=2.0), BASE, (Verdict.CONTINUE, "observing")),
    (_evidence(elapsed_s=2.0, invalid_outputs=1), BASE, (Verdict.FAIL, "invalid_outputs")),
    (_evidence(errors=20), BASE, (Verdict.FAIL, "error_rate")),
    (_evidence(p95_latency_ms=20.0), BASE, (Verdict.FAIL, "latency")),
    (_evidence(p95_latency_ms=11.9), BASE, (Verdict.PASS, "healthy")),
    (_evidence(mean_confidence=0.3), BASE, (Verdict.FAIL, "confidence_collapse")),
    (_evidence(frames=5), BASE, (Verdict.CONTINUE, "observing")),
    (_evidence(frames=5, elapsed_s=61.0), BASE, (Verdict.PASS, "too_few_frames")),
    # A first install has no previous model to compare latency or confidence with.
    (_evidence(p95_latency_ms=500.0, mean_confidence=0.01), Baseline(), (Verdict.PASS, "healthy")),
])
def test_probation_verdicts(evidence: Evidence, baseline: Baseline, expected: tuple[Verdict, str]) -> None:
    assert judge(evidence, baseline, LIMITS) == expected


def test_probation_with_no_minimum_frames_judges_an_empty_window_without_dividing_by_zero() -> None:
    limits = ProbationLimits(window_s=10, min_frames=0, max_error_ratio=0.05, max_invalid_outputs=0,
                             max_p95_latency_ratio=3.0, min_confidence_ratio=0.5, max_wait_s=60)
    empty = _evidence(frames=0, p95_latency_ms=None, mean_confidence=None)
    assert judge(empty, BASE, limits) == (Verdict.PASS, "healthy")
    assert judge(_evidence(frames=0, errors=1), BASE, limits) == (Verdict.FAIL, "error_rate")
