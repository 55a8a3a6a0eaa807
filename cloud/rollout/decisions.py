"""Pure decisions: device state transitions, stage verdicts, operator actions.

The engine gathers facts from the database, calls these functions, and writes back
what they return. Nothing here reads a clock, a socket or a table: ``now`` and every
observation are arguments, so each rule is unit-tested on plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cloud.errors import ConflictError
from cloud.rollout.gates import GateResult, GateStatus
from cloud.rollout.spec import RolloutSpec, Timeouts

__all__ = [
    "ACTIVE_DEVICE_STATES",
    "FINAL_INSTALL_STATES",
    "Action",
    "Decision",
    "DeviceObservation",
    "DeviceState",
    "DeviceTransition",
    "InvalidAction",
    "OperatorAction",
    "RolloutState",
    "StratumVerdict",
    "apply_operator_action",
    "decide_stage",
    "next_device_state",
    "next_rollback_state",
]


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    ABORTING = "aborting"  # rolling touched devices back
    FINISHING = "finishing"  # every stage passed; offline stragglers may still return
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.CANCELLED)


class DeviceState(StrEnum):
    PENDING = "pending"  # planned, not yet dispatched (or waiting for a retry)
    OFFLINE = "offline"  # offline when its turn came: counted apart, dispatched on return
    QUEUED = "queued"  # command published, no acknowledgement yet
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    PROBATION = "probation"  # installed; waiting for healthy telemetry on the new version
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # offline past the expiry policy
    CANCELLED = "cancelled"  # never dispatched, rollout stopped
    HALTED = "halted"  # never dispatched, its stratum was stopped
    ROLLBACK_PENDING = "rollback_pending"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


IN_FLIGHT_STATES = frozenset({DeviceState.QUEUED, DeviceState.DOWNLOADING, DeviceState.INSTALLING,
                              DeviceState.PROBATION})
ACTIVE_DEVICE_STATES = IN_FLIGHT_STATES
FINAL_INSTALL_STATES = frozenset({DeviceState.SUCCEEDED, DeviceState.FAILED})
# Devices that may have received the candidate, and so must be rolled back on abort.
TOUCHED_STATES = frozenset({*IN_FLIGHT_STATES, DeviceState.SUCCEEDED, DeviceState.FAILED})

# Agent job states (agent.contract.JobState values, plus "queued" before any report).
_JOB_TO_DEVICE = {
    "queued": DeviceState.QUEUED,
    "received": DeviceState.DOWNLOADING,
    "downloading": DeviceState.DOWNLOADING,
    "verifying": DeviceState.DOWNLOADING,
    "installing": DeviceState.INSTALLING,
    "succeeded": DeviceState.PROBATION,
}
_FAILED_JOB_STATES = frozenset({"failed", "rejected"})


@dataclass(frozen=True)
class DeviceObservation:
    """What the engine observed about one device this tick."""

    state: DeviceState
    state_since: datetime
    attempts: int  # dispatches so far
    online: bool
    job_state: str | None  # the device job's state in the database, None before dispatch
    job_error: str | None = None
    running_package_id: str | None = None
    target_package_id: str = ""
    # Telemetry windows with frames on the target package since the install succeeded.
    windows_on_target: int = 0


@dataclass(frozen=True)
class DeviceTransition:
    state: DeviceState
    reason: str = ""
    retry: bool = False  # dispatch again with a new job


def _timeout_for(state: DeviceState, timeouts: Timeouts) -> float | None:
    return {
        DeviceState.QUEUED: timeouts.queued_s,
        DeviceState.DOWNLOADING: timeouts.downloading_s,
        DeviceState.INSTALLING: timeouts.installing_s,
        DeviceState.PROBATION: timeouts.probation_s,
    }.get(state)


def _fail_or_retry(obs: DeviceObservation, max_retries: int, reason: str) -> DeviceTransition:
    if not obs.online and obs.state != DeviceState.QUEUED:
        # It acknowledged the command and then vanished (a crash mid-install): a failure,
        # never "offline, counted apart", or a crashing release would hide behind retries.
        return DeviceTransition(DeviceState.FAILED, f"{reason}; went offline after receiving the release")
    if obs.attempts <= max_retries:
        return DeviceTransition(DeviceState.PENDING, f"retry {obs.attempts}/{max_retries}: {reason}", retry=True)
    return DeviceTransition(DeviceState.FAILED, reason)


def next_device_state(
    obs: DeviceObservation, *, now: datetime, timeouts: Timeouts, max_retries: int, probation_min_windows: int
) -> DeviceTransition | None:
    """The device's next install state, or None when nothing changes.

    Offline devices are counted apart only *before* they received the command: a
    device that drops offline after installing the candidate is a restart signal,
    and one that stays away past its probation deadline has failed, so a crashing
    release can never hide as "offline".
    """
    age_s = (now - obs.state_since).total_seconds()
    state = obs.state
    if state == DeviceState.OFFLINE:
        if obs.online:
            return DeviceTransition(DeviceState.PENDING, "back online")
        if age_s > timeouts.offline_expiry_s:
            return DeviceTransition(DeviceState.EXPIRED, f"offline for more than {timeouts.offline_expiry_s:.0f}s")
        return None
    if state not in IN_FLIGHT_STATES:
        return None
    job = obs.job_state or "queued"
    if job in _FAILED_JOB_STATES:
        return _fail_or_retry(obs, max_retries, f"install {job}: {obs.job_error or 'no reason given'}")
    reported = _JOB_TO_DEVICE.get(job, state)
    if state == DeviceState.PROBATION:
        if obs.online and obs.running_package_id not in (None, obs.target_package_id):
            return DeviceTransition(DeviceState.FAILED, f"device went back to {obs.running_package_id} (local rollback)")
        if obs.windows_on_target >= probation_min_windows:
            return DeviceTransition(DeviceState.SUCCEEDED, f"{obs.windows_on_target} telemetry windows on the release")
        if age_s > timeouts.probation_s:
            why = "offline" if not obs.online else f"{obs.windows_on_target} windows on the release"
            return DeviceTransition(DeviceState.FAILED, f"probation timed out after {timeouts.probation_s:.0f}s ({why})")
        return None
    if reported != state and _rank(reported) > _rank(state):
        return DeviceTransition(reported, f"job {job}")
    limit = _timeout_for(state, timeouts)
    if limit is not None and age_s > limit:
        if state == DeviceState.QUEUED and not obs.online:
            # Never acknowledged and offline: it may not have the command. Counted apart.
            return DeviceTransition(DeviceState.OFFLINE, "offline before acknowledging the command")
        return _fail_or_retry(obs, max_retries, f"{state.value} timed out after {limit:.0f}s")
    return None


def _rank(state: DeviceState) -> int:
    order = [DeviceState.QUEUED, DeviceState.DOWNLOADING, DeviceState.INSTALLING, DeviceState.PROBATION]
    return order.index(state) if state in order else -1


def next_rollback_state(
    obs: DeviceObservation, *, previous_package_id: str | None, now: datetime, timeouts: Timeouts, max_retries: int
) -> DeviceTransition | None:
    """Transitions while a rollback is in progress (``target_package_id`` is the previous package)."""
    age_s = (now - obs.state_since).total_seconds()
    if obs.state == DeviceState.ROLLBACK_PENDING:
        if age_s > timeouts.offline_expiry_s:
            return DeviceTransition(DeviceState.ROLLBACK_FAILED, "offline past the expiry policy")
        return None
    if obs.state != DeviceState.ROLLING_BACK:
        return None
    if obs.online and obs.running_package_id == previous_package_id and obs.job_state == "succeeded":
        return DeviceTransition(DeviceState.ROLLED_BACK, f"running {previous_package_id} again")
    if obs.job_state in _FAILED_JOB_STATES or age_s > timeouts.rollback_s:
        why = f"rollback {obs.job_state}" if obs.job_state in _FAILED_JOB_STATES else "rollback timed out"
        if not obs.online:
            return DeviceTransition(DeviceState.ROLLBACK_PENDING, f"{why}; offline, resent on return")
        if obs.attempts <= max_retries:
            return DeviceTransition(DeviceState.ROLLBACK_PENDING, f"{why}; retrying", retry=True)
        return DeviceTransition(DeviceState.ROLLBACK_FAILED, why)
    return None


# --- stage decisions ---------------------------------------------------------
class Action(StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    AWAIT_APPROVAL = "await_approval"
    HALT_STRATA = "halt_strata"
    ABORT = "abort"
    COMPLETE = "complete"
    START_INSTALL = "start_install"  # the shadow phase passed: switch the stage's devices


@dataclass
class StratumVerdict:
    """One stratum in the current stage: device counts and gate results."""

    stratum: str
    device_states: dict[str, int]
    gates: list[GateResult]
    halted: bool = False

    @property
    def in_flight(self) -> int:
        return sum(self.device_states.get(s.value, 0) for s in IN_FLIGHT_STATES) + self.device_states.get(
            DeviceState.PENDING.value, 0)

    def failing(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == GateStatus.FAIL]

    def insufficient(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == GateStatus.INSUFFICIENT]

    def to_json(self) -> dict[str, Any]:
        return {"stratum": self.stratum, "halted": self.halted, "device_states": self.device_states,
                "gates": [g.to_json() for g in self.gates]}


@dataclass
class Decision:
    action: Action
    reason: str
    failed_strata: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


def decide_stage(
    spec: RolloutSpec,
    *,
    stage: int,
    phase: str,
    verdicts: Mapping[str, StratumVerdict],
    elapsed_s: float,
) -> Decision:
    """Promote, wait, pause for approval, halt failing strata or abort.

    ``phase`` is "shadow" while the stage's devices shadow the candidate, else "install".
    ``elapsed_s`` is the time since the phase started. Rules, in order:

    1. a failed gate in a stratum halts it (or aborts, per ``on_gate_failure``);
       every active stratum failing aborts;
    2. devices still pending or in flight: wait (their timeouts bound this);
    3. soak time not yet over: wait;
    4. a gate short of its minimum sample: wait, then pause for approval after
       ``gates.gate_wait_s``: never promote on no evidence;
    5. otherwise promote (or pause if the stage requires approval, or complete).
    """
    active = {key: v for key, v in verdicts.items() if not v.halted}
    # Reasons are for people: stages count from 1 there, as in the CLI and dashboard; the
    # ``stage`` field of ``numbers`` stays the API's 0-based index (docs/rollouts.md).
    shown = stage + 1
    numbers = {"stage": stage, "phase": phase, "elapsed_s": round(elapsed_s, 1),
               "strata": {key: v.to_json() for key, v in verdicts.items()}}
    failed = sorted(key for key, v in active.items() if v.failing())
    if failed:
        summary = "; ".join(f"{key}: " + ", ".join(f"{g.gate} ({g.message})" for g in active[key].failing())
                            for key in failed)
        if spec.on_gate_failure == "abort" or len(failed) == len(active):
            return Decision(Action.ABORT, f"gate failed in stage {shown} {phase}: {summary}", failed, numbers)
        return Decision(Action.HALT_STRATA, f"stratum stopped in stage {shown} {phase}: {summary}", failed, numbers)
    if not active:
        return Decision(Action.ABORT, "every stratum is halted", [], numbers)
    if phase == "shadow":
        soak_s = spec.shadow.duration_s if spec.shadow else 0.0
    else:
        soak_s = spec.stage_soak_s(stage)
        if any(v.in_flight for v in active.values()):
            return Decision(Action.WAIT, "devices still installing", [], numbers)
    if elapsed_s < soak_s:
        return Decision(Action.WAIT, f"soaking ({elapsed_s:.0f}/{soak_s:.0f}s)", [], numbers)
    short = {key: v.insufficient() for key, v in active.items() if v.insufficient()}
    if short:
        summary = "; ".join(f"{key}: " + ", ".join(g.gate for g in gates) for key, gates in sorted(short.items()))
        if elapsed_s >= soak_s + spec.gates.gate_wait_s:
            return Decision(Action.AWAIT_APPROVAL, f"not enough samples after {elapsed_s:.0f}s: {summary}", [],
                            numbers)
        return Decision(Action.WAIT, f"collecting samples: {summary}", [], numbers)
    if phase == "shadow":
        return Decision(Action.START_INSTALL, f"shadow phase of stage {shown} passed", [], numbers)
    if stage == len(spec.stages) - 1:
        return Decision(Action.COMPLETE, f"last stage {shown} passed every gate", [], numbers)
    if spec.stages[stage].require_approval:
        return Decision(Action.AWAIT_APPROVAL, f"stage {shown} passed; it requires approval", [], numbers)
    return Decision(Action.PROMOTE, f"stage {shown} passed every gate", [], numbers)


# --- operator actions --------------------------------------------------------
class OperatorAction(StrEnum):
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    CANCEL = "cancel"  # force-cancel: stop at once, no rollback


class InvalidAction(ConflictError):
    """The action does not apply to the rollout's current state (HTTP 409)."""


_ALLOWED: dict[OperatorAction, frozenset[RolloutState]] = {
    OperatorAction.APPROVE: frozenset({RolloutState.AWAITING_APPROVAL}),
    OperatorAction.PAUSE: frozenset({RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}),
    OperatorAction.RESUME: frozenset({RolloutState.PAUSED}),
    OperatorAction.ABORT: frozenset({RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.AWAITING_APPROVAL,
                                     RolloutState.FINISHING}),
    OperatorAction.CANCEL: frozenset({RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.AWAITING_APPROVAL,
                                      RolloutState.ABORTING, RolloutState.FINISHING}),
}


def apply_operator_action(state: RolloutState, action: OperatorAction) -> RolloutState:
    """The state after ``action``. Raises ``InvalidAction`` saying which states allow it.

    ``approve`` returns RUNNING; the engine promotes the approved stage on its next tick.
    """
    if state not in _ALLOWED[action]:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[action]))
        raise InvalidAction(f"cannot {action.value} a rollout that is {state.value}; allowed when: {allowed}")
    return {
        OperatorAction.APPROVE: RolloutState.RUNNING,
        OperatorAction.PAUSE: RolloutState.PAUSED,
        OperatorAction.RESUME: RolloutState.RUNNING,
        OperatorAction.ABORT: RolloutState.ABORTING,
        OperatorAction.CANCEL: RolloutState.CANCELLED,
    }[action]
