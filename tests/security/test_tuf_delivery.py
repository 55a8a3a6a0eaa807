"""Package delivery attacks against the device's TUF client.

Each test: the device installed a package through an honest mirror, then the
mirror turns hostile. The install must be refused with the error that names the
attack, and the device's package store must be byte-for-byte what it was.
Real python-tuf (repository and client), real Ed25519 keys, real HTTP on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from agent.errors import DigestMismatchError, IncompatiblePackageError, RollbackError, SignatureError
from agent.security import DownloadDeadlineError, LengthExceededError
from cloud.security.tuf_repo import TufPolicy, TufRepository
from tests.security.hostile import Device, Mirror, expect_refusal, make_package

# Production thresholds: root is 2 of 3 keys.
PRODUCTION = TufPolicy.for_environment("production")


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    repository = TufRepository(tmp_path / "repo", PRODUCTION)
    repository.initialise()
    return repository


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    server = Mirror(tmp_path / "mirror")
    yield server
    server.stop()


@pytest.fixture
def device(tmp_path: Path, repo: TufRepository, mirror: Mirror) -> Device:
    """A device that trusts the repository's root and already runs package v1."""
    v1 = make_package(tmp_path, "shapes-1")
    repo.add_package(v1.directory)
    mirror.sync(repo)
    dev = Device(tmp_path, mirror, repo.trusted_root_bytes())
    dev.install(v1)
    return dev


def _publish(repo: TufRepository, mirror: Mirror, tmp_path: Path, version: str, **kwargs: object):
    package = make_package(tmp_path, version, **kwargs)
    repo.add_package(package.directory)
    mirror.sync(repo)
    return package


def test_tampered_package_same_length_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    served = mirror.target_file(v2.manifest.package_id, "model.onnx")
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))

    expect_refusal(device, lambda: device.install(v2), DigestMismatchError)


def test_tampered_package_longer_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    served = mirror.target_file(v2.manifest.package_id, "model.onnx")
    served.write_bytes(served.read_bytes() + b"\x00" * 1024)

    expect_refusal(device, lambda: device.install(v2), LengthExceededError)


def test_timestamp_signed_by_unknown_key_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    forged = Metadata.from_file(str(mirror.metadata("timestamp.json")))
    forged.signed.version += 1
    forged.sign(CryptoSigner.generate_ed25519())  # the attacker's own key
    mirror.metadata("timestamp.json").write_bytes(forged.to_bytes())

    expect_refusal(device, lambda: device.install(v2), SignatureError)


def test_new_root_signed_below_threshold_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    # The attacker stole one of the three root keys and tries to install their own timestamp key.
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    root_md = Metadata.from_file(str(repo.metadata_dir / "root.json"))
    root = root_md.signed
    attacker = CryptoSigner.generate_ed25519()
    for keyid in list(root.roles["timestamp"].keyids):
        root.revoke_key(keyid, "timestamp")
    root.add_key(attacker.public_key, "timestamp")
    root.version += 1
    stolen = root_md.signed.roles["root"].keyids[0]
    root_md.signatures.clear()
    root_md.sign(repo._signer(stolen))  # one of three keys; the threshold is two
    mirror.metadata(f"{root.version}.root.json").write_bytes(root_md.to_bytes())
    timestamp = Metadata.from_file(str(mirror.metadata("timestamp.json")))
    timestamp.signed.version += 1
    timestamp.sign(attacker)
    mirror.metadata("timestamp.json").write_bytes(timestamp.to_bytes())

    expect_refusal(device, lambda: device.install(v2), SignatureError)
    assert device.trusted_root_version() == 1


def test_replayed_older_timestamp_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    v1_timestamp = mirror.metadata("timestamp.json").read_bytes()
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    device.install(v2)  # the device has now seen a newer timestamp
    # Roll back: serve the timestamp from when only v1 existed, and ask for v1 again.
    mirror.metadata("timestamp.json").write_bytes(v1_timestamp)
    v1 = make_package(tmp_path, "shapes-1")

    expect_refusal(device, lambda: device.install(v1), RollbackError)


def test_older_snapshot_served_as_newer_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    # Mix-and-match: the current timestamp, but the snapshot file it names holds an older snapshot.
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    current = Metadata.from_file(str(mirror.metadata("timestamp.json"))).signed.snapshot_meta.version
    older = mirror.metadata(f"{current - 1}.snapshot.json").read_bytes()
    mirror.metadata(f"{current}.snapshot.json").write_bytes(older)

    expect_refusal(device, lambda: device.install(v2), RollbackError)


def test_oversized_metadata_is_refused(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    # Endless data: a timestamp far beyond tuf's 16 KiB limit (still valid JSON, so only the size gives it away).
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    path = mirror.metadata("timestamp.json")
    path.write_bytes(path.read_bytes() + b" " * 200_000)

    expect_refusal(device, lambda: device.install(v2), LengthExceededError)


def test_package_for_another_hardware_profile_is_refused(device: Device, repo: TufRepository, mirror: Mirror,
                                                         tmp_path: Path) -> None:
    other = _publish(repo, mirror, tmp_path, "shapes-npu", profiles=["arm64-npu"])
    mirror.requests.clear()

    exc = expect_refusal(device, lambda: device.install(other), IncompatiblePackageError)
    assert "arm64-npu" in str(exc)
    # Refused from the signed metadata alone: not one byte of the package was fetched.
    assert not [path for path, _ in mirror.requests if path.startswith("/targets/")]


def test_download_slower_than_the_deadline_is_abandoned(tmp_path: Path, repo: TufRepository, mirror: Mirror) -> None:
    v1 = make_package(tmp_path, "shapes-1")
    repo.add_package(v1.directory)
    mirror.sync(repo)
    slow = Device(tmp_path, mirror, repo.trusted_root_bytes(), deadline_s=2.0)
    slow.install(v1)  # at full speed a file takes milliseconds
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")
    mirror.trickle_delay_s = 0.01  # a byte every 10 ms: never stalled, 40 s for the 4 KiB model

    expect_refusal(slow, lambda: slow.install(v2), DownloadDeadlineError)


def test_dropped_connection_resumes_with_range(device: Device, repo: TufRepository, mirror: Mirror, tmp_path: Path) -> None:
    v2 = _publish(repo, mirror, tmp_path, "shapes-2", size=64 * 1024)
    served = mirror.target_file(v2.manifest.package_id, "model.onnx")
    path = f"/targets/{v2.manifest.package_id}/{served.name}"
    mirror.drop_once.add(path)

    assert device.install(v2).package_id == v2.manifest.package_id
    ranges = [rng for p, rng in mirror.requests if p == path]
    assert ranges[0] is None and ranges[1] == f"bytes={64 * 1024 // 2}-"


def test_root_key_rotation_then_normal_update_succeeds(device: Device, repo: TufRepository, mirror: Mirror,
                                                      tmp_path: Path) -> None:
    repo.rotate_keys("root", keys=3, threshold=2)
    repo.rotate_keys("timestamp")
    v2 = _publish(repo, mirror, tmp_path, "shapes-2")

    assert device.install(v2).package_id == v2.manifest.package_id
    assert device.trusted_root_version() == 3
