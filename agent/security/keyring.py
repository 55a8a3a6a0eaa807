"""The director keys a device trusts, and how it learns a rotated one.

TUF root lists the director's public keys (``DIRECTOR_KEYS_FIELD``), so a rotation is
a root update the device verifies against the chain it already trusts. Until the
device has seen a root that lists any, it trusts the key it received at enrollment.

A command signed by a key the device does not know may mean a rotation it has not
seen yet: the device refreshes its metadata and checks again, at most once per
``min_refresh_interval_s``, so a flood of forgeries cannot turn into a flood of
metadata downloads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.security.commands import load_director_key

__all__ = ["DirectorKeyring"]


class DirectorKeyring:
    def __init__(self, *, listed_in_root: Callable[[], list[bytes]], enrollment_key_file: Path | None,
                 refresh_metadata: Callable[[], None], min_refresh_interval_s: float = 30.0) -> None:
        self._listed_in_root = listed_in_root
        self._enrollment_key_file = enrollment_key_file
        self._refresh_metadata = refresh_metadata
        self._min_refresh_interval_s = min_refresh_interval_s
        self._last_refresh: float | None = None
        self._lock = threading.Lock()
        self._keys: list[Ed25519PublicKey] = []
        self.reload()

    def reload(self) -> None:
        """Read the keys again: those the newest verified root lists, else the enrollment key."""
        keys: list[Ed25519PublicKey] = []
        for pem in self._listed_in_root():
            try:
                key = serialization.load_pem_public_key(pem)
            except ValueError:
                continue
            if isinstance(key, Ed25519PublicKey):
                keys.append(key)
        if not keys and self._enrollment_key_file is not None:
            keys = [load_director_key(self._enrollment_key_file)]
        with self._lock:
            self._keys = keys

    @property
    def keys(self) -> list[Ed25519PublicKey]:
        with self._lock:
            return list(self._keys)

    def refresh_due(self) -> bool:
        with self._lock:
            return self._last_refresh is None or time.monotonic() - self._last_refresh >= self._min_refresh_interval_s

    def refresh(self) -> None:
        """Refresh TUF metadata (a newer root may list a new key) and reload.

        Raises:
            AgentError: the metadata refresh failed (the keys stay as they were).
        """
        with self._lock:
            self._last_refresh = time.monotonic()
        self._refresh_metadata()
        self.reload()
