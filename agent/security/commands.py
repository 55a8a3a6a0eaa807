"""Verifying director-signed commands. Pure: data in, exception or nothing out.

A command is trusted only if it is signed by the director key the device received
at enrollment, names this device, has not expired, and carries a sequence number
larger than any the device has accepted (persisted by the caller) but not absurdly so
(at most a window ahead). Even then it is
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

from agent.contract import Command, ResyncCommand
from agent.contract.signing import command_signing_bytes
from agent.errors import SignatureError
from agent.security.errors import (
    CommandExpiredError,
    MisaddressedCommandError,
    ReplayedCommandError,
    SeqOutOfWindowError,
    UnsignedCommandError,
)

__all__ = ["DEFAULT_SEQ_WINDOW", "check_fresh", "load_director_key", "verify_command", "verify_signature"]

# How far ahead of the last accepted seq a command may be (agent config command_seq_window).
DEFAULT_SEQ_WINDOW = 1_000_000


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


def verify_signature(command: Command, *, director_key: Ed25519PublicKey, device_id: str) -> None:
    """The checks that need no device state: the director's signature, then the addressee.

    Cheap (one Ed25519 verification), so the agent runs them as a command arrives, before
    it queues anything: a flood of forgeries never displaces a genuine command.

    Raises:
        UnsignedCommandError: no signature.
        SignatureError: the signature is malformed or not the director's.
        MisaddressedCommandError: signed for another device.
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


def check_fresh(command: Command, *, last_seq: int, now: datetime, seq_window: int = DEFAULT_SEQ_WINDOW) -> None:
    """The checks against the device's state, for a command whose signature holds.

    A deploy's seq must lie in ``(last_seq, last_seq + seq_window]``; a resync sets the
    base instead, so only its expiry is checked here (its issue time by the caller).

    Raises:
        CommandExpiredError: ``expires_at`` is in the past.
        ReplayedCommandError: ``seq`` is not larger than ``last_seq``.
        SeqOutOfWindowError: ``seq`` is more than ``seq_window`` ahead of ``last_seq``.
    """
    if command.expires_at <= now:
        raise CommandExpiredError(f"command {command.job_id} expired at {command.expires_at.isoformat()}")
    if isinstance(command, ResyncCommand):
        return
    if command.seq <= last_seq:
        raise ReplayedCommandError(f"command seq {command.seq} is not newer than the last accepted {last_seq}")
    if command.seq > last_seq + seq_window:
        raise SeqOutOfWindowError(f"command seq {command.seq} is more than {seq_window} ahead of the last "
                                  f"accepted {last_seq}; the control plane must resync the device")


def verify_command(
    command: Command,
    *,
    director_key: Ed25519PublicKey,
    device_id: str,
    last_seq: int,
    now: datetime,
    seq_window: int = DEFAULT_SEQ_WINDOW,
) -> None:
    """Accept ``command`` or raise why not: :func:`verify_signature`, then :func:`check_fresh`.
    The signature is checked first: nothing an unauthenticated sender wrote (device id,
    expiry, seq) is believed before it.

    Raises: what those two raise.
    """
    verify_signature(command, director_key=director_key, device_id=device_id)
    check_fresh(command, last_seq=last_seq, now=now, seq_window=seq_window)
