"""Fetch a package through TUF and store it. Pure of MQTT; I/O goes through the injected updater and store.

The deploy command only *names* a package. Which bytes are right is decided by
the signed TUF metadata: every file is a target whose length and sha256 the
updater checks, and whose ``custom`` metadata says which hardware it fits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.contract import MANIFEST_FILE, DeployCommand, JobState, PackageManifest
from agent.contract.manifest import unsupported_feature
from agent.errors import (
    DigestMismatchError,
    IncompatiblePackageError,
    UnsupportedDecoderError,
    UnsupportedTaskError,
    UntrustedContentError,
)
from agent.update.store import PackageStore

__all__ = ["PackageSource", "fetch_and_verify"]


class _Target(Protocol):
    @property
    def length(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def custom(self) -> dict[str, object]: ...


class PackageSource(Protocol):
    """What the installer needs from a TUF client (``agent.security.PackageUpdater``)."""

    def refresh(self) -> None: ...
    def target(self, path: str) -> _Target: ...
    # The target handed back is the one ``target`` returned (an implementation type).
    def download(self, target: Any) -> bytes: ...


def fetch_and_verify(
    command: DeployCommand,
    *,
    updater: PackageSource,
    store: PackageStore,
    hardware_profile: str,
    max_package_bytes: int,
    on_state: Callable[[JobState], None],
) -> tuple[PackageManifest, Path]:
    """Refresh TUF metadata, download every file of ``command.package_id``, store the package.

    Returns the manifest and the stored package directory. The active package is not touched.

    Raises:
        IncompatiblePackageError: the signed metadata does not list ``hardware_profile``;
            ``UnsupportedTaskError`` / ``UnsupportedDecoderError``: the manifest asks for a task
            or detection decoder this agent does not have (checked before any model byte is fetched).
        DigestMismatchError: a file does not match its signed hash or length.
        UntrustedContentError: any other refusal (bad signature, rollback, expired metadata...).
        DownloadError: delivery failed (including the total download deadline).
        InstallError: the package could not be written to disk.
    """
    on_state(JobState.DOWNLOADING)
    updater.refresh()
    package_id = command.package_id
    manifest_target = updater.target(f"{package_id}/{MANIFEST_FILE}")
    profiles = manifest_target.custom.get("hardware_profiles")
    # Checked before any package byte is fetched: TUF vouches for the bytes, not for the fit.
    if not isinstance(profiles, list) or hardware_profile not in profiles:
        raise IncompatiblePackageError(
            f"package {package_id} is signed for hardware profiles {profiles}, this device is {hardware_profile!r}"
        )
    if manifest_target.sha256 != command.manifest_sha256:
        raise DigestMismatchError(f"command pins manifest {command.manifest_sha256[:12]}, TUF lists {manifest_target.sha256[:12]}")
    manifest_bytes = updater.download(manifest_target)
    unsupported = unsupported_feature(manifest_bytes)
    if unsupported is not None:
        code, message = unsupported
        error = UnsupportedTaskError if code == "unsupported_task" else UnsupportedDecoderError
        raise error(f"package {package_id}: {message}")
    try:
        manifest = PackageManifest.from_bytes(manifest_bytes)
    except ValueError as exc:
        raise UntrustedContentError(str(exc)) from exc
    if manifest.package_id != package_id or hardware_profile not in manifest.hardware_profiles:
        raise UntrustedContentError(f"manifest of {package_id} contradicts its signed target metadata")

    targets = []
    for entry in manifest.files:
        target = updater.target(f"{package_id}/{entry.name}")
        if target.length != entry.size_bytes or target.sha256 != entry.sha256:
            raise DigestMismatchError(
                f"file {entry.name} of {package_id}: the manifest's sha256/size and the signed TUF metadata disagree"
            )
        targets.append((entry.name, target))
    total_bytes = sum(target.length for _, target in targets)
    if total_bytes > max_package_bytes:
        raise UntrustedContentError(f"package is {total_bytes} bytes; the limit is {max_package_bytes}")
    files = {name: updater.download(target) for name, target in targets}
    on_state(JobState.VERIFYING)
    return manifest, store.commit(manifest, manifest_bytes, files)
