"""Device-side security: director-signed commands, the TUF updater, enrollment.

See docs/security.md for which attack each check stops.
"""

from agent.security.commands import check_fresh, load_director_key, verify_command, verify_signature
from agent.security.errors import (
    CommandExpiredError,
    DownloadDeadlineError,
    LengthExceededError,
    MetadataExpiredError,
    MisaddressedCommandError,
    NotEnrolledError,
    PackageDowngradeError,
    ReplayedCommandError,
    SeqOutOfWindowError,
    UnknownTargetError,
    UnsignedCommandError,
)
from agent.security.updater import PackageUpdater, SignedTarget, translate_tuf_error

__all__ = [
    "CommandExpiredError",
    "DownloadDeadlineError",
    "LengthExceededError",
    "MetadataExpiredError",
    "MisaddressedCommandError",
    "NotEnrolledError",
    "PackageDowngradeError",
    "PackageUpdater",
    "ReplayedCommandError",
    "SeqOutOfWindowError",
    "SignedTarget",
    "UnknownTargetError",
    "UnsignedCommandError",
    "check_fresh",
    "load_director_key",
    "translate_tuf_error",
    "verify_command",
    "verify_signature",
]
