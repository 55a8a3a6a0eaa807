"""Verifying director-signed commands. Pure: data in, exception or nothing out.

A command is trusted only if it is signed by the director key the device received
at enrollment, names this device, has not expired, and carries a sequence number
larger than any the device has accepted (persisted by the caller). Even then it is
only a hint: what gets installed is decided by TUF metadata.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.contract import DeployCommand
from agent.contract.signing import command_signing_bytes
from agent.errors import SignatureError
from agent.security.errors import (
    CommandExpiredError,
    MisaddressedCommandError,
    ReplayedCommandError,
    UnsignedCommandError,
)

__all__ = ["load_director_key", "verify_command"]


def load_director_key(path: Path) -> Ed25519PublicKey:
    """Read the director's PEM public key.

    Raises:
        ValueError: the file is missing or holds something other than an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load director public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"director public key {path} is not Ed25519")
    return key


def verify_command(
    command: DeployCommand,
    *,
    director_key: Ed25519PublicKey,
    device_id: str,
    last_seq: int,
    now: datetime,
) -> None:
    """Accept ``command`` or raise why not. The signature is checked first: nothing
    an unauthenticated sender wrote (device id, expiry, seq) is believed before it.

    Raises:
        UnsignedCommandError: no signature.
        SignatureError: the signature is malformed or not the director's.
        MisaddressedCommandError: signed for another device.
        CommandExpiredError: ``expires_at`` is in the past.
        ReplayedCommandError: ``seq`` is not larger than ``last_seq``.
    """
    if not command.signature:
        raise UnsignedCommandError(f"command {command.job_id} carries no director signature")
    try:
        signature = base64.b64decode(command.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"command {command.job_id} has a malformed signature") from exc
    try:
        director_key.verify(signature, command_signing_bytes(command))
    except InvalidSignature as exc:
        raise SignatureError(f"command {command.job_id} is not signed by the director key") from exc
    if command.device_id != device_id:
        raise MisaddressedCommandError(f"command {command.job_id} is addressed to {command.device_id}, not {device_id}")
    if command.expires_at <= now:
        raise CommandExpiredError(f"command {command.job_id} expired at {command.expires_at.isoformat()}")
    if command.seq <= last_seq:
        raise ReplayedCommandError(f"command seq {command.seq} is not newer than the last accepted {last_seq}")
