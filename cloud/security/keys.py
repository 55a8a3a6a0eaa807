"""Private keys on disk: one directory, owner-only permissions, checked on every load.

Every key the control plane holds (TUF roles, the director, the fleet CAs) is a
PEM PKCS#8 file written with mode 0600 in a directory with mode 0700. A key file
that others can read is refused rather than used: a leaked key is worse than a
control plane that will not start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from cloud.errors import EdgeFleetError

__all__ = ["KeyPermissionError", "ensure_private_dir", "load_private_key", "write_private_key"]


class KeyPermissionError(EdgeFleetError, PermissionError):
    """A key file or key directory is readable by someone other than its owner."""


def ensure_private_dir(directory: Path) -> Path:
    """Create ``directory`` (mode 0700) or check that an existing one is owner-only.

    Raises:
        KeyPermissionError: the directory is group- or world-accessible.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"key directory {directory} has mode {mode:o}; run `chmod 700 {directory}` before using it"
        )
    return directory


def _check_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyPermissionError(f"key file {path} has mode {mode:o}; run `chmod 600 {path}` before using it")


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write ``key`` as unencrypted PEM PKCS#8, created 0600 (never world-readable, even briefly)."""
    ensure_private_dir(path.parent)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Load a PEM private key after checking its permissions and its directory's.

    Raises:
        KeyPermissionError: the file or its directory is readable by others.
        FileNotFoundError: no such key.
        ValueError: the file is not a PEM private key.
    """
    ensure_private_dir(path.parent)
    _check_file(path)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)
