"""Staged rollouts gated on device health and model quality.

Pure core: :mod:`~cloud.rollout.spec` (what operators submit), :mod:`~cloud.rollout.planner`
(devices per stratum and stage), :mod:`~cloud.rollout.gates` (statistics against a
control group) and :mod:`~cloud.rollout.decisions` (device transitions, stage verdicts,
operator actions). I/O shell: :mod:`~cloud.rollout.engine`, :mod:`~cloud.rollout.service`.
"""

from cloud.rollout.decisions import Action, DeviceState, OperatorAction, RolloutState
from cloud.rollout.planner import DeviceFacts, Plan, PlanError, plan_rollout
from cloud.rollout.spec import RolloutSpec, SpecError, load_spec, parse_spec

__all__ = [
    "Action",
    "DeviceFacts",
    "DeviceState",
    "OperatorAction",
    "Plan",
    "PlanError",
    "RolloutSpec",
    "RolloutState",
    "SpecError",
    "load_spec",
    "parse_spec",
    "plan_rollout",
]
