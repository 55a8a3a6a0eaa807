"""Where verified packages live on the device, and which one is active.

Layout under ``state_dir``::

    packages/<package_id>/manifest.json + files   verified, immutable
    staging/<package_id>/                         being written; never loaded
    state.json                                    active and previous package, last command seq
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.contract.manifest import MANIFEST_FILE, PackageManifest, sha256_file
from agent.errors import DigestMismatchError, InstallError
from agent.fsutil import atomic_write_bytes, atomic_write_json, read_json


@dataclass(frozen=True)
class ActivePackage:
    package_id: str
    model_version: str


class PackageStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.packages_dir = state_dir / "packages"
        self.staging_dir = state_dir / "staging"
        self.state_file = state_dir / "state.json"
        self.packages_dir.mkdir(parents=True, exist_ok=True)

    # -- state ---------------------------------------------------------------
    def _state(self) -> dict[str, object]:
        state = read_json(self.state_file)
        return state if isinstance(state, dict) else {}

    def active(self) -> ActivePackage | None:
        entry = self._state().get("active")
        if isinstance(entry, dict) and {"package_id", "model_version"} <= entry.keys():
            return ActivePackage(str(entry["package_id"]), str(entry["model_version"]))
        return None

    def set_active(self, package: ActivePackage) -> None:
        state = self._state()
        state["previous"], state["active"] = state.get("active"), package.__dict__
        atomic_write_json(self.state_file, state)

    def last_command_seq(self) -> int:
        seq = self._state().get("last_command_seq", -1)
        return seq if isinstance(seq, int) else -1

    def set_last_command_seq(self, seq: int) -> None:
        state = self._state()
        state["last_command_seq"] = seq
        atomic_write_json(self.state_file, state)

    # -- packages ------------------------------------------------------------
    def package_dir(self, package_id: str) -> Path:
        return self.packages_dir / package_id

    def commit(self, manifest: PackageManifest, manifest_bytes: bytes, files: dict[str, bytes]) -> Path:
        """Write a verified package to staging, then move it into place in one rename.

        Raises:
            InstallError: the disk refused the write (full, read-only).
        """
        staging = self.staging_dir / manifest.package_id
        final = self.package_dir(manifest.package_id)
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name, data in files.items():
                atomic_write_bytes(staging / name, data)
            atomic_write_bytes(staging / MANIFEST_FILE, manifest_bytes)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallError(f"could not store package {manifest.package_id}: {exc}") from exc
        return final

    def load_verified(self, package_id: str) -> PackageManifest:
        """Read a stored package and re-check every file against its manifest.

        Raises:
            DigestMismatchError: a stored file changed since it was verified.
            InstallError: the package is missing or its manifest unreadable.
        """
        directory = self.package_dir(package_id)
        try:
            manifest = PackageManifest.from_bytes((directory / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise InstallError(f"stored package {package_id} is unreadable: {exc}") from exc
        for entry in manifest.files:
            path = directory / entry.name
            if not path.exists() or sha256_file(path) != entry.sha256:
                raise DigestMismatchError(f"stored file {entry.name} of package {package_id} is corrupt")
        return manifest
