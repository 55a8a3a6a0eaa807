"""The one place a deploy command is built, for plain deployments and rollouts alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.contract import MANIFEST_FILE, DeployCommand
from cloud.fleet.tables import Package

__all__ = ["deploy_command", "manifest_url"]


def manifest_url(base_url: str, package_id: str) -> str:
    """Where devices fetch a package's manifest (its files sit beside it)."""
    return f"{base_url}/api/v1/packages/{package_id}/files/{MANIFEST_FILE}"


def deploy_command(package: Package, *, device_id: str, job_id: str, seq: int, base_url: str,
                   expires_at: datetime, **mode: Any) -> DeployCommand:
    """An unsigned command naming ``package`` for one device; the bridge signs it on the way out.

    ``mode`` carries the optional shadow fields (``mode="shadow"``, sample fraction, duration).
    """
    return DeployCommand(device_id=device_id, job_id=job_id, package_id=package.id,
                         model_version=package.model_version, manifest_url=manifest_url(base_url, package.id),
                         manifest_sha256=package.manifest_sha256, seq=seq, expires_at=expires_at, **mode)
