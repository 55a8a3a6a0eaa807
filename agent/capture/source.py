"""Camera sources over OpenCV ``VideoCapture``: a device index, a file or a URL."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


class FrameSource(Protocol):
    """Yields decoded BGR frames. ``read`` returns ``None`` when no frame is available."""

    def read(self) -> npt.NDArray[np.uint8] | None: ...

    def close(self) -> None: ...


class OpenCvSource:
    """``cv2.VideoCapture`` with looping for files and reopen-with-backoff for cameras.

    ``read`` never raises: a vanished camera yields ``None`` until it comes back.
    """

    def __init__(
        self, location: str, *, loop: bool = True, max_backoff_s: float = 5.0, file_fps: float = 0.0
    ) -> None:
        self.location = location
        self.loop = loop
        self.max_backoff_s = max_backoff_s
        self._backoff_s = 0.2
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
            self._backoff_s = 0.2
            return True
        capture.release()
        self._next_open_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
        log.warning("camera source %s unavailable; retrying in %.1fs", self.location, self._backoff_s)
        return False

    def read(self) -> npt.NDArray[np.uint8] | None:
        if self._capture is None and not self._open():
            return None
        assert self._capture is not None
        if self._frame_interval_s:
            wait_s = self._last_frame_at + self._frame_interval_s - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            self._last_frame_at = time.monotonic()
        ok, frame = self._capture.read()
        if ok and frame is not None:
            return np.asarray(frame, dtype=np.uint8)
        if self._is_file and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
            if ok and frame is not None:
                return np.asarray(frame, dtype=np.uint8)
        # The source went away (unplugged camera, dropped stream, deleted file): reopen later.
        self._capture.release()
        self._capture = None
        self.reconnects += 1
        self._next_open_at = time.monotonic() + self._backoff_s
        return None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_source(location: str, *, loop: bool = True, file_fps: float = 0.0) -> FrameSource:
    """Open a camera index, file, URL, or ``synthetic:<seed>`` (a simulated camera)."""
    if location.startswith("synthetic:"):
        from agent.capture.scenes import SyntheticSource

        seed = location.removeprefix("synthetic:")
        if not seed.isdigit():
            raise ValueError(f"synthetic source {location!r} must look like synthetic:<integer seed>")
        return SyntheticSource(seed=int(seed), frame_interval_s=1.0 / file_fps if file_fps > 0 else 0.0)
    return OpenCvSource(location, loop=loop, file_fps=file_fps)
