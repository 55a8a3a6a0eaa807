"""The install state machine: states, one transition table, the resume table.

Pure: no disk, no network, no clock. :mod:`agent.update.manager` persists the
record *before* each step and performs the step; this module only says which
state comes next, so every path (including crash recovery) is testable as data.
Modelled on Mender's client: an enum of states, a table of transitions, a resume
map consulted at start-up, and a counter that breaks crash loops.
"""

from __future__ import annotations

from enum import StrEnum

from agent.contract import JobState


class InstallState(StrEnum):
    IDLE = "idle"
    DOWNLOAD = "download"
    VERIFY = "verify"
    STAGE = "stage"
    SELF_TEST = "self_test"
    SELECT_RUNTIME = "select_runtime"
    SWITCH = "switch"
    PROBATION = "probation"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    # A failure before the switch: the running model was never touched; discard
    # the staged slot and report the failure.
    ABORT = "abort"


S = InstallState

# state -> (next state when the step succeeds, next state when it fails)
TRANSITIONS: dict[InstallState, tuple[InstallState, InstallState]] = {
    S.DOWNLOAD: (S.VERIFY, S.ABORT),
    S.VERIFY: (S.STAGE, S.ABORT),
    S.STAGE: (S.SELF_TEST, S.ABORT),
    S.SELF_TEST: (S.SELECT_RUNTIME, S.ABORT),
    S.SELECT_RUNTIME: (S.SWITCH, S.ABORT),
    S.SWITCH: (S.PROBATION, S.ROLLBACK),
    S.PROBATION: (S.COMMIT, S.ROLLBACK),
    S.COMMIT: (S.IDLE, S.IDLE),
    S.ROLLBACK: (S.IDLE, S.IDLE),
    S.ABORT: (S.IDLE, S.IDLE),
}

# Where to go when the agent starts and finds an install interrupted in a state.
# Before the switch nothing the device serves has changed and the staged slot is
# inactive, so the install is simply redone from the download. From the switch on
# the new model itself may be what killed the process (a runtime crashing on it),
# so the only safe move is back to the previous model. A crash while committing or
# rolling back finishes that step: both are idempotent.
RESUME: dict[InstallState, InstallState] = {
    S.IDLE: S.IDLE,
    S.DOWNLOAD: S.DOWNLOAD,
    S.VERIFY: S.DOWNLOAD,
    S.STAGE: S.DOWNLOAD,
    S.SELF_TEST: S.DOWNLOAD,
    S.SELECT_RUNTIME: S.DOWNLOAD,
    S.SWITCH: S.ROLLBACK,
    S.PROBATION: S.ROLLBACK,
    S.COMMIT: S.COMMIT,
    S.ROLLBACK: S.ROLLBACK,
    S.ABORT: S.ABORT,
}

PRE_SWITCH = frozenset({S.DOWNLOAD, S.VERIFY, S.STAGE, S.SELF_TEST, S.SELECT_RUNTIME})


def next_state(state: InstallState, *, ok: bool) -> InstallState:
    """The state after ``state``'s step succeeded (``ok``) or failed.

    Raises:
        ValueError: ``state`` has no step (``IDLE``).
    """
    if state not in TRANSITIONS:
        raise ValueError(f"install state {state.value!r} has no step to complete")
    on_ok, on_fail = TRANSITIONS[state]
    return on_ok if ok else on_fail


def resume_state(saved: InstallState, *, resumes: int, max_resumes: int) -> InstallState:
    """Where to continue after a restart found ``saved`` on disk.

    ``resumes`` counts the restarts of this install so far, including this one. Past
    ``max_resumes`` the install is looping (e.g. the runtime crashes the process on
    every self-test): stop retrying and fall back to what ran before.
    """
    target = RESUME[saved]
    if resumes > max_resumes and target not in (S.IDLE, S.COMMIT, S.ROLLBACK, S.ABORT):
        return S.ABORT if target in PRE_SWITCH else S.ROLLBACK
    return target


def job_state_for(state: InstallState) -> JobState:
    """The coarse job state the control plane sees while the agent is in ``state``."""
    if state is S.DOWNLOAD:
        return JobState.DOWNLOADING
    if state is S.VERIFY:
        return JobState.VERIFYING
    return JobState.INSTALLING
