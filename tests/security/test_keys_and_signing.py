"""Key files, automatic timestamp re-signing, and command signatures as pure functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from agent.contract import DeployCommand, parse_command
from agent.contract.signing import command_signing_bytes
from agent.errors import SignatureError
from agent.security import (
    CommandExpiredError,
    MisaddressedCommandError,
    ReplayedCommandError,
    SeqOutOfWindowError,
    load_director_key,
    verify_command,
)
from cloud.security.director import DirectorKey
from cloud.security.keys import KeyPermissionError
from cloud.security.tuf_repo import TufPolicy, TufRepository


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    repo = TufRepository(tmp_path / "repo", TufPolicy(timestamp_expiry_s=3600))
    repo.initialise()
    for key_file in repo.keys_dir.glob("*.pem"):
        key_file.chmod(0o644)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        repo.refresh_expiring(datetime.now(UTC) + timedelta(days=365))  # has to sign, so loads keys


def test_timestamp_is_re_signed_before_it_expires(tmp_path: Path) -> None:
    repo = TufRepository(tmp_path / "repo", TufPolicy(timestamp_expiry_s=3600))
    repo.initialise()
    before = Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed
    assert repo.refresh_expiring() == []  # plenty of life left: nothing to do
    assert repo.refresh_expiring(before.expires - timedelta(minutes=10)) == ["timestamp"]
    after = Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed
    assert after.version == before.version + 1 and after.expires >= before.expires


def _command(**overrides: object) -> DeployCommand:
    fields: dict[str, object] = {
        "device_id": "cam-1", "job_id": "job-1", "package_id": "p-1", "model_version": "m-1",
        "manifest_url": "http://x/manifest.json", "manifest_sha256": "a" * 64, "seq": 5,
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
    }
    fields.update(overrides)
    return DeployCommand(**fields)


def test_director_signature_survives_the_wire_and_binds_every_field(tmp_path: Path) -> None:
    director = DirectorKey(tmp_path / "keys" / "director.pem")
    director.initialise()
    (tmp_path / "director.pub").write_bytes(director.public_pem())
    public = load_director_key(tmp_path / "director.pub")
    now = datetime.now(UTC)
    received = parse_command(director.sign(_command()).to_bytes())  # JSON out and back in, as over MQTT

    verify_command(received, director_key=public, device_id="cam-1", last_seq=4, now=now)
    tampered = received.model_copy(update={"package_id": "p-evil"})
    with pytest.raises(SignatureError):
        verify_command(tampered, director_key=public, device_id="cam-1", last_seq=4, now=now)
    with pytest.raises(MisaddressedCommandError):
        verify_command(received, director_key=public, device_id="cam-2", last_seq=4, now=now)
    with pytest.raises(ReplayedCommandError):
        verify_command(received, director_key=public, device_id="cam-1", last_seq=5, now=now)
    with pytest.raises(CommandExpiredError):
        verify_command(received, director_key=public, device_id="cam-1", last_seq=4, now=now + timedelta(hours=2))


def test_a_seq_far_ahead_of_the_last_accepted_is_refused(tmp_path: Path) -> None:
    director = DirectorKey(tmp_path / "keys" / "director.pem")
    director.initialise()
    (tmp_path / "director.pub").write_bytes(director.public_pem())
    public = load_director_key(tmp_path / "director.pub")
    now = datetime.now(UTC)
    command = director.sign(_command(seq=4 + 1000))
    verify_command(command, director_key=public, device_id="cam-1", last_seq=4, now=now, seq_window=1000)
    with pytest.raises(SeqOutOfWindowError):
        verify_command(command, director_key=public, device_id="cam-1", last_seq=4, now=now, seq_window=999)


def test_the_rollback_flag_is_signed_and_absent_from_the_bytes_when_false(tmp_path: Path) -> None:
    director = DirectorKey(tmp_path / "keys" / "director.pem")
    director.initialise()
    (tmp_path / "director.pub").write_bytes(director.public_pem())
    public = load_director_key(tmp_path / "director.pub")
    now = datetime.now(UTC)
    # A control plane that predates the field signs the same bytes as one that sends it false.
    assert "rollback" not in json.loads(command_signing_bytes(_command()))
    plain = director.sign(_command())
    with pytest.raises(SignatureError):
        verify_command(plain.model_copy(update={"rollback": True}), director_key=public, device_id="cam-1",
                       last_seq=4, now=now)
    rollback = parse_command(director.sign(_command(rollback=True)).to_bytes())
    verify_command(rollback, director_key=public, device_id="cam-1", last_seq=4, now=now)
    with pytest.raises(SignatureError):
        verify_command(rollback.model_copy(update={"rollback": False}), director_key=public, device_id="cam-1",
                       last_seq=4, now=now)
