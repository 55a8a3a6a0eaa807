"""Air-gapped update bundles: everything a device needs to install a package with no network.

A bundle is a directory (or a ``.tar`` of one)::

    bundle.json                          what it holds and for whom (informational: devices trust only the signatures)
    metadata/<N>.root.json               every root version, so any enrolled device can walk to the newest
    metadata/<V>.targets.json            the targets as signed (online or with the offline keys)
    metadata/<V>.snapshot.json           snapshot and timestamp re-signed with the online keys
    metadata/timestamp.json              to expire with the bundle (TufRepository.bundle_metadata)
    targets/<package_id>/<sha256>.<name> the package's files, named as the TUF client asks for them
    commands/<device_id>.json            one director-signed deploy command per device

Each command is an ordinary :class:`DeployCommand` with a job in a deployment, numbered
from the device's own command sequence: the device checks it exactly as it checks one
that came over MQTT, and reports the job's outcome when it next reaches the broker.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from agent.contract import DeployCommand
from cloud.fleet import crud
from cloud.fleet.tables import Device
from cloud.governance import audit
from cloud.security.service import FleetSecurity

__all__ = ["BUNDLE_FORMAT", "ExportedBundle", "export_bundle", "parse_duration_s", "write_bundle"]

BUNDLE_FORMAT = 1
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_duration_s(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``3600`` as seconds.

    Raises:
        ValueError: not a positive duration in one of those forms.
    """
    match = _DURATION.match(text)
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration; write it like 30d, 12h, 90m or 3600s")
    return seconds


@dataclass(frozen=True)
class ExportedBundle:
    bundle_id: str
    path: Path
    package_id: str
    model_version: str
    deployment_id: str
    jobs: dict[str, str]  # device id -> job id
    expires_at: datetime


def _devices(session: Session, device_ids: list[str], profile: str | None) -> list[Device]:
    if bool(device_ids) == bool(profile):
        raise ValueError("name the devices the bundle is for: --device ID (repeatable) or --profile PROFILE, not both")
    if profile:
        devices = list(session.exec(select(Device).where(Device.hardware_profile == profile).order_by(col(Device.id))))
        if not devices:
            raise ValueError(f"no registered device has hardware profile {profile!r}")
        return devices
    found = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(device_ids)))}
    missing = sorted(set(device_ids) - set(found))
    if missing:
        raise ValueError(f"unknown device ids: {', '.join(missing[:10])}")
    return [found[d] for d in sorted(set(device_ids))]


def export_bundle(security: FleetSecurity, session: Session, package_id: str, *, out: Path, expires_in_s: int,
                  device_ids: list[str] | None = None, profile: str | None = None, actor: str = "operator",
                  now: datetime | None = None) -> ExportedBundle:
    """Write a signed bundle of ``package_id`` for the named devices (or every device of ``profile``).

    Creates a deployment with one job per device (devices report on it when they are next
    online) and advances each device's command sequence, as an online deploy does.

    Raises:
        NotFound: no such package.
        ValueError: no or unknown devices, a device whose profile the package was not built for,
            an ``out`` that exists, or an expiry beyond the signed metadata's own.
        OfflineKeyRequired: the package still awaits the offline targets signature.
    """
    if out.exists():
        raise ValueError(f"{out} exists; name a new directory or .tar file")
    package = crud.get_package(session, package_id)
    devices = _devices(session, device_ids or [], profile)
    unfit = [d.id for d in devices if d.hardware_profile not in package.hardware_profiles]
    if unfit:
        raise ValueError(f"package {package_id} is built for {', '.join(package.hardware_profiles)}; "
                         f"not for device(s) {', '.join(unfit[:10])}")
    if security.tuf.is_withdrawn(package_id):
        raise ValueError(f"package {package_id} was withdrawn from the signed targets; devices would refuse it")
    security.ensure_signed(package_id)
    expires_at = (now or datetime.now(UTC)).replace(microsecond=0) + timedelta(seconds=expires_in_s)
    metadata = security.tuf.bundle_metadata(expires_at)  # refuses an expiry past the signed metadata's
    deployment, commands = crud.create_deployment(
        session, package, [d.id for d in devices], base_url=security.settings.base_url(),
        command_ttl_s=expires_in_s)
    # create_deployment dates the commands from its own clock; the bundle's expiry is the one that counts.
    signed = [security.director.sign(c.model_copy(update={"expires_at": expires_at})) for c in commands]
    bundle_id = f"bundle-{deployment.id}"
    bundle_device_ids = sorted(c.device_id for c in signed)
    info: dict[str, object] = {
        "format": BUNDLE_FORMAT, "bundle_id": bundle_id, "package_id": package_id,
        "model_version": package.model_version, "created_at": datetime.now(UTC).isoformat(),
        "expires_at": expires_at.isoformat(), "hardware_profile": profile,
        "device_ids": bundle_device_ids, "deployment_id": deployment.id,
    }
    path = write_bundle(out, info=info, metadata=metadata, target_files=security.tuf.package_target_files(package_id),
                        package_id=package_id, commands=signed)
    audit.record(session, actor=actor, action="bundle.exported", subject_type="deployment", subject_id=deployment.id,
                 details={"package_id": package_id, "expires_at": expires_at.isoformat(), "profile": profile,
                          "device_ids": bundle_device_ids[:200]})
    session.commit()
    return ExportedBundle(bundle_id=bundle_id, path=path, package_id=package_id, model_version=package.model_version,
                          deployment_id=deployment.id, jobs={c.device_id: c.job_id for c in signed},
                          expires_at=expires_at)


def write_bundle(out: Path, *, info: dict[str, object], metadata: dict[str, bytes], target_files: list[Path],
                 package_id: str, commands: list[DeployCommand]) -> Path:
    """Lay the bundle out at ``out``: a directory, or a tar archive when ``out`` ends in ``.tar``.

    Pure of keys and database: what it writes was signed by the caller. Returns ``out``.
    """
    files: dict[str, bytes] = {"bundle.json": json.dumps(info, indent=1, sort_keys=True).encode()}
    files.update({f"metadata/{name}": data for name, data in metadata.items()})
    files.update({f"commands/{command.device_id}.json": command.to_bytes() for command in commands})
    sources = {f"targets/{package_id}/{path.name}": path for path in target_files}
    if out.suffix == ".tar":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp, "w") as archive:
            for name, data in sorted(files.items()):
                entry = tarfile.TarInfo(name)
                entry.size, entry.mode, entry.mtime = len(data), 0o644, int(datetime.now(UTC).timestamp())
                archive.addfile(entry, io.BytesIO(data))
            for name, source in sorted(sources.items()):
                archive.add(source, arcname=name, recursive=False)
        tmp.replace(out)
        return out
    tmp_dir = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    for name, data in files.items():
        (tmp_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_dir / name).write_bytes(data)
    for name, source in sources.items():
        (tmp_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp_dir / name)
    tmp_dir.rename(out)
    return out
