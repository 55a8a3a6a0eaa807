"""Agent errors, grouped by origin (as python-tuf does).

* :class:`UntrustedContentError`: what we received is wrong or hostile. Never retry
  blindly; report it.
* :class:`DeliveryError`: the network or broker failed. Retrying may help.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class. ``code`` is a stable short name used in job-status reports."""

    code = "agent_error"


class UntrustedContentError(AgentError):
    code = "untrusted_content"


class DigestMismatchError(UntrustedContentError):
    code = "digest_mismatch"


class SignatureError(UntrustedContentError):
    code = "bad_signature"


class RollbackError(UntrustedContentError):
    code = "rollback"


class PackageDowngradeError(RollbackError):
    """The package's release is below the one installed, and the command is not a signed rollback."""

    code = "package_downgrade"


class IncompatiblePackageError(UntrustedContentError):
    code = "incompatible_package"


class UnsupportedTaskError(IncompatiblePackageError):
    """The package's task (e.g. a newer kind of model) is one this agent cannot run."""

    code = "unsupported_task"


class UnsupportedDecoderError(IncompatiblePackageError):
    """The detection package's output layout is one this agent cannot decode."""

    code = "unsupported_decoder"


class DeliveryError(AgentError):
    code = "delivery"


class DownloadError(DeliveryError):
    code = "download_failed"


class CommandQueueFullError(DeliveryError):
    """Too many verified commands are waiting for the command thread; a later retry may fit."""

    code = "command_queue_full"


class CameraApplyError(AgentError):
    """A camera of an accepted camera set could not be started (its source would not open)."""

    code = "camera_apply_failed"


class InstallError(AgentError):
    """The package verified but could not be made to run (runtime refused it, disk full)."""

    code = "install_failed"


class RuntimeLoadError(InstallError):
    """The runtime is missing on this device or refused to load the model."""
