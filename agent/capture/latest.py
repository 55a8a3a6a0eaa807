"""The bounded hand-off between the capture thread and the inference thread.

``newest`` policy (cameras): one slot, the newest frame wins; a slow model never
builds a backlog of stale frames, and the frames it never saw are counted as
``overwritten``. ``every`` policy (recorded files, tests): a FIFO of ``depth``
frames; the capture thread waits while it is full, so no frame is ever
overwritten, and the few frames of slack absorb scheduling hiccups on a busy CPU.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
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
    # When the frame left the camera's decoder (monotonic for latency, wall clock for logs).
    captured_monotonic_s: float = 0.0
    captured_wall_s: float = 0.0
    # When the frame was handed to the model (monotonic): how long it waited for batch-mates.
    ready_monotonic_s: float = 0.0
    # Top-left corner of the camera's region of interest in the full frame (``frame`` is the crop).
    origin: tuple[int, int] = (0, 0)


class FrameSlot(Generic[T]):
    """Holds at most one item (a :class:`FrameItem` in the agent)."""

    def __init__(self, policy: FramePolicy = "newest", *, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.policy = policy
        self.depth = depth if policy == "every" else 1
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self._closed = False
        self.offered = 0
        self.overwritten = 0
        # Called after every accepted put, outside the slot's lock (a shared model's batcher wakes up).
        self.on_put: Callable[[], None] | None = None

    def put(self, item: T) -> bool:
        """Offer ``item``. Returns False when the slot was closed (the frame is not counted)."""
        with self._cond:
            if self.policy == "every":
                self._cond.wait_for(lambda: len(self._items) < self.depth or self._closed)
            if self._closed:
                return False
            if self.policy == "newest" and self._items:
                self._items.clear()
                self.overwritten += 1
            self._items.append(item)
            self.offered += 1
            self._cond.notify_all()
        listener = self.on_put
        if listener is not None:
            listener()
        return True

    def take(self, timeout_s: float) -> T | None:
        """Wait up to ``timeout_s`` for a frame not taken yet."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout_s):
                return None
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def peek(self) -> T | None:
        """The item the next take would return, left in place."""
        with self._cond:
            return self._items[0] if self._items else None

    def take_nowait(self) -> T | None:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def pending(self) -> bool:
        with self._cond:
            return bool(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
