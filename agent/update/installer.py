"""Fetch a package through TUF and store it. Pure of MQTT; I/O goes through the injected updater and store.

The deploy command only *names* a package. Which bytes are right is decided by
the signed TUF metadata: every file is a target whose length and sha256 the
updater checks, and whose ``custom`` metadata says which hardware it fits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.contract import MANIFEST_FILE, DeployCommand, JobState, PackageManifest
from agent.contract.manifest import unsupported_feature
from agent.errors import (
    DigestMismatchError,
    IncompatiblePackageError,
    PackageDowngradeError,
    UnsupportedDecoderError,
    UnsupportedTaskError,
    UntrustedContentError,
)
from agent.update.store import PackageStore

__all__ = ["FetchedPackage", "PackageSource", "check_digests", "check_release_floor", "fetch_and_verify",
           "fetch_verified"]


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


@dataclass(frozen=True)
class FetchedPackage:
    """A package downloaded through TUF, held in memory until it is staged."""

    manifest: PackageManifest
    manifest_bytes: bytes
    files: dict[str, bytes]


def fetch_and_verify(
    command: DeployCommand,
    *,
    updater: PackageSource,
    store: PackageStore,
    hardware_profile: str,
    max_package_bytes: int,
    on_state: Callable[[JobState], None],
) -> tuple[PackageManifest, Path]:
    """Fetch, check and stage ``command.package_id`` in one go (shadow runs and tools).

    Returns the manifest and the stored package directory. The active package is not touched.
    The install state machine runs the same three parts as its own steps.

    Raises: what :func:`fetch_verified`, :func:`check_digests` and ``store.commit`` raise.
    """
    package = fetch_verified(command, updater=updater, hardware_profile=hardware_profile,
                             max_package_bytes=max_package_bytes, on_state=on_state)
    check_digests(package)
    return package.manifest, store.commit(package.manifest, package.manifest_bytes, package.files)


def check_digests(package: FetchedPackage) -> None:
    """Check every file in memory against the manifest's sha256 and size, once more before staging.

    Raises:
        DigestMismatchError: a file differs from what the manifest pins.
    """
    for entry in package.manifest.files:
        data = package.files.get(entry.name)
        if data is None or len(data) != entry.size_bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DigestMismatchError(f"file {entry.name} of {package.manifest.package_id} does not match its manifest")


def check_release_floor(manifest: PackageManifest, release_floors: Mapping[str, int], *, rollback: bool) -> None:
    """TUF stops old *metadata*, not an old *target*: the release counter stops going back.

    Raises:
        PackageDowngradeError: a lower release than this model line's floor, not signed as a rollback.
    """
    floor = release_floors.get(manifest.model_name, 0)
    if manifest.release < floor and not rollback:
        raise PackageDowngradeError(
            f"package {manifest.package_id} is release {manifest.release} of {manifest.model_name}, "
            f"below the installed release {floor}; only a command signed as a rollback may go back")


def fetch_verified(
    command: DeployCommand,
    *,
    updater: PackageSource,
    hardware_profile: str,
    max_package_bytes: int,
    on_state: Callable[[JobState], None],
) -> FetchedPackage:
    """Refresh TUF metadata and download every file of ``command.package_id`` (verified as it arrives).

    Raises:
        IncompatiblePackageError: the signed metadata does not list ``hardware_profile``;
            ``UnsupportedTaskError`` / ``UnsupportedDecoderError``: the manifest asks for a task
            or detection decoder this agent does not have (checked before any model byte is fetched).
        DigestMismatchError: a file does not match its signed hash or length.
        UntrustedContentError: any other refusal (bad signature, rollback, expired metadata...).
        DownloadError: delivery failed (including the total download deadline).
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
    return FetchedPackage(manifest, manifest_bytes, files)
