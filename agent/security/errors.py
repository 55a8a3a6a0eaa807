"""Security rejections, as subclasses of the agent's error families.

Each has its own ``code`` (what job reports and telemetry carry) but stays in its
family: a forged command is a :class:`SignatureError`, a replayed one a
:class:`RollbackError`, a trickling download a :class:`DownloadError`.
"""

from __future__ import annotations

from agent.errors import (
    DigestMismatchError,
    DownloadError,
    PackageDowngradeError,
    RollbackError,
    SignatureError,
    UntrustedContentError,
)

__all__ = [
    "CommandExpiredError",
    "DownloadDeadlineError",
    "LengthExceededError",
    "MetadataExpiredError",
    "MisaddressedCommandError",
    "NotEnrolledError",
    "PackageDowngradeError",
    "ReplayedCommandError",
    "SeqOutOfWindowError",
    "UnknownTargetError",
    "UnsignedCommandError",
]


class UnsignedCommandError(SignatureError):
    code = "unsigned_command"


class CommandExpiredError(UntrustedContentError):
    code = "expired_command"


class ReplayedCommandError(RollbackError):
    code = "replayed_command"


class SeqOutOfWindowError(UntrustedContentError):
    """A signed command whose seq is further ahead of the last accepted one than the window allows."""

    code = "seq_out_of_window"


class MisaddressedCommandError(UntrustedContentError):
    code = "misaddressed_command"


class MetadataExpiredError(UntrustedContentError):
    """Signed metadata is past its expiry: the repository (or a mirror) is frozen."""

    code = "expired_metadata"


class LengthExceededError(DigestMismatchError):
    """More bytes arrived than the signed length (endless data, or a longer tampered file)."""

    code = "length_exceeded"


class UnknownTargetError(UntrustedContentError):
    """The command names a package that the signed targets metadata does not list."""

    code = "unknown_target"


class DownloadDeadlineError(DownloadError):
    code = "download_deadline"


class NotEnrolledError(UntrustedContentError):
    """The agent has no TUF root or director key: it cannot trust any command or package."""

    code = "not_enrolled"
