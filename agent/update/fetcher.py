"""Artifact delivery for the TUF updater: HTTP(S) with a total deadline and resume.

python-tuf verifies what arrives and stops reading past the signed length, and
its default fetcher stops a *stalled* socket; but a server that trickles a byte
a second is never stalled. This fetcher bounds the whole download in wall time
(``deadline_s``) and, when a connection drops mid-file, resumes with an HTTP
``Range`` request from the last byte received instead of starting over.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient.fetcher import FetcherInterface

__all__ = ["ArtifactFetcher", "DeadlineExceeded", "HttpFetcher"]

log = logging.getLogger(__name__)

# Anything that speaks python-tuf's fetcher interface can deliver packages (tests pass hostile ones).
ArtifactFetcher = FetcherInterface

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DeadlineExceeded(tuf_exceptions.DownloadError):
    """The download did not finish within its total deadline."""


class _Interrupted(Exception):
    """The connection ended before the body did; resumable."""


class HttpFetcher(FetcherInterface):
    """HTTP(S) GET with a per-read timeout, a total deadline and Range resume.

    Args:
        timeout_s: longest silence on the socket (connect or between reads).
        deadline_s: longest a single file may take in total, across resumes.
        chunk_bytes: largest read; reads return as soon as any bytes arrive.
        max_resumes: Range retries after a dropped connection, per file.
        connect_attempts: tries to open a file before its first byte (a lost SYN on a lossy
            link is not a dead server).
        reconnect_min_s, reconnect_max_s: the wait between attempts to reach the server again
            after a drop (doubling from the first to the second); the deadline bounds them all.
    """

    def __init__(self, *, timeout_s: float = 30.0, deadline_s: float = 300.0, chunk_bytes: int = 64 * 1024,
                 max_resumes: int = 5, connect_attempts: int = 3, reconnect_min_s: float = 1.0,
                 reconnect_max_s: float = 15.0) -> None:
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.chunk_bytes = chunk_bytes
        self.max_resumes = max_resumes
        self.connect_attempts = connect_attempts
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s

    def _open(self, url: str, offset: int, started: float) -> http.client.HTTPResponse:
        remaining = self.deadline_s - (time.monotonic() - started)
        if remaining <= 0:
            raise DeadlineExceeded(f"{url}: download exceeded its {self.deadline_s:g}s deadline")
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=min(self.timeout_s, remaining))
        except urllib.error.HTTPError as exc:
            exc.close()
            raise tuf_exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code} {exc.reason}", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise tuf_exceptions.DownloadError(f"{url}: {exc}") from exc
        assert isinstance(response, http.client.HTTPResponse)
        return response

    def _fetch(self, url: str) -> Iterator[bytes]:
        started = time.monotonic()
        # Open eagerly so that HTTP errors surface from fetch() itself, as tuf expects. A lost
        # SYN on a lossy link is retried a few times; a server that is down fails the fetch soon.
        return self._chunks(url, self._reopen(url, 0, started, attempts=self.connect_attempts), started)

    def _chunks(self, url: str, response: http.client.HTTPResponse, started: float) -> Iterator[bytes]:
        received = 0
        resumes = 0
        skip = 0  # bytes to drop when a server ignored our Range header and resent from zero
        try:
            while True:
                try:
                    for chunk in self._body(url, response, started):
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        if chunk:
                            received += len(chunk)
                            yield chunk
                    return
                except (_Interrupted, OSError, http.client.HTTPException) as exc:
                    if resumes >= self.max_resumes:
                        raise tuf_exceptions.DownloadError(f"{url}: connection lost {resumes + 1} times: {exc}") from exc
                    resumes += 1
                    response.close()
                    log.info("download of %s interrupted after %d bytes (%s); resuming (%d of %d)",
                             url, received, exc, resumes, self.max_resumes)
                    response = self._reopen(url, received, started)
                    skip = self._resume_skip(url, response, received)
        finally:
            response.close()

    def _reopen(self, url: str, offset: int, started: float, attempts: int | None = None) -> http.client.HTTPResponse:
        """Open ``url`` from ``offset``, waiting out a network that is down until the deadline
        (or for ``attempts`` tries, when given).

        A partition (or a radio link that drops out) makes connecting fail for a while; what
        has been received is kept and the download goes on from there once the server answers
        again. HTTP errors are final: the server answered, and it said no.
        """
        delay_s = self.reconnect_min_s
        tried = 0
        while True:
            try:
                return self._open(url, offset, started)
            except tuf_exceptions.DownloadHTTPError:
                raise
            except tuf_exceptions.DownloadError as exc:
                tried += 1
                if isinstance(exc, DeadlineExceeded) or (attempts is not None and tried >= attempts):
                    raise
                remaining_s = self.deadline_s - (time.monotonic() - started)
                if remaining_s <= 0:
                    raise DeadlineExceeded(f"{url}: download exceeded its {self.deadline_s:g}s deadline") from exc
                log.info("cannot reach %s to resume at byte %d (%s); retrying in %.1fs", url, offset, exc, delay_s)
                time.sleep(min(delay_s, remaining_s))
                delay_s = min(delay_s * 2, self.reconnect_max_s)

    def _body(self, url: str, response: http.client.HTTPResponse, started: float) -> Iterator[bytes]:
        declared = response.getheader("Content-Length")
        expected = int(declared) if declared and declared.isdigit() else None
        got = 0
        while True:
            if time.monotonic() - started > self.deadline_s:
                raise DeadlineExceeded(f"{url}: download exceeded its {self.deadline_s:g}s deadline")
            # read1 returns whatever one socket read yields, so a trickle still reaches the deadline check.
            chunk = response.read1(self.chunk_bytes)
            if not chunk:
                if expected is not None and got < expected:
                    raise _Interrupted(f"body ended after {got} of {expected} bytes")
                return
            got += len(chunk)
            yield chunk

    @staticmethod
    def _resume_skip(url: str, response: http.client.HTTPResponse, offset: int) -> int:
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
            if not match or int(match.group(1)) != offset:
                raise tuf_exceptions.DownloadError(f"{url}: server resumed at the wrong offset")
            return 0
        return offset  # 200: the whole body again; drop what we already have
