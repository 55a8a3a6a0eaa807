"""The wire contract between the control plane and devices.

Shared by both sides: ``cloud`` imports it, and it imports nothing from ``cloud``.
"""

from agent.contract.manifest import (
    MANIFEST_FILE,
    ModelArtifact,
    PackageFile,
    PackageManifest,
    describe_file,
    sha256_bytes,
    sha256_file,
)
from agent.contract.messages import (
    DEFAULT_MAX_REPORT_BYTES,
    SCHEMA_VERSION,
    ContractError,
    DeployCommand,
    DeviceMismatch,
    DeviceState,
    JobState,
    JobStatusReport,
    MalformedPayload,
    PayloadTooLarge,
    Report,
    SchemaViolation,
    StatusReport,
    TelemetryReport,
    new_message_id,
    parse_command,
    parse_report,
    utc_now,
)
from agent.contract.preprocess import PreprocessSpec
from agent.contract.topics import DEFAULT_PREFIX, ReportKind, TopicError, Topics, validate_device_id

__all__ = [
    "DEFAULT_MAX_REPORT_BYTES",
    "DEFAULT_PREFIX",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "ContractError",
    "DeployCommand",
    "DeviceMismatch",
    "DeviceState",
    "JobState",
    "JobStatusReport",
    "MalformedPayload",
    "ModelArtifact",
    "PackageFile",
    "PackageManifest",
    "PayloadTooLarge",
    "PreprocessSpec",
    "Report",
    "ReportKind",
    "SchemaViolation",
    "StatusReport",
    "TelemetryReport",
    "TopicError",
    "Topics",
    "describe_file",
    "new_message_id",
    "parse_command",
    "parse_report",
    "sha256_bytes",
    "sha256_file",
    "utc_now",
    "validate_device_id",
]
