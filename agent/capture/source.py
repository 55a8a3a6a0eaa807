"""Camera sources over OpenCV ``VideoCapture``: a device index, a file or a URL.

Sources split reading into ``grab`` (advance, no decode) and ``retrieve`` (decode the
grabbed frame) so that frames skipped by the target frame rate cost almost nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from agent.capture.stream import StreamSettings, StreamSource, redact

# Locations decoded by an ffmpeg process rather than OpenCV (network cameras, V4L2 devices).
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "/dev/video")

log = logging.getLogger(__name__)


class FrameSource(Protocol):
    """Yields BGR frames. ``grab`` returns False when no frame is available now."""

    reconnects: int

    def grab(self) -> bool: ...

    def retrieve(self) -> npt.NDArray[np.uint8] | None: ...

    def close(self) -> None: ...


def limit_opencv_threads(threads: int) -> None:
    """Cap OpenCV's internal worker threads (process-wide; 0 = OpenCV's default).

    On a small device the cores belong to inference: OpenCV parallelising a 640x480
    resize across them gains little and preempts the model.
    """
    cv2.setNumThreads(threads if threads > 0 else -1)


def read_frame(source: FrameSource) -> npt.NDArray[np.uint8] | None:
    """Grab and decode one frame (``None`` when the source has none)."""
    return source.retrieve() if source.grab() else None


class OpenCvSource:
    """``cv2.VideoCapture`` with looping for files and reopen-with-backoff for cameras.

    Never raises: a vanished camera, dropped stream or deleted file yields no frame
    until it comes back; ``reconnects`` counts how often it went away.
    """

    def __init__(
        self,
        location: str,
        *,
        loop: bool = True,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        file_fps: float = 0.0,
    ) -> None:
        self.location = location
        self.loop = loop
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self._next_open_at = 0.0
        self._capture: cv2.VideoCapture | None = None
        self._is_file = not location.isdigit() and "://" not in location
        # Files decode far faster than real time; pace them like a camera when asked.
        self._frame_interval_s = 1.0 / file_fps if file_fps > 0 else 0.0
        self._last_frame_at = 0.0
        self.reconnects = 0

    def _open(self) -> bool:
        now = time.monotonic()
        if now < self._next_open_at:
            return False
        target: int | str = int(self.location) if self.location.isdigit() else self.location
        capture = cv2.VideoCapture(target)
        if capture.isOpened():
            self._capture = capture
            self._backoff_s = self.min_backoff_s
            return True
        capture.release()
        self._next_open_at = now + self._backoff_s
        log.warning("camera source %s unavailable; retrying in %.1fs", redact(self.location), self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
        return False

    def grab(self) -> bool:
        if self._capture is None and not self._open():
            return False
        assert self._capture is not None
        if self._frame_interval_s:
            wait_s = self._last_frame_at + self._frame_interval_s - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            self._last_frame_at = time.monotonic()
        if self._capture.grab():
            return True
        if self._is_file and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            if self._capture.grab():
                return True
        # The source went away (unplugged camera, dropped stream, file ended): reopen later.
        self._capture.release()
        self._capture = None
        self.reconnects += 1
        self._next_open_at = time.monotonic() + self._backoff_s
        return False

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        if self._capture is None:
            return None
        ok, frame = self._capture.retrieve()
        return np.asarray(frame, dtype=np.uint8) if ok and frame is not None else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_source(location: str, *, loop: bool = True, file_fps: float = 0.0, name: str = "camera",
                stream: StreamSettings | None = None, secrets_dir: Path | None = None) -> FrameSource:
    """Open a camera index, file, URL, V4L2 device or ``synthetic:<seed>`` (a simulated camera).

    ``rtsp://``, ``rtsps://``, ``http(s)://`` URLs and ``/dev/video*`` devices go to an
    ffmpeg decoder process watched by :class:`~agent.capture.stream.StreamSource`
    (``stream`` settings: transport, stall and open timeouts, reconnect backoff);
    ``{secret:NAME}`` in a URL is resolved from ``secrets_dir`` or the environment.
    Device indexes and files stay on OpenCV. ``file_fps`` paces files and synthetic
    sources like a camera (0 = as fast as possible).

    Raises:
        ValueError: a ``synthetic:`` location without an integer seed.
    """
    if location.startswith("synthetic:"):
        from agent.capture.scenes import SyntheticSource

        seed = location.removeprefix("synthetic:")
        if not seed.isdigit():
            raise ValueError(f"synthetic source {location!r} must look like synthetic:<integer seed>")
        return SyntheticSource(seed=int(seed), frame_interval_s=1.0 / file_fps if file_fps > 0 else 0.0)
    if location.startswith(STREAM_PREFIXES):
        return StreamSource(location, name=name, settings=stream or StreamSettings(), secrets_dir=secrets_dir)
    return OpenCvSource(location, loop=loop, file_fps=file_fps)
