"""The director key: signs every cloud → device command (Uptane's director role).

It is deliberately separate from the TUF keys: a stolen director key can only
*ask* a device to install something that TUF already vouches for, and a stolen
TUF key cannot aim an install at a device.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract import CameraConfigCommand, DeployCommand, ResyncCommand
from agent.contract.signing import command_signing_bytes
from cloud.security.keys import load_private_key, write_private_key

__all__ = ["DirectorKey"]

SignedCommand = TypeVar("SignedCommand", DeployCommand, ResyncCommand, CameraConfigCommand)


class DirectorKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: Ed25519PrivateKey | None = None
        self._loaded_from: tuple[int, int] | None = None

    def initialise(self) -> bool:
        """Create the key if missing. Returns False if it existed."""
        if self.path.exists():
            return False
        write_private_key(self.path, Ed25519PrivateKey.generate())
        return True

    def _private(self) -> Ed25519PrivateKey:
        # Reloaded when the file is replaced: `edgefleet keys rotate-director` runs in another
        # process, and the running control plane must sign with the new key from then on.
        stat = self.path.stat()
        identity = (stat.st_ino, stat.st_mtime_ns)
        if self._key is None or identity != self._loaded_from:
            key = load_private_key(self.path)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"director key {self.path} is not an Ed25519 key")
            self._key, self._loaded_from = key, identity
        return self._key

    def public_pem(self) -> bytes:
        return self._private().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, command: SignedCommand) -> SignedCommand:
        """Return ``command`` with its ``signature`` set (base64 Ed25519 over the canonical bytes)."""
        signature = self._private().sign(command_signing_bytes(command))
        return command.model_copy(update={"signature": base64.b64encode(signature).decode()})

    def rotate(self, publish: Callable[[bytes], object]) -> None:
        """Replace the key. ``publish`` gets the new public key first (a root update that
        devices verify); only if it succeeds does the new key replace the old one."""
        new_key = Ed25519PrivateKey.generate()
        publish(new_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
        write_private_key(self.path, new_key)
        self._key = None
