"""A one-slot buffer between the capture thread and the inference thread.

``newest`` policy (cameras): the newest frame wins; a slow model never builds a
backlog of stale frames, and the frames it never saw are counted as
``overwritten``. ``every`` policy (recorded files, tests): the capture thread waits
until inference took the previous frame, so no frame is ever overwritten.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from agent.contract.preprocess import PreprocessSpec

FramePolicy = Literal["newest", "every"]
T = TypeVar("T")


@dataclass(frozen=True)
class FrameItem:
    """A captured frame, preprocessed on the capture thread for the spec then active."""

    seq: int
    frame: npt.NDArray[np.uint8]
    tensor: npt.NDArray[np.generic] | None = None
    spec: PreprocessSpec | None = None


class FrameSlot(Generic[T]):
    """Holds at most one item (a :class:`FrameItem` in the agent)."""

    def __init__(self, policy: FramePolicy = "newest") -> None:
        self.policy = policy
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.offered = 0
        self.overwritten = 0

    def put(self, item: T) -> bool:
        """Offer ``item``. Returns False when the slot was closed (the frame is not counted)."""
        with self._cond:
            if self.policy == "every":
                self._cond.wait_for(lambda: self._item is None or self._closed)
            if self._closed:
                return False
            if self._item is not None:
                self.overwritten += 1
            self._item = item
            self.offered += 1
            self._cond.notify_all()
            return True

    def take(self, timeout_s: float) -> T | None:
        """Wait up to ``timeout_s`` for a frame not taken yet."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s):
                return None
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def pending(self) -> bool:
        with self._cond:
            return self._item is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
