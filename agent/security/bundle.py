"""Air-gapped update bundles on the device: the same checks as the online path, from files.

A bundle (written by ``edgefleet bundle export``) holds TUF metadata, the package's
target files and one director-signed deploy command per device. Verifying it is the
online path with the network swapped for the bundle's files:

* TUF: python-tuf's ``Updater`` refreshes from the bundle through :class:`BundleFetcher`,
  starting from the newest root this device has verified, in a metadata cache of its own
  (the bundle's long-lived snapshot and timestamp never enter the online cache, and the
  online versions never make a bundle look like a rollback).
* The command: signed by a director key the (bundle-verified) root lists, else the
  enrollment key; addressed to this device; not expired; its seq inside the window.
* The package: the same :func:`fetch_verified` (hardware profile, manifest pin, hashes,
  size limit) and the release floor (no downgrade without a signed rollback).

Handing a verified bundle to the agent goes through :class:`BundleQueue` under the
state directory (docs/adr, air-gapped bundles): the agent process is the only writer of
install state, whether it was already running or is started for the bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from agent.contract import ContractError, DeployCommand, parse_any_command
from agent.errors import AgentError, SignatureError, UntrustedContentError
from agent.fsutil import atomic_write_json, read_json
from agent.security.commands import check_fresh, verify_signature
from agent.security.errors import MisaddressedCommandError, NotEnrolledError
from agent.security.keyring import DirectorKeyring
from agent.security.updater import PackageUpdater
from agent.update.installer import FetchedPackage, check_digests, check_release_floor, fetch_verified

__all__ = ["BUNDLE_URL", "BundleFetcher", "BundleFormatError", "BundleInfo", "BundleNotForDeviceError",
           "BundleQueue", "VerifiedBundle", "bundle_updater", "check_bundle", "copy_bundle", "newest_trusted_root",
           "read_bundle_info", "verify_bundle"]

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
# The bundle's files stand in for the repository's URLs; nothing is fetched from a network.
BUNDLE_URL = "bundle:///"
# Metadata on top of the package itself that a bundle may carry (roots, targets, commands).
BUNDLE_OVERHEAD_BYTES = 64 * 1024 * 1024
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BundleFormatError(UntrustedContentError):
    """The bundle is not one ``edgefleet bundle export`` wrote (missing or unreadable parts)."""

    code = "bad_bundle"


class BundleNotForDeviceError(MisaddressedCommandError):
    """The bundle carries no command for this device."""

    code = "bundle_not_for_device"


@dataclass(frozen=True)
class BundleInfo:
    """What ``bundle.json`` says. Informational only: trust comes from the signatures."""

    bundle_id: str
    package_id: str
    model_version: str
    expires_at: str
    device_ids: list[str]
    hardware_profile: str | None


def read_bundle_info(bundle_dir: Path) -> BundleInfo:
    """Raises ``BundleFormatError`` when ``bundle.json`` is missing or not a bundle description."""
    document = read_json(bundle_dir / BUNDLE_FILE)
    if not isinstance(document, dict) or document.get("format") != BUNDLE_FORMAT:
        raise BundleFormatError(f"{bundle_dir} is not an EdgeFleet bundle (no readable {BUNDLE_FILE} of format "
                                f"{BUNDLE_FORMAT}); make it with `edgefleet bundle export`")
    try:
        return BundleInfo(bundle_id=str(document["bundle_id"]), package_id=str(document["package_id"]),
                          model_version=str(document["model_version"]), expires_at=str(document["expires_at"]),
                          device_ids=[str(d) for d in document.get("device_ids", [])],
                          hardware_profile=document.get("hardware_profile"))
    except (KeyError, TypeError) as exc:
        raise BundleFormatError(f"{bundle_dir / BUNDLE_FILE} lacks {exc}") from exc


def copy_bundle(source: Path, destination: Path, *, max_bytes: int) -> None:
    """Copy a bundle directory, or unpack a ``.tar`` of one, into ``destination`` (which must not exist).

    The copy is what gets verified and installed, so the medium can be removed (or
    changed) afterwards without changing what was checked.

    Raises:
        BundleFormatError: not a directory or tar archive, unsafe or oversized archive members.
    """
    if source.is_dir():
        total_bytes = sum(path.stat().st_size for path in source.rglob("*") if path.is_file())
        if total_bytes > max_bytes:
            raise BundleFormatError(f"{source} holds more than {max_bytes} bytes")
        shutil.copytree(source, destination, symlinks=False)
        return
    try:
        with tarfile.open(source, "r:*") as archive:
            members = archive.getmembers()
            if sum(member.size for member in members) > max_bytes:
                raise BundleFormatError(f"{source} unpacks to more than {max_bytes} bytes")
            destination.mkdir(parents=True)
            # The "data" filter refuses absolute paths, "..", links out of the tree and device files.
            archive.extractall(destination, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise BundleFormatError(f"{source} is neither a bundle directory nor a readable tar archive: {exc}") from exc


class BundleFetcher(FetcherInterface):
    """Answers python-tuf's requests from the bundle's files; a missing file is a 404,
    which is how the root chain ends."""

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = bundle_dir

    def _fetch(self, url: str) -> Iterator[bytes]:
        relative = url.removeprefix(BUNDLE_URL)
        parts = relative.split("/")
        path = self.bundle_dir.joinpath(*parts)
        if relative == url or any(not p or p.startswith(".") for p in parts) or not path.is_file():
            raise DownloadHTTPError(f"{relative} is not in the bundle", 404)
        return iter([path.read_bytes()])


def newest_trusted_root(online_metadata_dir: Path, enrollment_root: Path | None) -> Path | None:
    """The newest root this device has verified (ngclient keeps it as ``root.json``), else the enrollment root."""
    cached = online_metadata_dir / "root.json"
    return cached if cached.exists() else enrollment_root


def bundle_updater(bundle_dir: Path, *, trusted_root: Path | None, cache_dir: Path) -> PackageUpdater:
    """A TUF client whose repository is the bundle, with ``cache_dir`` as its own metadata cache."""
    return PackageUpdater(metadata_dir=cache_dir, metadata_url=f"{BUNDLE_URL}metadata/",
                          targets_url=f"{BUNDLE_URL}targets/", trusted_root=trusted_root,
                          fetcher=BundleFetcher(bundle_dir))


@dataclass(frozen=True)
class VerifiedBundle:
    info: BundleInfo
    command: DeployCommand
    updater: PackageUpdater


def _command_for(bundle_dir: Path, device_id: str, info: BundleInfo) -> DeployCommand:
    path = bundle_dir / "commands" / f"{device_id}.json"
    if not path.is_file():
        audience = f"hardware profile {info.hardware_profile}" if info.hardware_profile else "devices"
        raise BundleNotForDeviceError(
            f"bundle {info.bundle_id} is for {audience} {', '.join(info.device_ids[:10])}, not {device_id}")
    try:
        command = parse_any_command(path.read_bytes())
    except (OSError, ContractError) as exc:
        raise BundleFormatError(f"the command for {device_id} in bundle {info.bundle_id} is unreadable: {exc}") from exc
    if not isinstance(command, DeployCommand):
        raise BundleFormatError(f"bundle {info.bundle_id} carries a {command.kind} command, not a deploy")
    return command


def _verify_director_signature(command: DeployCommand, keys: list[Ed25519PublicKey], device_id: str) -> None:
    if not keys:
        raise NotEnrolledError("no director public key configured: enroll the device first")
    refused: SignatureError | None = None
    for key in keys:
        try:
            verify_signature(command, director_key=key, device_id=device_id)
            return
        except SignatureError as exc:
            refused = exc
    assert refused is not None
    raise refused


def verify_bundle(bundle_dir: Path, *, device_id: str, trusted_root: Path | None, director_key_file: Path | None,
                  cache_dir: Path, last_seq: int, now: datetime, seq_window: int) -> VerifiedBundle:
    """TUF metadata first (it vouches for the director keys), then this device's command.

    Nothing is written but ``cache_dir``; the seq is checked, not persisted (the agent does
    that when it takes the command, as for one from MQTT).

    Raises:
        BundleFormatError, BundleNotForDeviceError, NotEnrolledError.
        UntrustedContentError: a subclass naming the refusal (expired metadata or command,
            a signature by a foreign root or director, replayed seq...).
    """
    info = read_bundle_info(bundle_dir)
    updater = bundle_updater(bundle_dir, trusted_root=trusted_root, cache_dir=cache_dir)
    updater.refresh()
    command = _command_for(bundle_dir, device_id, info)
    keys = DirectorKeyring(listed_in_root=updater.director_key_pems, enrollment_key_file=director_key_file,
                           refresh_metadata=lambda: None).keys
    _verify_director_signature(command, keys, device_id)
    check_fresh(command, last_seq=last_seq, now=now, seq_window=seq_window)
    return VerifiedBundle(info=info, command=command, updater=updater)


def check_bundle(bundle_dir: Path, *, device_id: str, hardware_profile: str, trusted_root: Path | None,
                 director_key_file: Path | None, last_seq: int, release_floors: Mapping[str, int], now: datetime,
                 seq_window: int, max_package_bytes: int) -> tuple[VerifiedBundle, FetchedPackage]:
    """Everything the install would check before it touches a slot, without touching one:
    :func:`verify_bundle`, then the package through TUF, its digests and the release floor.

    Raises: what :func:`verify_bundle` and :func:`fetch_verified` raise, and ``PackageDowngradeError``.
    """
    with tempfile.TemporaryDirectory(prefix=".bundle-check-", dir=bundle_dir.parent) as cache:
        verified = verify_bundle(bundle_dir, device_id=device_id, trusted_root=trusted_root,
                                 director_key_file=director_key_file, cache_dir=Path(cache), last_seq=last_seq,
                                 now=now, seq_window=seq_window)
        package = fetch_verified(verified.command, updater=verified.updater, hardware_profile=hardware_profile,
                                 max_package_bytes=max_package_bytes, on_state=lambda state: None)
        check_digests(package)
        check_release_floor(package.manifest, release_floors, rollback=verified.command.rollback)
        return verified, package


class BundleQueue:
    """Bundles handed to the agent, under ``<state_dir>/bundles``.

    ``inbox/<job_id>/``: a verified copy, placed by one rename (never seen half-written);
    ``work/<job_id>/``: the one the agent is installing (an install resumed after a crash
    finds its package here); ``results/<job_id>.json``: the outcome, for the CLI to print.
    """

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "bundles"
        self.inbox = self.root / "inbox"
        self.work = self.root / "work"
        self.results = self.root / "results"

    def staging_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root)) / "bundle"

    def submit(self, staged: Path, job_id: str) -> None:
        """Move a verified, staged copy into the inbox.

        Raises:
            FileExistsError: the same job is already queued or being installed.
        """
        if not _JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} is not a valid job id")
        self.inbox.mkdir(parents=True, exist_ok=True)
        target = self.inbox / job_id
        if target.exists() or (self.work / job_id).exists():
            raise FileExistsError(f"job {job_id} is already queued for the agent")
        os.rename(staged, target)
        shutil.rmtree(staged.parent, ignore_errors=True)

    def pending(self) -> list[str]:
        if not self.inbox.is_dir():
            return []
        return sorted(entry.name for entry in self.inbox.iterdir() if entry.is_dir() and _JOB_ID.match(entry.name))

    def take(self, job_id: str) -> Path:
        """Move ``job_id`` from the inbox to work; returns its work directory."""
        self.work.mkdir(parents=True, exist_ok=True)
        target = self.work / job_id
        shutil.rmtree(target, ignore_errors=True)
        os.rename(self.inbox / job_id, target)
        return target

    def work_dir(self, job_id: str) -> Path | None:
        target = self.work / job_id
        return target if _JOB_ID.match(job_id) and target.is_dir() else None

    def finish(self, job_id: str, outcome: dict[str, Any]) -> None:
        """Record the outcome and drop the work copy (the installed package lives in its slot)."""
        atomic_write_json(self.results / f"{job_id}.json", outcome)
        shutil.rmtree(self.work / job_id, ignore_errors=True)

    def result(self, job_id: str) -> dict[str, Any] | None:
        document = read_json(self.results / f"{job_id}.json")
        return document if isinstance(document, dict) else None


def outcome_of(failure: AgentError | None, **fields: Any) -> dict[str, Any]:
    """A result document for :meth:`BundleQueue.finish` (JSON-safe)."""
    if failure is not None:
        fields.update(error_code=failure.code, error=str(failure))
    return json.loads(json.dumps(fields, default=str))  # type: ignore[no-any-return]
