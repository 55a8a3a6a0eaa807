"""Starting a deployment: create the jobs, then publish one command per device."""

from __future__ import annotations

from sqlmodel import Session

from cloud.core.plane import Plane
from cloud.fleet import crud
from cloud.fleet.tables import Deployment, DeviceJob
from cloud.governance import audit


def start_deployment(
    plane: Plane, session: Session, package_id: str, device_ids: list[str], *, actor: str = "operator"
) -> tuple[Deployment, list[DeviceJob]]:
    package = crud.get_package(session, package_id)
    plane.security.ensure_signed(package_id)  # 409 while its targets signature is pending offline
    deployment, commands = crud.create_deployment(
        session, package, device_ids, base_url=plane.base_url, command_ttl_s=plane.settings.command_ttl_s
    )
    assert plane.mqtt is not None, "control plane is not connected to a broker"
    audit.record(session, actor=actor, action="deployment.created", subject_type="deployment",
                 subject_id=deployment.id, details={"package_id": package_id, "model_version": package.model_version,
                                                    "device_ids": sorted(device_ids)[:200]})
    session.commit()
    for command in commands:
        plane.mqtt.publish_command(command)
    return crud.get_deployment(session, deployment.id)
