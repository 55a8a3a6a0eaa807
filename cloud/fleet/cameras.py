"""Cameras managed from the control plane: each device's desired set, checked, stored,
audited and sent as one director-signed :class:`~agent.contract.CameraConfigCommand`; and
the set each device reports running, stored from its status.

The desired set is the whole truth for a device once an operator first changes it. Until
then the device runs its config file's cameras (revision 0), and the first change starts
from what the device reports running, so adding a camera never stops the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from agent.contract import CameraConfigCommand, CameraRegion, CameraSpec, DeviceState, StatusReport
from agent.contract.cameras import camera_set_problems
from cloud.core.timestamps import utc_now
from cloud.errors import ConflictError, InvalidInputError
from cloud.fleet import crud
from cloud.fleet.camera_reports import set_row as _set_row
from cloud.fleet.camera_tables import DeviceCamera, DeviceCameraSet
from cloud.fleet.tables import Package
from cloud.governance import audit

if TYPE_CHECKING:
    from cloud.core.plane import Plane

__all__ = ["CameraIn", "CameraPublic", "CameraSetPublic", "CameraSetSent", "add_camera", "camera_set",
           "remove_camera", "replace_cameras", "resend_when_behind", "update_camera"]

log = logging.getLogger(__name__)


# --- API shapes ---------------------------------------------------------------------------
class CameraIn(BaseModel):
    """One camera as an operator gives it. Credentials only as ``{secret:NAME}`` in the URL."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="1-32 letters, digits, '_' or '-'")
    source: str = Field(max_length=2048, description="rtsp://{secret:NAME}@host/path, a file, a device index, "
                                                     "or synthetic:<seed>")
    target_fps: float = Field(default=5.0, ge=0, le=120)
    region: CameraRegion | None = None
    package_id: str | None = Field(default=None, max_length=64)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    def spec(self, name: str | None = None) -> CameraSpec:
        return CameraSpec(name=name or self.name, source=self.source, target_fps=self.target_fps,
                          region=self.region, package_id=self.package_id, rtsp_transport=self.rtsp_transport)


class CameraSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: list[CameraIn] = Field(max_length=16)


class CameraReported(BaseModel):
    state: str
    error_code: str | None = None
    frames_processed: int = 0
    serving_package_id: str | None = None


class CameraPublic(BaseModel):
    name: str
    source: str
    target_fps: float
    region: CameraRegion | None = None
    package_id: str | None = None
    rtsp_transport: str = "tcp"
    # What the device last reported for this camera (None: not running there yet).
    reported: CameraReported | None = None
    # The device runs exactly this spec.
    applied: bool = False


class CameraSetPublic(BaseModel):
    device_id: str
    # 0 until the device's cameras were first changed here (it runs its config file's then).
    desired_revision: int
    applied_revision: int | None
    in_sync: bool
    rejected_revision: int | None = None
    error_code: str | None = None
    error: str | None = None
    reported_at: datetime | None = None
    cameras: list[CameraPublic]
    # Cameras the device runs that are not in the desired set (being removed, or revision 0).
    not_desired: list[CameraPublic] = Field(default_factory=list)


@dataclass(frozen=True)
class CameraSetSent:
    revision: int
    job_id: str | None  # None when the control plane has no broker (sent when the set next changes)


# --- reading ---------------------------------------------------------------------------------
def _desired_rows(session: Session, device_id: str) -> list[DeviceCamera]:
    return list(session.exec(select(DeviceCamera).where(col(DeviceCamera.device_id) == device_id)
                             .order_by(col(DeviceCamera.id))))


def _spec_of_row(row: DeviceCamera) -> CameraSpec:
    return CameraSpec(name=row.name, source=row.source, target_fps=row.target_fps,
                      region=CameraRegion.model_validate(row.region) if row.region else None,
                      package_id=row.package_id, rtsp_transport=row.rtsp_transport)  # type: ignore[arg-type]


def _reported_specs(row: DeviceCameraSet) -> dict[str, tuple[CameraSpec, CameraReported]]:
    reported: dict[str, tuple[CameraSpec, CameraReported]] = {}
    for entry in row.reported:
        try:
            spec = CameraSpec.model_validate(entry["spec"])
        except (KeyError, TypeError, ValueError):
            continue
        reported[spec.name] = (spec, CameraReported(
            state=str(entry.get("state", "")), error_code=entry.get("error_code"),
            frames_processed=int(entry.get("frames_processed", 0)), serving_package_id=entry.get("serving_package_id")))
    return reported


def _public(spec: CameraSpec, reported: tuple[CameraSpec, CameraReported] | None) -> CameraPublic:
    return CameraPublic(**spec.model_dump(), reported=reported[1] if reported else None,
                        applied=reported is not None and reported[0] == spec)


def camera_set(session: Session, device_id: str) -> CameraSetPublic:
    """The device's desired cameras beside what it reports running.

    Raises:
        NotFound: no such device.
    """
    crud.get_device(session, device_id)
    row = _set_row(session, device_id)
    reported = _reported_specs(row)
    desired = [_spec_of_row(r) for r in _desired_rows(session, device_id)]
    if row.desired_revision == 0:
        desired = [spec for spec, _ in reported.values()]  # never changed here: the config file's cameras
    names = {spec.name for spec in desired}
    return CameraSetPublic(
        device_id=device_id, desired_revision=row.desired_revision, applied_revision=row.applied_revision,
        in_sync=(row.applied_revision or 0) == row.desired_revision and row.applied_revision is not None,
        rejected_revision=row.rejected_revision, error_code=row.error_code, error=row.error,
        reported_at=row.reported_at,
        cameras=[_public(spec, reported.get(spec.name)) for spec in desired],
        not_desired=[_public(spec, (spec, state)) for name, (spec, state) in reported.items() if name not in names],
    )


# --- changing ----------------------------------------------------------------------------------
def _current_desired(session: Session, device_id: str, row: DeviceCameraSet) -> list[CameraSpec]:
    """The set a change starts from: the stored desired set, or, before the first change, what
    the device reports running (so adding a camera keeps its config file's cameras)."""
    if row.desired_revision > 0:
        return [_spec_of_row(r) for r in _desired_rows(session, device_id)]
    seeded = [spec for spec, _ in _reported_specs(row).values()]
    problems = camera_set_problems(seeded) if seeded else []
    if problems:
        raise ConflictError(
            f"device {device_id} runs cameras from its config file that cannot be carried over ({problems[0]}); "
            f"send its whole camera set with PUT /api/v1/devices/{device_id}/cameras, credentials as "
            "{secret:NAME} references")
    return seeded


def _check(session: Session, specs: list[CameraSpec]) -> None:
    problems = camera_set_problems(specs)
    wanted_packages = {spec.package_id for spec in specs if spec.package_id is not None}
    if wanted_packages:
        known = set(session.exec(select(Package.id).where(col(Package.id).in_(sorted(wanted_packages)))))
        problems += [f"package {package_id!r} does not exist; list packages with `edgefleet package list`"
                     for package_id in sorted(wanted_packages - known)]
    if problems:
        raise InvalidInputError("; ".join(problems))


def _store_and_send(plane: Plane, session: Session, device_id: str, row: DeviceCameraSet, specs: list[CameraSpec],
                    *, actor: str, action: str, details: dict[str, Any]) -> CameraSetSent:
    """Replace the stored desired set, bump its revision and the device's command seq, audit,
    commit, then publish the signed command (after the commit: a command never names a
    revision the database does not hold)."""
    _check(session, specs)
    device = crud.get_device(session, device_id)
    for old in _desired_rows(session, device_id):
        session.delete(old)
    session.flush()
    now = utc_now()
    for spec in specs:
        session.add(DeviceCamera(device_id=device_id, name=spec.name, source=spec.source, target_fps=spec.target_fps,
                                 region=spec.region.model_dump() if spec.region else None,
                                 package_id=spec.package_id, rtsp_transport=spec.rtsp_transport,
                                 updated_at=now))
    row.desired_revision += 1
    device.command_seq += 1
    job_id = crud.short_id("cams")
    command = CameraConfigCommand(device_id=device_id, job_id=job_id, revision=row.desired_revision, cameras=specs,
                                  seq=device.command_seq,
                                  expires_at=datetime.now(UTC) + timedelta(seconds=plane.settings.command_ttl_s))
    sent = plane.mqtt is not None
    row.last_job_id, row.sent_at = (job_id, now) if sent else (row.last_job_id, row.sent_at)
    session.add_all([row, device])
    audit.record(session, actor=actor, action=action, subject_type="device", subject_id=device_id,
                 details={**details, "revision": row.desired_revision, "cameras": [s.name for s in specs],
                          "job_id": job_id if sent else None})
    session.commit()
    if plane.mqtt is None:
        log.warning("no broker: camera set revision %d of %s is stored, not sent", row.desired_revision, device_id)
        return CameraSetSent(revision=row.desired_revision, job_id=None)
    plane.mqtt.publish_command(plane.security.director.sign(command))
    return CameraSetSent(revision=row.desired_revision, job_id=job_id)


def _locked_set_row(session: Session, device_id: str) -> DeviceCameraSet:
    crud.get_device(session, device_id)
    row = session.exec(select(DeviceCameraSet).where(col(DeviceCameraSet.device_id) == device_id)
                       .with_for_update()).first()
    return row or DeviceCameraSet(device_id=device_id)


def _describe(spec: CameraSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def replace_cameras(plane: Plane, session: Session, device_id: str, cameras: list[CameraIn], *,
                    actor: str) -> CameraSetSent:
    """Make ``cameras`` the device's whole camera set.

    Raises:
        NotFound: no such device. InvalidInputError: a camera or the set breaks the rules (the message
        says what to fix).
    """
    row = _locked_set_row(session, device_id)
    specs = [camera.spec() for camera in cameras]
    return _store_and_send(plane, session, device_id, row, specs, actor=actor, action="cameras.replaced",
                           details={"specs": [_describe(s) for s in specs][:16]})


def add_camera(plane: Plane, session: Session, device_id: str, camera: CameraIn, *, actor: str) -> CameraSetSent:
    """Add one camera. Raises ConflictError when the device already has a camera of that name."""
    row = _locked_set_row(session, device_id)
    current = _current_desired(session, device_id, row)
    if any(spec.name == camera.name for spec in current):
        raise ConflictError(f"device {device_id} already has a camera {camera.name!r}; change it with "
                            f"PUT /api/v1/devices/{device_id}/cameras/{camera.name} or pick another name")
    spec = camera.spec()
    return _store_and_send(plane, session, device_id, row, [*current, spec], actor=actor, action="camera.added",
                           details={"name": spec.name, "spec": _describe(spec)})


def update_camera(plane: Plane, session: Session, device_id: str, name: str, camera: CameraIn, *,
                  actor: str) -> CameraSetSent:
    """Change one camera (its name stays ``name``). Raises NotFound when it does not exist."""
    row = _locked_set_row(session, device_id)
    current = _current_desired(session, device_id, row)
    if not any(spec.name == name for spec in current):
        raise crud.NotFound(f"device {device_id} has no camera {name!r}; add it with POST "
                            f"/api/v1/devices/{device_id}/cameras")
    spec = camera.spec(name)
    return _store_and_send(plane, session, device_id, row, [spec if s.name == name else s for s in current],
                           actor=actor, action="camera.changed", details={"name": name, "spec": _describe(spec)})


def remove_camera(plane: Plane, session: Session, device_id: str, name: str, *, actor: str) -> CameraSetSent:
    """Remove one camera. Raises NotFound when it does not exist, ConflictError for the last one."""
    row = _locked_set_row(session, device_id)
    current = _current_desired(session, device_id, row)
    remaining = [spec for spec in current if spec.name != name]
    if len(remaining) == len(current):
        raise crud.NotFound(f"device {device_id} has no camera {name!r}")
    if not remaining:
        raise ConflictError(f"{name!r} is the last camera of {device_id}; a device needs at least one. "
                            "Add the replacement first, then remove this one")
    return _store_and_send(plane, session, device_id, row, remaining, actor=actor, action="camera.removed",
                           details={"name": name})


# --- repair --------------------------------------------------------------------------------------
def resend_when_behind(plane: Plane, session: Session, report: object) -> None:
    """An ingest listener: a device online with an older camera set than desired, whose last camera
    command expired before it was applied (the device was offline), gets the desired set again
    with a fresh ``seq``. A set the device refused is not resent: an operator must change it."""
    if (not isinstance(report, StatusReport) or report.cameras is None or report.state != DeviceState.ONLINE
            or plane.mqtt is None):
        return
    with Session(plane.engine) as own:
        row = own.get(DeviceCameraSet, report.device_id)
        if (row is None or row.desired_revision == 0 or report.cameras.applied_revision >= row.desired_revision
                or report.cameras.rejected_revision == row.desired_revision):
            return
        if row.sent_at is not None and utc_now() - row.sent_at < timedelta(seconds=plane.settings.command_ttl_s):
            return  # still in flight
        device = crud.get_device(own, report.device_id)
        device.command_seq += 1
        command = CameraConfigCommand(
            device_id=device.id, job_id=crud.short_id("cams"), revision=row.desired_revision,
            cameras=[_spec_of_row(r) for r in _desired_rows(own, device.id)], seq=device.command_seq,
            expires_at=datetime.now(UTC) + timedelta(seconds=plane.settings.command_ttl_s))
        row.last_job_id, row.sent_at = command.job_id, utc_now()
        own.add_all([row, device])
        own.commit()
    log.info("device %s runs camera set revision %d of %d: sent it again (job %s)", report.device_id,
             report.cameras.applied_revision, command.revision, command.job_id)
    plane.mqtt.publish_command(plane.security.director.sign(command))
