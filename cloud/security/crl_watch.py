"""Carry a revocation to a running broker: watch the CRL, reload the broker when it changes.

Mosquitto reads its ``crlfile`` at start and on SIGHUP, not when the file changes, so a
device revoked in the API would otherwise connect until someone restarts the broker.
:class:`CrlWatcher` polls a source (the CA's CRL file when the broker shares the
control plane's disk, or the control plane's ``/tuf/crl.pem`` when it does not),
checks that a new CRL is signed by the device CA, writes it where the broker reads it,
and reloads the broker (SIGHUP to a pid, or any reload command such as
``systemctl reload mosquitto``). New connections with a revoked certificate are
refused from then on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["CrlWatcher", "ReloadError", "reload_by_command", "reload_by_pid_file"]

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """The CRL could not be fetched or verified, or the broker could not be reloaded."""


def reload_by_pid_file(pid_file: Path) -> Callable[[], None]:
    def reload() -> None:
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise ReloadError(f"cannot SIGHUP the broker whose pid is in {pid_file}: {exc}") from exc
    return reload


def reload_by_command(command: str) -> Callable[[], None]:
    def reload() -> None:
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise ReloadError(f"{command!r} exited {result.returncode}: {result.stderr.strip()[:300]}")
    return reload


@dataclass
class CrlWatcher:
    """``source`` is a file path or an http(s) URL; ``target`` is the broker's ``crlfile``."""

    source: str
    target: Path
    ca_cert: Path
    reload: Callable[[], None]
    _last_digest: str | None = None

    def _read_source(self) -> bytes:
        if self.source.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(self.source, timeout=10) as response:
                    return bytes(response.read(10_000_000))
            except OSError as exc:
                raise ReloadError(f"cannot fetch the CRL from {self.source}: {exc}") from exc
        try:
            return Path(self.source).read_bytes()
        except OSError as exc:
            raise ReloadError(f"cannot read the CRL {self.source}: {exc}") from exc

    def _verify(self, crl_pem: bytes) -> None:
        try:
            crl = x509.load_pem_x509_crl(crl_pem)
            ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise ReloadError(f"not a CRL, or no CA certificate at {self.ca_cert}: {exc}") from exc
        public_key = ca.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public_key):
            raise ReloadError(f"the CRL from {self.source} is not signed by the CA in {self.ca_cert}; not installed")

    def poll_once(self) -> bool:
        """Install and reload if the CRL changed since the last poll. Returns True when it reloaded.

        The first poll always installs and reloads: the broker may have started on an older file.

        Raises:
            ReloadError: fetch, verification or reload failed (the old CRL stays in place).
        """
        crl_pem = self._read_source()
        digest = hashlib.sha256(crl_pem).hexdigest()
        if digest == self._last_digest:
            return False
        self._verify(crl_pem)
        from_url = self.source.startswith(("http://", "https://"))
        if from_url or Path(self.source).resolve() != self.target.resolve():
            tmp = self.target.with_name(f".{self.target.name}.tmp")
            tmp.write_bytes(crl_pem)
            os.replace(tmp, self.target)
        self.reload()
        self._last_digest = digest
        return True

    def run(self, interval_s: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Poll until ``stop()``; failures are logged and retried, never fatal."""
        while not stop():
            try:
                if self.poll_once():
                    log.info("CRL changed (sha256 %s); broker reloaded", self._last_digest)
            except ReloadError as exc:
                log.error("%s", exc)
            time.sleep(interval_s)
