"""Device-side security: director-signed commands, the TUF updater, enrollment.

See docs/security.md for which attack each check stops.
"""

from agent.security.commands import load_director_key, verify_command
from agent.security.errors import (
    CommandExpiredError,
    DownloadDeadlineError,
    LengthExceededError,
    MetadataExpiredError,
    MisaddressedCommandError,
    NotEnrolledError,
    ReplayedCommandError,
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
    "PackageUpdater",
    "ReplayedCommandError",
    "SignedTarget",
    "UnknownTargetError",
    "UnsignedCommandError",
    "load_director_key",
    "translate_tuf_error",
    "verify_command",
]
