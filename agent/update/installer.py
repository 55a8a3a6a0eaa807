"""Download a package and verify it against the hashes the command pinned.

Pure of MQTT; I/O goes through the injected fetcher and store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from agent.contract import DeployCommand, JobState, PackageManifest, sha256_bytes
from agent.errors import DigestMismatchError, IncompatiblePackageError, UntrustedContentError
from agent.update.fetcher import ArtifactFetcher
from agent.update.store import PackageStore

MAX_MANIFEST_BYTES = 256 * 1024


def fetch_and_verify(
    command: DeployCommand,
    *,
    fetcher: ArtifactFetcher,
    store: PackageStore,
    hardware_profile: str,
    max_package_bytes: int,
    on_state: Callable[[JobState], None],
) -> tuple[PackageManifest, Path]:
    """Fetch the manifest and every file, verify all sha256s, store the package.

    Returns the manifest and the stored package directory.

    Raises:
        DigestMismatchError: the manifest or a file does not match its pinned hash.
        IncompatiblePackageError: the package is not built for ``hardware_profile``.
        UntrustedContentError: the manifest is malformed or names another package.
        DownloadError: delivery failed.
        InstallError: the package could not be written to disk.
    """
    on_state(JobState.DOWNLOADING)
    manifest_bytes = fetcher.fetch(command.manifest_url, max_bytes=MAX_MANIFEST_BYTES)
    if sha256_bytes(manifest_bytes) != command.manifest_sha256:
        raise DigestMismatchError("manifest sha256 does not match the one in the deploy command")
    try:
        manifest = PackageManifest.from_bytes(manifest_bytes)
    except ValueError as exc:
        raise UntrustedContentError(str(exc)) from exc
    if manifest.package_id != command.package_id:
        raise UntrustedContentError(
            f"manifest is for package {manifest.package_id!r}, command names {command.package_id!r}"
        )
    if hardware_profile not in manifest.hardware_profiles:
        raise IncompatiblePackageError(
            f"package {manifest.package_id} targets {manifest.hardware_profiles}, this device is {hardware_profile!r}"
        )
    total_bytes = sum(entry.size_bytes for entry in manifest.files)
    if total_bytes > max_package_bytes:
        raise UntrustedContentError(f"package is {total_bytes} bytes; the limit is {max_package_bytes}")

    files: dict[str, bytes] = {}
    for entry in manifest.files:
        data = fetcher.fetch(urljoin(command.manifest_url, entry.name), max_bytes=entry.size_bytes)
        on_state(JobState.VERIFYING)
        if len(data) != entry.size_bytes or sha256_bytes(data) != entry.sha256:
            raise DigestMismatchError(
                f"file {entry.name} of package {manifest.package_id} does not match its manifest sha256"
            )
        files[entry.name] = data
    return manifest, store.commit(manifest, manifest_bytes, files)
