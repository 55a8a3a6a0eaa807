from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.fleet import crud
from cloud.fleet.deploy import start_deployment
from cloud.fleet.tables import DeploymentCreate, DeploymentPublic, DeviceJobPublic

router = APIRouter(prefix="/deployments", tags=["deployments"])


def _public(deployment, jobs) -> DeploymentPublic:  # type: ignore[no-untyped-def]
    return DeploymentPublic(
        id=deployment.id,
        package_id=deployment.package_id,
        state=deployment.state,
        created_at=deployment.created_at,
        jobs=[DeviceJobPublic.model_validate(job, from_attributes=True) for job in jobs],
    )


@router.post("", response_model=DeploymentPublic, status_code=201)
def create_deployment(body: DeploymentCreate, session: SessionDep, plane: PlaneDep, actor: ActorDep) -> DeploymentPublic:
    deployment, jobs = start_deployment(plane, session, body.package_id, body.device_ids,
                                       rollback=body.rollback, actor=actor)
    return _public(deployment, jobs)


@router.get("", response_model=list[DeploymentPublic])
def list_deployments(session: SessionDep) -> list[DeploymentPublic]:
    return [_public(d, []) for d in crud.list_deployments(session)]


@router.get("/{deployment_id}", response_model=DeploymentPublic)
def get_deployment(deployment_id: str, session: SessionDep) -> DeploymentPublic:
    return _public(*crud.get_deployment(session, deployment_id))
