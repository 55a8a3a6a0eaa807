"""Where verified packages live on the device: two slots (A/B) per pipeline, and the
persisted install record the state machine resumes from.

Layout under ``state_dir``::

    state.json                                  device-wide: last accepted command seq, last resync
    pipelines/<name>/update.json                active slot, slot contents, install record
    pipelines/<name>/slots/A|B/                 a verified package (manifest.json + files)
    pipelines/<name>/slots/.B.staging/          being written; never loaded

Every JSON file is replaced atomically (:mod:`agent.fsutil`), so a crash leaves
either the old or the new record, never half of one.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.contract.manifest import MANIFEST_FILE, PackageManifest, sha256_file
from agent.errors import DigestMismatchError, InstallError
from agent.faults import fail_write_point
from agent.fsutil import atomic_write_bytes, atomic_write_json, read_json
from agent.update.boot import BootRecord
from agent.update.machine import InstallState

log = logging.getLogger(__name__)

SlotName = Literal["A", "B"]
SLOTS: tuple[SlotName, SlotName] = ("A", "B")


@dataclass(frozen=True)
class ActivePackage:
    package_id: str
    model_version: str


class SlotContent(BaseModel):
    """A verified package in a slot, and the runtime chosen for it by measurement."""

    model_config = ConfigDict(extra="ignore")

    package_id: str
    model_version: str
    artifact_file: str | None = None
    device: str = ""
    runtime: str | None = None


class InstallRecord(BaseModel):
    """One install in flight, saved before each of its steps."""

    model_config = ConfigDict(extra="ignore")

    state: InstallState
    command: dict[str, Any]
    target_slot: SlotName
    previous_slot: SlotName | None = None
    resumes: int = 0
    error_code: str | None = None
    error: str | None = None
    rejected: bool = False  # the failure was untrusted content (reported as "rejected")
    runtime: str | None = None
    measurements: list[dict[str, Any]] = Field(default_factory=list)
    probation: dict[str, float | None] = Field(default_factory=dict)


def _empty_slots() -> dict[SlotName, SlotContent | None]:
    return {"A": None, "B": None}


class UpdateState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    active_slot: SlotName | None = None
    slots: dict[SlotName, SlotContent | None] = Field(default_factory=_empty_slots)
    install: InstallRecord | None = None
    # The job id of the last install that reached a final state, to ignore redelivered commands.
    last_job_id: str | None = None
    # Start-ups of the active model not yet followed by a healthy window (agent.update.boot).
    boot: BootRecord | None = None
    # Per model name: the manifest ``release`` below which an install is a downgrade,
    # refused unless the command is a signed rollback (which lowers it to what it installs).
    release_floors: dict[str, int] = Field(default_factory=dict)

    def other_slot(self) -> SlotName:
        return "B" if self.active_slot == "A" else "A"

    def content(self, slot: SlotName | None) -> SlotContent | None:
        return self.slots.get(slot) if slot is not None else None


def reset_command_state(state_dir: Path) -> None:
    """Forget the accepted command seq and resync time: a (re-)enrolled device starts afresh,
    in step with the control plane that enrolled it."""
    state_file = state_dir / "state.json"
    state = read_json(state_file)
    if not isinstance(state, dict):
        return
    state.pop("last_command_seq", None)
    state.pop("last_resync_issued_at", None)
    atomic_write_json(state_file, state)


class PackageStore:
    def __init__(self, state_dir: Path, pipeline: str = "main") -> None:
        self.state_dir = state_dir
        self.state_file = state_dir / "state.json"
        self.root = state_dir / "pipelines" / pipeline
        self.slots_dir = self.root / "slots"
        self.update_file = self.root / "update.json"
        self.slots_dir.mkdir(parents=True, exist_ok=True)

    # -- device-wide state ---------------------------------------------------
    def _device_state(self) -> dict[str, object]:
        state = read_json(self.state_file)
        return state if isinstance(state, dict) else {}

    def last_command_seq(self) -> int:
        seq = self._device_state().get("last_command_seq", -1)
        return seq if isinstance(seq, int) else -1

    def set_last_command_seq(self, seq: int) -> None:
        state = self._device_state()
        state["last_command_seq"] = seq
        atomic_write_json(self.state_file, state)

    def last_resync_issued_at(self) -> datetime | None:
        value = self._device_state().get("last_resync_issued_at")
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def resync_command_seq(self, seq: int, issued_at: datetime) -> None:
        """A signed resync: the new seq base and its issue time, in one atomic write."""
        state = self._device_state()
        state["last_command_seq"] = seq
        state["last_resync_issued_at"] = issued_at.isoformat()
        atomic_write_json(self.state_file, state)

    # -- slots and the install record ----------------------------------------
    def read(self) -> UpdateState:
        document = read_json(self.update_file)
        if not isinstance(document, dict):
            return UpdateState()
        try:
            return UpdateState.model_validate(document)
        except ValidationError as exc:
            # Only our own atomic writes produce this file; an unreadable one means a
            # bug or disk damage. Start clean (and say so) rather than refuse to run.
            log.error("install state %s is unreadable (%s); starting with empty slots", self.update_file, exc)
            return UpdateState()

    def write(self, state: UpdateState) -> None:
        atomic_write_json(self.update_file, state.model_dump(mode="json"))

    def active(self) -> ActivePackage | None:
        state = self.read()
        content = state.content(state.active_slot)
        return ActivePackage(content.package_id, content.model_version) if content else None

    def slot_dir(self, slot: SlotName) -> Path:
        return self.slots_dir / slot

    def package_dir(self, package_id: str) -> Path:
        """The slot directory holding ``package_id`` (the inactive slot if none does yet)."""
        state = self.read()
        for slot in SLOTS:
            content = state.content(slot)
            if content is not None and content.package_id == package_id:
                return self.slot_dir(slot)
        return self.slot_dir(state.other_slot())

    def commit(self, manifest: PackageManifest, manifest_bytes: bytes, files: dict[str, bytes]) -> Path:
        """Write a verified package into the inactive slot: staging directory, then one rename.

        Raises:
            InstallError: the disk refused the write (full, read-only).
        """
        target = self.read().other_slot()
        staging = self.slots_dir / f".{target}.staging"
        final = self.slot_dir(target)
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name, data in files.items():
                fail_write_point("stage", manifest.model_version)
                atomic_write_bytes(staging / name, data)
            atomic_write_bytes(staging / MANIFEST_FILE, manifest_bytes)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallError(f"could not stage package {manifest.package_id} in slot {target}: {exc}") from exc
        return final

    def load_verified(self, package_id: str) -> PackageManifest:
        """Read a stored package and re-check every file against its manifest.

        Raises:
            DigestMismatchError: a stored file changed since it was verified.
            InstallError: the package is missing or its manifest unreadable.
        """
        return self.load_verified_dir(self.package_dir(package_id), package_id)

    @staticmethod
    def load_verified_dir(directory: Path, package_id: str) -> PackageManifest:
        try:
            manifest = PackageManifest.from_bytes((directory / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise InstallError(f"stored package {package_id} is unreadable: {exc}") from exc
        if manifest.package_id != package_id:
            raise InstallError(f"slot {directory.name} holds {manifest.package_id}, expected {package_id}")
        for entry in manifest.files:
            path = directory / entry.name
            if not path.exists() or sha256_file(path) != entry.sha256:
                raise DigestMismatchError(f"stored file {entry.name} of package {package_id} is corrupt")
        return manifest
