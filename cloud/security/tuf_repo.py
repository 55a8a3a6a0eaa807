"""The control plane's TUF repository, built on python-tuf's Metadata API.

Layout under ``directory``::

    keys/<keyid>.pem                    Ed25519 private keys (0600), role membership is in root
    metadata/<N>.root.json              every root version (clients walk the chain)
    metadata/<N>.targets.json           consistent snapshots: every version stays servable
    metadata/<N>.snapshot.json
    metadata/timestamp.json             the only unversioned file clients fetch
    metadata/{root,targets,snapshot}.json   the newest version, for this module to load
    targets/<package_id>/<sha256>.<name>    target files, hash-prefixed (consistent snapshots)
    withdrawn.json                      package ids withdrawn from the targets; never added again

Every package file is a target ``<package_id>/<name>``; each carries the same
``custom`` metadata (model id, version, runtime, precision, hardware profiles) so
the device can refuse a package for another profile before downloading it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Imported from where they are defined: their packages re-export them without __all__.
from securesystemslib.signer._crypto_signer import CryptoSigner
from securesystemslib.signer._key import SSlibKey
from tuf.api._payload import (
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.metadata import Metadata

from agent.contract import MANIFEST_FILE, PackageManifest
from agent.contract.enrollment import DIRECTOR_KEYS_FIELD
from cloud.errors import ConflictError
from cloud.security.keys import ensure_private_dir, load_private_key, write_private_key

__all__ = ["OFFLINE_ROLES", "ROLES", "OfflineKeyRequired", "TufPolicy", "TufRepository", "package_custom_metadata",
           "sign_metadata_offline"]

ROLES = ("root", "targets", "snapshot", "timestamp")
# Roles whose keys belong off the host: root (trust itself) and targets (what may be installed).
# Snapshot and timestamp must be signed continuously, so they stay online.
OFFLINE_ROLES = ("root", "targets")
STAGED_TARGETS = "staged.targets.json"
DAY_S = 86_400


@dataclass(frozen=True)
class TufPolicy:
    """Thresholds and lifetimes. Expiry is what turns a freeze attack into an error."""

    root_keys: int = 1
    root_threshold: int = 1
    root_expiry_s: int = 365 * DAY_S
    targets_expiry_s: int = 90 * DAY_S
    snapshot_expiry_s: int = 7 * DAY_S
    timestamp_expiry_s: int = DAY_S
    # Re-sign a role once less than this fraction of its lifetime is left.
    refresh_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.root_threshold <= self.root_keys:
            raise ValueError(f"root threshold {self.root_threshold} must be between 1 and the {self.root_keys} root keys")

    @classmethod
    def for_environment(cls, environment: str, **overrides: Any) -> TufPolicy:
        """Production: root 2 of 3 keys. Development and the demo: a single root key."""
        base: dict[str, Any] = {"root_keys": 3, "root_threshold": 2} if environment == "production" else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def lifetime_s(self, role: str) -> int:
        return int(getattr(self, f"{role}_expiry_s"))


def package_custom_metadata(manifest: PackageManifest) -> dict[str, Any]:
    """The TUF ``custom`` field for every target of ``manifest``'s package."""
    primary = manifest.artifacts[0]
    return {
        "package_id": manifest.package_id,
        "model_id": manifest.model_name,
        "model_version": manifest.model_version,
        "runtime": primary.runtime,
        "precision": primary.precision,
        "hardware_profiles": list(manifest.hardware_profiles),
    }


class OfflineKeyRequired(ConflictError):
    """Signing needs a key that is not on this host (409: the operator must sign where the keys are)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class TufRepository:
    """Creates, signs and serves TUF metadata. Safe across threads and processes (file lock)."""

    def __init__(self, directory: Path, policy: TufPolicy | None = None, *, offline_keys_dir: Path | None = None) -> None:
        self.directory = directory
        self.policy = policy or TufPolicy()
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self.keys_dir = directory / "keys"
        # Where root and targets keys live when they are not on this host (a removable
        # medium attached for a signing session); None in normal online operation.
        self.offline_keys_dir = offline_keys_dir
        self._thread_lock = threading.RLock()

    # -- locking -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, (self.directory / ".lock").open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # -- keys ----------------------------------------------------------------
    def _new_key(self, role: str) -> SSlibKey:
        private = Ed25519PrivateKey.generate()
        key = SSlibKey.from_crypto(private.public_key())
        home = self.offline_keys_dir if role in OFFLINE_ROLES and self.offline_keys_dir else self.keys_dir
        write_private_key(home / f"{key.keyid}.pem", private)
        return key

    def _key_path(self, keyid: str) -> Path | None:
        for directory in (self.keys_dir, self.offline_keys_dir):
            if directory is not None and (directory / f"{keyid}.pem").exists():
                return directory / f"{keyid}.pem"
        return None

    def _signer(self, keyid: str) -> CryptoSigner | None:
        path = self._key_path(keyid)
        if path is None:
            return None
        private = load_private_key(path)
        return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))

    def _sign(self, md: Metadata[Any], keyids: list[str], *, role: str, threshold: int | None = None) -> None:
        """Sign with every key of ``keyids`` available here; refuse below ``threshold`` (default: all)."""
        md.signatures.clear()
        signers = [signer for signer in map(self._signer, keyids) if signer is not None]
        needed = len(keyids) if threshold is None else threshold
        if len(signers) < needed:
            raise OfflineKeyRequired(
                f"signing {role} needs {needed} of its keys and {len(signers)} are here; attach the offline keys "
                f"and run the command with --offline-keys DIR (see docs/security.md, offline keys)")
        for signer in signers:
            md.sign(signer, append=True)

    def can_sign(self, role: str) -> bool:
        """Whether enough of ``role``'s keys are reachable (online, or an attached offline directory)."""
        spec = self.root().roles[role]
        return sum(self._key_path(keyid) is not None for keyid in spec.keyids) >= spec.threshold

    def online_offline_role_keys(self) -> list[str]:
        """Root and targets roles with a private key in the online key directory (a production weakness)."""
        root = self.root()
        return [role for role in OFFLINE_ROLES
                if any((self.keys_dir / f"{keyid}.pem").exists() for keyid in root.roles[role].keyids)]

    def move_offline(self, destination: Path) -> list[str]:
        """Move root and targets private keys from the online directory to ``destination``. Returns the key ids."""
        ensure_private_dir(destination)
        root = self.root()
        moved: list[str] = []
        with self._locked():
            for role in OFFLINE_ROLES:
                for keyid in root.roles[role].keyids:
                    source = self.keys_dir / f"{keyid}.pem"
                    if source.exists():
                        write_private_key(destination / source.name, load_private_key(source))
                        source.unlink()
                        moved.append(keyid)
        return moved

    # -- files ---------------------------------------------------------------
    def _write(self, filename: str, md: Metadata[Any]) -> None:
        path = self.metadata_dir / filename
        tmp = path.with_name(f".{filename}.tmp")
        tmp.write_bytes(md.to_bytes())
        os.replace(tmp, path)

    def _load(self, role: str) -> Metadata[Any]:
        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))

    def _bump(self, signed: Signed, role: str) -> None:
        signed.version += 1
        signed.expires = _now() + timedelta(seconds=self.policy.lifetime_s(role))

    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "root.json").exists()

    def root(self) -> Root:
        return self._load("root").signed  # type: ignore[no-any-return]

    def trusted_root_bytes(self) -> bytes:
        """The newest root, as devices receive it at enrollment (their trust anchor)."""
        return (self.metadata_dir / "root.json").read_bytes()

    # -- creation ------------------------------------------------------------
    def initialise(self, *, director_public_pem: bytes | None = None) -> bool:
        """Create keys and version-1 metadata for every role. Returns False if it already existed.

        ``director_public_pem`` is listed in root as the key that signs commands.

        Raises:
            KeyPermissionError: the key directory is readable by others.
        """
        with self._locked():
            ensure_private_dir(self.keys_dir)
            if self.initialised:
                return False
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            root = Root(expires=_now() + timedelta(seconds=self.policy.root_expiry_s), consistent_snapshot=True)
            for role in ROLES:
                count = self.policy.root_keys if role == "root" else 1
                for _ in range(count):
                    root.add_key(self._new_key(role), role)
                root.roles[role].threshold = self.policy.root_threshold if role == "root" else 1
            if director_public_pem is not None:
                root.unrecognized_fields[DIRECTOR_KEYS_FIELD] = [director_public_pem.decode()]
            root_md = Metadata(root)
            self._sign(root_md, root.roles["root"].keyids, role="root")
            self._write_root(root_md)
            targets_md = Metadata(Targets(expires=_now() + timedelta(seconds=self.policy.targets_expiry_s)))
            self._publish_targets(targets_md, bump=False)
            return True

    def _write_root(self, root_md: Metadata[Root]) -> None:
        self._write(f"{root_md.signed.version}.root.json", root_md)
        self._write("root.json", root_md)

    def _publish_targets(self, targets_md: Metadata[Targets], *, bump: bool = True) -> None:
        if bump:
            self._bump(targets_md.signed, "targets")
        spec = self.root().roles["targets"]
        self._sign(targets_md, spec.keyids, role="targets", threshold=spec.threshold)
        self._write(f"{targets_md.signed.version}.targets.json", targets_md)
        self._write("targets.json", targets_md)
        self._publish_snapshot()

    def _publish_snapshot(self) -> None:
        first = not (self.metadata_dir / "snapshot.json").exists()
        snapshot_md = Metadata(Snapshot()) if first else self._load("snapshot")
        targets_version = self._load("targets").signed.version
        snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets_version)
        self._bump(snapshot_md.signed, "snapshot")
        if first:
            snapshot_md.signed.version = 1
        self._sign(snapshot_md, self.root().roles["snapshot"].keyids, role="snapshot")
        self._write(f"{snapshot_md.signed.version}.snapshot.json", snapshot_md)
        self._write("snapshot.json", snapshot_md)
        self._publish_timestamp()

    def _publish_timestamp(self) -> None:
        first = not (self.metadata_dir / "timestamp.json").exists()
        timestamp_md = Metadata(Timestamp()) if first else self._load("timestamp")
        timestamp_md.signed.snapshot_meta = MetaFile(version=self._load("snapshot").signed.version)
        self._bump(timestamp_md.signed, "timestamp")
        if first:
            timestamp_md.signed.version = 1
        self._sign(timestamp_md, self.root().roles["timestamp"].keyids, role="timestamp")
        self._write("timestamp.json", timestamp_md)

    # -- targets -------------------------------------------------------------
    def has_package(self, package_id: str) -> bool:
        return bool(f"{package_id}/{MANIFEST_FILE}" in self._load("targets").signed.targets)

    def is_withdrawn(self, package_id: str) -> bool:
        return package_id in self._withdrawn()

    def _withdrawn(self) -> set[str]:
        path = self.directory / "withdrawn.json"
        if not path.exists():
            return set()
        document = json.loads(path.read_text())
        return {str(item) for item in document} if isinstance(document, list) else set()

    def withdraw_package(self, package_id: str) -> int:
        """Remove every target of ``package_id`` and sign new targets, snapshot and timestamp.

        TUF stops a rollback of *metadata*, not an install of an old *target* that is still
        listed: a release with a known flaw is withdrawn here, and devices then refuse it as an
        unknown target. The id is remembered, so signing a command for it later does not
        quietly publish it again. Idempotent. Returns how many targets were removed.
        """
        with self._locked():
            withdrawn = self._withdrawn()
            if package_id not in withdrawn:
                withdrawn.add(package_id)
                (self.directory / "withdrawn.json").write_text(json.dumps(sorted(withdrawn)))
            targets_md = self._load("targets")
            paths = [path for path in targets_md.signed.targets if path.startswith(f"{package_id}/")]
            if paths:
                for path in paths:
                    del targets_md.signed.targets[path]
                self._publish_targets(targets_md)
            shutil.rmtree(self.targets_dir / package_id, ignore_errors=True)
        return len(paths)

    def add_package(self, package_dir: Path) -> str:
        """Add every file of the package in ``package_dir`` as a target; sign a new targets version.

        Idempotent: a package already present is left alone, and so is a withdrawn one (it
        stays out of the targets). Returns the package id.

        Raises:
            ValueError: the directory holds no valid manifest.
            FileNotFoundError: a file the manifest lists is missing.
        """
        manifest = PackageManifest.from_bytes((package_dir / MANIFEST_FILE).read_bytes())
        custom = package_custom_metadata(manifest)
        with self._locked():
            if manifest.package_id in self._withdrawn():
                return manifest.package_id
            targets_md = self._load("targets")
            if f"{manifest.package_id}/{MANIFEST_FILE}" in targets_md.signed.targets:
                return manifest.package_id
            staged = self._staged_targets()
            if staged is not None:
                targets_md = staged
                if f"{manifest.package_id}/{MANIFEST_FILE}" in targets_md.signed.targets:
                    return manifest.package_id
            destination = self.targets_dir / manifest.package_id
            destination.mkdir(parents=True, exist_ok=True)
            for name in [MANIFEST_FILE, *(entry.name for entry in manifest.files)]:
                target_path = f"{manifest.package_id}/{name}"
                info = TargetFile.from_file(target_path, str(package_dir / name), ["sha256"])
                info.unrecognized_fields["custom"] = custom
                shutil.copyfile(package_dir / name, destination / f"{info.hashes['sha256']}.{name}")
                targets_md.signed.targets[target_path] = info
            if self.can_sign("targets"):
                self._publish_targets(targets_md, bump=staged is None)
                (self.metadata_dir / STAGED_TARGETS).unlink(missing_ok=True)
            else:
                self._stage_targets(targets_md, bumped=staged is not None)
        return manifest.package_id

    # -- offline signing -----------------------------------------------------
    def _staged_targets(self) -> Metadata[Targets] | None:
        path = self.metadata_dir / STAGED_TARGETS
        return Metadata.from_file(str(path)) if path.exists() else None

    def _stage_targets(self, targets_md: Metadata[Targets], *, bumped: bool) -> None:
        """Keep the next targets version, unsigned, until someone signs it where the keys are."""
        if not bumped:
            self._bump(targets_md.signed, "targets")
        targets_md.signatures.clear()
        self._write(STAGED_TARGETS, targets_md)

    def staged_packages(self) -> list[str]:
        """Packages added since the last signed targets, waiting for the offline targets key."""
        staged = self._staged_targets()
        if staged is None:
            return []
        published = set(self._load("targets").signed.targets)
        return sorted({path.split("/", 1)[0] for path in staged.signed.targets if path not in published})

    def staged_targets_bytes(self) -> bytes | None:
        """The staged (unsigned) targets metadata, to carry to the machine that holds the key."""
        path = self.metadata_dir / STAGED_TARGETS
        return path.read_bytes() if path.exists() else None

    def sign_staged_targets(self) -> int:
        """Sign the staged targets with the attached offline keys and publish. Returns its version.

        Raises:
            OfflineKeyRequired: the targets keys are not attached.
            ValueError: nothing is staged.
        """
        with self._locked():
            staged = self._staged_targets()
            if staged is None:
                raise ValueError("no targets are waiting for a signature")
            self._publish_targets(staged, bump=False)
            (self.metadata_dir / STAGED_TARGETS).unlink()
            return int(staged.signed.version)

    def import_signed_targets(self, signed_bytes: bytes) -> int:
        """Publish targets metadata signed elsewhere (:func:`sign_metadata_offline`). Returns its version.

        Raises:
            ValueError: not the staged version, or not signed by the targets threshold of the current root.
        """
        with self._locked():
            staged = self._staged_targets()
            try:
                signed_md: Metadata[Targets] = Metadata.from_bytes(signed_bytes)
                Metadata.from_file(str(self.metadata_dir / "root.json")).verify_delegate("targets", signed_md)
            except Exception as exc:  # python-tuf raises several types for one meaning: not acceptable
                raise ValueError(f"signed targets refused: {exc}") from exc
            if staged is None or signed_md.signed.version != staged.signed.version or \
                    set(signed_md.signed.targets) != set(staged.signed.targets):
                raise ValueError("signed targets do not match the staged targets; export them again")
            self._write(f"{signed_md.signed.version}.targets.json", signed_md)
            self._write("targets.json", signed_md)
            self._publish_snapshot()
            (self.metadata_dir / STAGED_TARGETS).unlink()
            return int(signed_md.signed.version)

    # -- expiry --------------------------------------------------------------
    def refresh_expiring(self, now: datetime | None = None) -> list[str]:
        """Re-sign targets, snapshot and timestamp when little of their lifetime is left.

        Called before serving ``timestamp.json``, so an idle repository never lets
        its short-lived timestamp expire under devices. Returns the roles re-signed.
        """
        now = now or datetime.now(UTC)

        def expiring(role: str) -> bool:
            expires: datetime = self._load(role).signed.expires
            left_s = (expires - now).total_seconds()
            return left_s < self.policy.lifetime_s(role) * self.policy.refresh_fraction

        if not self.initialised or not any(expiring(r) for r in ("timestamp", "snapshot", "targets")):
            return []
        with self._locked():
            if expiring("targets") and self.can_sign("targets"):
                self._publish_targets(self._load("targets"))
                return ["targets", "snapshot", "timestamp"]
            if expiring("snapshot"):
                self._publish_snapshot()
                return ["snapshot", "timestamp"]
            if expiring("timestamp"):
                self._publish_timestamp()
                return ["timestamp"]
        return []

    # -- air-gapped bundles -----------------------------------------------------
    def bundle_metadata(self, expires_at: datetime) -> dict[str, bytes]:
        """The metadata an offline bundle carries, by the file name a client asks for.

        Every root version (a device walks the chain from the root it trusts), the current
        targets as signed (offline keys are never needed), and a snapshot and timestamp of
        the same versions re-signed with the online keys to expire at ``expires_at``: the
        online timestamp lives a day, a bundle may sit on a medium for weeks. Nothing in the
        repository changes; devices verify a bundle in a cache apart from their online one,
        so these copies never meet the online versions (docs/adr, air-gapped bundles).

        Raises:
            ValueError: ``expires_at`` is past the root's or the targets' own expiry (the bundle
                cannot outlive what it vouches for: re-sign targets first, or choose a shorter expiry).
        """
        with self._locked():
            root_md: Metadata[Root] = self._load("root")
            targets_md: Metadata[Targets] = self._load("targets")
            for role, md in (("root", root_md), ("targets", targets_md)):
                if expires_at > md.signed.expires:
                    raise ValueError(
                        f"the {role} metadata expires at {md.signed.expires.isoformat()}, before the bundle would "
                        f"({expires_at.isoformat()}); choose a shorter --expires"
                        + (" or re-sign targets (`edgefleet keys sign-targets --offline-keys DIR`)"
                           if role == "targets" else ""))
            files = {f"{version}.root.json": (self.metadata_dir / f"{version}.root.json").read_bytes()
                     for version in range(1, root_md.signed.version + 1)}
            files[f"{targets_md.signed.version}.targets.json"] = (
                self.metadata_dir / f"{targets_md.signed.version}.targets.json").read_bytes()
            snapshot_md: Metadata[Snapshot] = self._load("snapshot")
            snapshot_md.signed.expires = expires_at
            self._sign(snapshot_md, root_md.signed.roles["snapshot"].keyids, role="snapshot")
            files[f"{snapshot_md.signed.version}.snapshot.json"] = bytes(snapshot_md.to_bytes())
            timestamp_md: Metadata[Timestamp] = self._load("timestamp")
            timestamp_md.signed.expires = expires_at
            self._sign(timestamp_md, root_md.signed.roles["timestamp"].keyids, role="timestamp")
            files["timestamp.json"] = bytes(timestamp_md.to_bytes())
            return files

    def package_target_files(self, package_id: str) -> list[Path]:
        """The files a client downloads for ``package_id`` (hash-prefixed names, as served)."""
        directory = self.targets_dir / package_id
        return sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []

    # -- rotation ------------------------------------------------------------
    def rotate_keys(self, role: str, *, keys: int | None = None, threshold: int | None = None) -> Root:
        """Replace every key of ``role`` with new ones and publish a new root version.

        The new root is signed by the old root keys *and* the new ones, so a device
        that trusts the old root accepts it and the new root verifies itself. The
        rotated role's metadata is re-signed with its new keys. Old private keys are
        deleted: after a compromise they must not sign anything again.

        Raises:
            ValueError: unknown role, or an impossible threshold.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        with self._locked():
            root_md: Metadata[Root] = self._load("root")
            root = root_md.signed
            old_root_keyids = list(root.roles["root"].keyids)
            old_keyids = list(root.roles[role].keyids)
            count = keys or len(old_keyids)
            new_threshold = threshold or root.roles[role].threshold
            if not 1 <= new_threshold <= count:
                raise ValueError(f"threshold {new_threshold} must be between 1 and the {count} new keys")
            for keyid in old_keyids:
                root.revoke_key(keyid, role)
            for _ in range(count):
                root.add_key(self._new_key(role), role)
            root.roles[role].threshold = new_threshold
            self._bump(root, "root")
            signers = list(dict.fromkeys([*old_root_keyids, *root.roles["root"].keyids]))
            self._sign(root_md, signers, role="root")
            # Both the old and the new root must accept this version before it is published.
            Metadata.from_file(str(self.metadata_dir / "root.json")).verify_delegate("root", root_md)
            root_md.verify_delegate("root", root_md)
            self._write_root(root_md)
            for keyid in old_keyids:
                old_key = self._key_path(keyid)
                if old_key is not None:
                    old_key.unlink()
            if role == "targets":
                self._publish_targets(self._load("targets"))
            elif role == "snapshot":
                self._publish_snapshot()
            elif role == "timestamp":
                self._publish_timestamp()
            return root

    # -- the director key, vouched for by root --------------------------------
    def director_public_pems(self) -> list[str]:
        listed = self.root().unrecognized_fields.get(DIRECTOR_KEYS_FIELD, [])
        return [str(pem) for pem in listed] if isinstance(listed, list) else []

    def set_director_key(self, public_pem: bytes) -> Root:
        """Publish a new root version whose only director key is ``public_pem``.

        Signed by the root keys (attach them with ``offline_keys_dir`` when they are offline);
        devices pick it up on their next metadata refresh and from then on accept commands
        signed by the new key only.

        Raises:
            OfflineKeyRequired: the root keys are not reachable.
        """
        with self._locked():
            root_md: Metadata[Root] = self._load("root")
            root = root_md.signed
            root.unrecognized_fields[DIRECTOR_KEYS_FIELD] = [public_pem.decode()]
            self._bump(root, "root")
            self._sign(root_md, root.roles["root"].keyids, role="root", threshold=root.roles["root"].threshold)
            Metadata.from_file(str(self.metadata_dir / "root.json")).verify_delegate("root", root_md)
            root_md.verify_delegate("root", root_md)
            self._write_root(root_md)
            return root

    # -- serving -------------------------------------------------------------
    def metadata_file(self, name: str) -> Path | None:
        """The file for a metadata request name (``timestamp.json``, ``3.snapshot.json``), or None."""
        return _child(self.metadata_dir, name)

    def target_file(self, relative: str) -> Path | None:
        """The file for a target request path (``<package>/<sha256>.<name>``), or None."""
        return _child(self.targets_dir, relative)


def _child(base: Path, relative: str) -> Path | None:
    # Only plain names below base: no traversal, no hidden files (the lock, temp files).
    parts = relative.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None
    path = base.joinpath(*parts)
    return path if path.is_file() else None


def sign_metadata_offline(unsigned: bytes, root_json: bytes, keys_dir: Path, role: str = "targets") -> bytes:
    """Sign ``role`` metadata with the keys of ``role`` found in ``keys_dir``: the step run where
    the offline keys are. Needs only the metadata, the current root (for the key ids) and the keys.

    Raises:
        ValueError: the keys found do not reach the role's threshold.
    """
    md: Metadata[Any] = Metadata.from_bytes(unsigned)
    root: Root = Metadata.from_bytes(root_json).signed
    spec = root.roles[role]
    md.signatures.clear()
    for keyid in spec.keyids:
        path = keys_dir / f"{keyid}.pem"
        if path.exists():
            private = load_private_key(path)
            md.sign(CryptoSigner(private, SSlibKey.from_crypto(private.public_key())), append=True)
    if len(md.signatures) < spec.threshold:
        raise ValueError(f"{role} needs {spec.threshold} signature(s); {len(md.signatures)} key(s) of it are in {keys_dir}")
    return bytes(md.to_bytes())
