"""The device's TUF client: python-tuf's ``Updater`` behind a small, typed surface.

This is the one place tuf's exceptions are caught; each leaves as an
:mod:`agent.errors` type (untrusted content vs delivery), so callers never import tuf.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exceptions
from tuf.api._payload import TargetFile  # tuf.api.metadata re-exports it without __all__
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from agent.contract.enrollment import DIRECTOR_KEYS_FIELD
from agent.errors import (
    AgentError,
    DigestMismatchError,
    DownloadError,
    InstallError,
    RollbackError,
    SignatureError,
    UntrustedContentError,
)
from agent.security.errors import (
    DownloadDeadlineError,
    LengthExceededError,
    MetadataExpiredError,
    NotEnrolledError,
    UnknownTargetError,
)
from agent.update.fetcher import DeadlineExceeded

__all__ = ["PackageUpdater", "SignedTarget", "translate_tuf_error"]


@dataclass(frozen=True)
class SignedTarget:
    """A target as the signed targets metadata describes it."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any]
    info: TargetFile


def translate_tuf_error(exc: Exception) -> AgentError:
    """Map a python-tuf exception to the agent's error families (most specific first)."""
    mapping: list[tuple[type[Exception], type[AgentError]]] = [
        (DeadlineExceeded, DownloadDeadlineError),
        (tuf_exceptions.DownloadLengthMismatchError, LengthExceededError),
        (tuf_exceptions.DownloadError, DownloadError),
        (tuf_exceptions.ExpiredMetadataError, MetadataExpiredError),
        (tuf_exceptions.UnsignedMetadataError, SignatureError),
        (tuf_exceptions.BadVersionNumberError, RollbackError),
        (tuf_exceptions.LengthOrHashMismatchError, DigestMismatchError),
        (tuf_exceptions.RepositoryError, UntrustedContentError),
    ]
    for tuf_type, agent_type in mapping:
        if isinstance(exc, tuf_type):
            return agent_type(f"{type(exc).__name__}: {exc}")
    return InstallError(f"{type(exc).__name__}: {exc}")


@contextmanager
def _tuf_boundary() -> Iterator[None]:
    try:
        yield
    except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError) as exc:
        raise translate_tuf_error(exc) from exc
    except OSError as exc:
        raise InstallError(f"TUF metadata cache could not be written: {exc}") from exc


class PackageUpdater:
    """Refreshes signed metadata and downloads verified targets.

    ``trusted_root`` is the root received at enrollment: the trust anchor that every
    newer root must chain to. A fresh ``Updater`` is made for each refresh (tuf
    allows one refresh per instance); verified newer roots persist in ``metadata_dir``.
    """

    def __init__(self, *, metadata_dir: Path, metadata_url: str, targets_url: str, trusted_root: Path | None,
                 fetcher: FetcherInterface, config: UpdaterConfig | None = None) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url
        self.targets_url = targets_url
        self.trusted_root = trusted_root
        self.fetcher = fetcher
        self.config = config or UpdaterConfig()
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify root → timestamp → snapshot → targets.

        Raises:
            NotEnrolledError: no trusted root.
            UntrustedContentError: a subclass naming the attack (bad signature, rollback, expiry...).
            DownloadError: delivery failed.
        """
        if self.trusted_root is None or not self.trusted_root.exists():
            raise NotEnrolledError("no trusted TUF root: enroll the device first (edgefleet-agent enroll)")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        with _tuf_boundary():
            updater = Updater(str(self.metadata_dir), self.metadata_url, None, self.targets_url,
                              fetcher=self.fetcher, config=self.config, bootstrap=self.trusted_root.read_bytes())
            updater.refresh()
        self._updater = updater

    def director_key_pems(self) -> list[bytes]:
        """The director public keys the newest verified root lists (empty if it lists none).

        ngclient writes ``root.json`` into ``metadata_dir`` only after verifying it against
        the chain from the enrollment root, so what is read here is vouched for by root keys.
        """
        for path in (self.metadata_dir / "root.json", self.trusted_root):
            if path is None or not path.exists():
                continue
            try:
                listed = json.loads(path.read_bytes())["signed"].get(DIRECTOR_KEYS_FIELD, [])
            except (OSError, ValueError, KeyError, AttributeError):
                continue
            return [str(pem).encode() for pem in listed] if isinstance(listed, list) else []
        return []

    def _current(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def target(self, path: str) -> SignedTarget:
        """The signed description of ``path``. Raises ``UnknownTargetError`` if unlisted."""
        with _tuf_boundary():
            info = self._current().get_targetinfo(path)
        if info is None:
            raise UnknownTargetError(f"{path} is not a signed target")
        custom = info.custom if isinstance(info.custom, dict) else {}
        return SignedTarget(path=info.path, length=info.length, sha256=info.hashes.get("sha256", ""),
                            custom=custom, info=info)

    def download(self, target: SignedTarget) -> bytes:
        """Download ``target`` and return its bytes, verified against the signed length and hashes."""
        workdir = Path(tempfile.mkdtemp(prefix=".download-", dir=self.metadata_dir))
        try:
            with _tuf_boundary():
                path = self._current().download_target(target.info, filepath=str(workdir / "target"))
            return Path(path).read_bytes()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
