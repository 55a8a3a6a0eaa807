"""Air-gapped bundles without an agent process: real TUF repository, real keys, the device's checks.

The end-to-end path (control plane, agent process, broker) is tests/integration/test_bundles.py;
here are the parts that need no process: what a bundle may carry, and the checks that
need device state (the command seq) or a hostile archive.
"""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from agent.contract import DeployCommand
from agent.security import ReplayedCommandError
from agent.security.bundle import BundleFormatError, check_bundle, copy_bundle
from cloud.fleet.bundle import parse_duration_s, write_bundle
from cloud.security.director import DirectorKey
from cloud.security.tuf_repo import TufRepository
from tests.security.hostile import PROFILE, make_package


def _repo(tmp_path: Path, offline: Path | None = None) -> tuple[TufRepository, DirectorKey]:
    director = DirectorKey(tmp_path / "director" / "director.pem")
    director.initialise()
    repo = TufRepository(tmp_path / "tuf", offline_keys_dir=offline)
    repo.initialise(director_public_pem=director.public_pem())
    return repo, director


def test_a_bundle_is_signed_with_online_keys_only_and_cannot_outlive_its_targets(tmp_path: Path) -> None:
    offline = tmp_path / "offline-keys"
    with_keys, _ = _repo(tmp_path, offline)
    package = make_package(tmp_path, "shapes-1")
    with_keys.add_package(package.directory)  # signed where the offline keys are attached
    online = TufRepository(with_keys.directory)  # the control plane host: no root or targets key here
    assert not online.can_sign("targets")
    served_before = (online.metadata_dir / "timestamp.json").read_bytes()

    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    files = online.bundle_metadata(expires_at)
    timestamp = Metadata.from_bytes(files["timestamp.json"]).signed
    assert timestamp.expires == expires_at
    assert timestamp.version == Metadata.from_bytes(served_before).signed.version
    assert (online.metadata_dir / "timestamp.json").read_bytes() == served_before  # the online one is untouched
    assert "1.root.json" in files and any(name.endswith(".targets.json") for name in files)

    with pytest.raises(ValueError, match="targets metadata expires"):
        online.bundle_metadata(datetime.now(UTC) + timedelta(days=120))


def test_durations_are_positive_with_a_unit() -> None:
    assert parse_duration_s("30d") == 30 * 86_400
    assert parse_duration_s("90m") == 5400
    for bad in ("0d", "-1h", "soon", "3y"):
        with pytest.raises(ValueError, match="positive duration"):
            parse_duration_s(bad)


def test_a_bundle_replayed_after_its_command_was_taken_is_refused(tmp_path: Path) -> None:
    repo, director = _repo(tmp_path)
    package = make_package(tmp_path, "shapes-1")
    repo.add_package(package.directory)
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    command = director.sign(DeployCommand(
        device_id="cam-1", job_id="job-1", package_id=package.manifest.package_id,
        model_version=package.manifest.model_version, manifest_url="bundle:", manifest_sha256=package.manifest_sha256,
        seq=7, expires_at=expires_at))
    bundle = write_bundle(tmp_path / "bundle", info={"format": 1, "bundle_id": "b-1", "package_id": command.package_id,
                                                      "model_version": command.model_version,
                                                      "expires_at": expires_at.isoformat(), "device_ids": ["cam-1"]},
                          metadata=repo.bundle_metadata(expires_at),
                          target_files=repo.package_target_files(command.package_id),
                          package_id=command.package_id, commands=[command])
    root = tmp_path / "device-root.json"
    root.write_bytes(repo.trusted_root_bytes())

    def check(last_seq: int) -> None:
        check_bundle(bundle, device_id="cam-1", hardware_profile=PROFILE, trusted_root=root, director_key_file=None,
                     last_seq=last_seq, release_floors={}, now=datetime.now(UTC), seq_window=1000,
                     max_package_bytes=10**7)

    check(last_seq=6)  # verified: metadata, director (listed in the bundle's root), package
    with pytest.raises(ReplayedCommandError):
        check(last_seq=7)


def test_an_archive_reaching_outside_its_directory_is_refused(tmp_path: Path) -> None:
    archive_path = tmp_path / "evil.tar"
    with tarfile.open(archive_path, "w") as archive:
        entry = tarfile.TarInfo("../outside.json")
        entry.size = 2
        archive.addfile(entry, io.BytesIO(b"{}"))
    with pytest.raises(BundleFormatError):
        copy_bundle(archive_path, tmp_path / "unpacked", max_bytes=10**6)
    assert not (tmp_path / "outside.json").exists()
