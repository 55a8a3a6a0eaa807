"""A one-slot buffer between the capture thread and the inference thread.

The newest frame wins: a slow model never builds a backlog of stale frames; the
frames it never saw are counted as ``overwritten``.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt


class FrameSlot:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: npt.NDArray[np.uint8] | None = None
        self._seq = 0
        self._taken_seq = 0
        self.offered = 0
        self.overwritten = 0
        self._closed = False

    def put(self, frame: npt.NDArray[np.uint8]) -> None:
        with self._cond:
            if self._frame is not None and self._seq != self._taken_seq:
                self.overwritten += 1
            self._frame = frame
            self._seq += 1
            self.offered += 1
            self._cond.notify_all()

    def take(self, timeout_s: float) -> npt.NDArray[np.uint8] | None:
        """Wait up to ``timeout_s`` for a frame newer than the last one taken."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq != self._taken_seq or self._closed, timeout_s):
                return None
            if self._closed and self._seq == self._taken_seq:
                return None
            self._taken_seq = self._seq
            return self._frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
