"""Artifact delivery over HTTP, bounded in size and in total time."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Protocol

from agent.errors import DownloadError


class ArtifactFetcher(Protocol):
    """Returns the bytes at ``url``; raises :class:`DownloadError` on any delivery failure."""

    def fetch(self, url: str, *, max_bytes: int) -> bytes: ...


class HttpFetcher:
    """Plain HTTP(S) GET with a per-read timeout *and* a total deadline.

    A socket timeout stops a stalled server but not one that trickles a byte a
    second; ``deadline_s`` bounds the whole download.
    """

    def __init__(self, *, timeout_s: float = 30.0, deadline_s: float = 300.0, chunk_bytes: int = 64 * 1024):
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.chunk_bytes = chunk_bytes

    def fetch(self, url: str, *, max_bytes: int) -> bytes:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and int(declared) > max_bytes:
                    raise DownloadError(f"{url}: {declared} bytes exceeds the {max_bytes}-byte limit")
                chunks: list[bytes] = []
                received = 0
                while chunk := response.read(self.chunk_bytes):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"{url}: more than the {max_bytes}-byte limit was sent")
                    if time.monotonic() - started > self.deadline_s:
                        raise DownloadError(f"{url}: download exceeded its {self.deadline_s:.0f}s deadline")
                    chunks.append(chunk)
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadError(f"{url}: {exc}") from exc
