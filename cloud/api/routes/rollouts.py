"""Staged rollouts: create, dry-run, inspect, and operator actions; device labels."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import ActorDep, SessionDep
from cloud.rollout import service
from cloud.rollout.decisions import OperatorAction
from cloud.rollout.spec import Label, RolloutSpec

router = APIRouter(tags=["rollouts"])


class DeviceLabels(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[Label] = Field(default_factory=list, max_length=64)
    groups: list[Label] = Field(default_factory=list, max_length=64)


@router.post("/rollouts/plan")
def plan_rollout(spec: RolloutSpec, session: SessionDep) -> dict[str, Any]:
    """Dry run: the devices each stage would take now, per stratum. Nothing is stored."""
    return service.plan_for_spec(session, spec).as_dict()


@router.post("/rollouts", status_code=201)
def create_rollout(spec: RolloutSpec, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    rollout = service.create_rollout(session, spec, actor=actor)
    return service.rollout_detail(session, rollout.id)


@router.get("/rollouts")
def list_rollouts(session: SessionDep) -> list[dict[str, Any]]:
    return [{"id": r.id, "name": r.name, "state": r.state, "stage": r.stage, "phase": r.phase,
             "stages": len(r.spec.get("stages", [])), "created_at": r.created_at, "finished_at": r.finished_at}
            for r in service.list_rollouts(session)]


@router.get("/rollouts/{rollout_id}")
def show_rollout(rollout_id: str, session: SessionDep, cameras: bool = True) -> dict[str, Any]:
    """The rollout; with ``cameras`` (default) each stage's devices with their cameras' figures
    (``stage_devices``). Pollers that only follow its state pass ``cameras=false``."""
    return service.rollout_detail(session, rollout_id, cameras=cameras)


@router.get("/rollouts/{rollout_id}/devices")
def rollout_devices(rollout_id: str, session: SessionDep) -> list[dict[str, Any]]:
    """The rollout's devices, each with its cameras' figures (from ``service.cameras_since``)."""
    rollout = service.get_rollout(session, rollout_id)
    rows = service.rollout_devices(session, rollout_id)
    cameras = service.device_cameras(session, [r.device_id for r in rows], service.cameras_since(rollout))
    return [{"device_id": r.device_id, "stratum": r.stratum, "stage": r.stage, "state": r.state,
             "reason": r.reason, "attempts": r.attempts, "package_id": r.package_id,
             "previous_package_id": r.previous_package_id, "job_id": r.job_id, "restarts": r.restarts,
             "state_since": r.state_since, "cameras": cameras.get(r.device_id, [])}
            for r in rows]


@router.post("/rollouts/{rollout_id}/{action}")
def act_on_rollout(rollout_id: str, action: OperatorAction, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """approve, pause, resume, abort (roll touched devices back) or cancel (stop at once, no rollback)."""
    service.operator_action(session, rollout_id, action, actor=actor)
    return service.rollout_detail(session, rollout_id)


@router.put("/devices/{device_id}/labels")
def set_device_labels(device_id: str, labels: DeviceLabels, session: SessionDep) -> dict[str, list[str]]:
    return service.set_labels(session, device_id, tags=labels.tags, groups=labels.groups)


@router.get("/devices/{device_id}/labels")
def get_device_labels(device_id: str, session: SessionDep) -> dict[str, list[str]]:
    return service.get_labels(session, device_id)
