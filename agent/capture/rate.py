"""Target frame rate: decides, per grabbed frame, whether to decode it at all."""

from __future__ import annotations


class RateLimiter:
    """``due(now_s)`` is True for at most ``target_fps`` frames a second (0 = every frame).

    Pure over the clock value it is given, so tests drive it with fake times.
    """

    def __init__(self, target_fps: float) -> None:
        self.interval_s = 1.0 / target_fps if target_fps > 0 else 0.0
        self._next_due_s: float | None = None

    def due(self, now_s: float) -> bool:
        if self.interval_s == 0.0:
            return True
        if self._next_due_s is None or now_s >= self._next_due_s:
            late_s = now_s - self._next_due_s if self._next_due_s is not None else self.interval_s
            # Keep a steady cadence while on time; after a stall restart the cadence from
            # now rather than "catching up" with a burst of frames.
            base = self._next_due_s if self._next_due_s is not None and late_s < self.interval_s else now_s
            self._next_due_s = base + self.interval_s
            return True
        return False
