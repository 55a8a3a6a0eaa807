"""The one place a deploy command is built, for plain deployments and rollouts alike."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from agent.contract import MANIFEST_FILE, DeployCommand, ResyncCommand
from cloud.fleet.tables import Package

__all__ = ["RESYNC_TTL_S", "deploy_command", "manifest_url", "resync_command"]

# A resync is sent to a device that is online; it needs no longer than a deploy to arrive.
RESYNC_TTL_S = 600


def manifest_url(base_url: str, package_id: str) -> str:
    """Where devices fetch a package's manifest (its files sit beside it)."""
    return f"{base_url}/api/v1/packages/{package_id}/files/{MANIFEST_FILE}"


def deploy_command(package: Package, *, device_id: str, job_id: str, seq: int, base_url: str,
                   expires_at: datetime, rollback: bool = False, **mode: Any) -> DeployCommand:
    """An unsigned command naming ``package`` for one device; the bridge signs it on the way out.

    ``rollback`` marks a deliberate return to an older release (an operator's ``--rollback``,
    a rollout's abort); without it a device refuses a package older than the one it installed.
    ``mode`` carries the optional shadow fields (``mode="shadow"``, sample fraction, duration).
    """
    return DeployCommand(device_id=device_id, job_id=job_id, package_id=package.id,
                         model_version=package.model_version, manifest_url=manifest_url(base_url, package.id),
                         manifest_sha256=package.manifest_sha256, seq=seq, expires_at=expires_at,
                         rollback=rollback, **mode)


def resync_command(*, device_id: str, job_id: str, seq: int, now: datetime,
                   ttl_s: int = RESYNC_TTL_S) -> ResyncCommand:
    """An unsigned command setting the device's command seq base to ``seq`` (the control
    plane's current counter for it), so that its next command (``seq + 1``) is accepted."""
    return ResyncCommand(device_id=device_id, job_id=job_id, seq=seq, issued_at=now,
                         expires_at=now + timedelta(seconds=ttl_s))
