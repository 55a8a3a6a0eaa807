"""Starting a deployment: create the jobs, then publish one command per device."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session

from cloud.core.plane import Plane
from cloud.errors import ConflictError, UnavailableError
from cloud.fleet import crud
from cloud.fleet.tables import Deployment, DeviceJob
from cloud.governance import audit
from cloud.rollout.commands import resync_command


@dataclass(frozen=True)
class ResyncSent:
    device_id: str
    job_id: str
    seq: int


def start_deployment(
    plane: Plane, session: Session, package_id: str, device_ids: list[str], *, rollback: bool = False,
    actor: str = "operator",
) -> tuple[Deployment, list[DeviceJob]]:
    """``rollback`` signs the commands as a deliberate return to an older release; without
    it devices refuse a package older than the one they installed (``package_downgrade``)."""
    package = crud.get_package(session, package_id)
    if plane.security.tuf.is_withdrawn(package_id):
        raise ConflictError(f"package {package_id} was withdrawn from the signed targets; devices would refuse it. "
                            "Deploy a newer package")
    plane.security.ensure_signed(package_id)  # 409 while its targets signature is pending offline
    deployment, commands = crud.create_deployment(
        session, package, device_ids, base_url=plane.base_url, command_ttl_s=plane.settings.command_ttl_s,
        rollback=rollback,
    )
    assert plane.mqtt is not None, "control plane is not connected to a broker"
    audit.record(session, actor=actor, action="deployment.created", subject_type="deployment",
                 subject_id=deployment.id, details={"package_id": package_id, "model_version": package.model_version,
                                                    "device_ids": sorted(device_ids)[:200]})
    session.commit()
    for command in commands:
        plane.mqtt.publish_command(command)
    return crud.get_deployment(session, deployment.id)


def resync_device(plane: Plane, session: Session, device_id: str) -> ResyncSent:
    """Send ``device_id`` a director-signed resync: its command seq base becomes the control
    plane's current counter for it, so the next command is accepted again.

    For after a database restore (the counter went back) or a command with an out-of-window
    seq. The device reports the outcome on the resync's job id.

    Raises:
        NotFound: no such device.
        UnavailableError: the control plane has no broker connection.
    """
    device = crud.get_device(session, device_id)
    if plane.mqtt is None:
        raise UnavailableError("the control plane is not connected to a broker; cannot send the resync")
    command = plane.security.director.sign(resync_command(
        device_id=device.id, job_id=crud.short_id("resync"), seq=device.command_seq, now=datetime.now(UTC)))
    plane.mqtt.publish_command(command)
    return ResyncSent(device_id=device.id, job_id=command.job_id, seq=command.seq)
