"""Capture-to-result latency of one pipeline: from the frame leaving the decoder to its result.

The inference latency in :mod:`agent.telemetry.window` starts when the model takes the
frame; this one starts at capture, so time a frame waited (in the decoder's pipe, in the
hand-off slot) shows too. With the newest-frame-wins slot it stays bounded by about one
frame interval plus one inference, however long the agent runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from agent.telemetry.window import MAX_LATENCY_SAMPLES

# Frames handed to the model but not yet answered; older ones were overwritten or failed.
MAX_PENDING_FRAMES = 256


class CaptureLatency:
    """Pairs capture times (by frame sequence number) with results. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captured_at: OrderedDict[int, float] = OrderedDict()
        self._latencies_ms: list[float] = []

    def captured(self, seq: int, captured_monotonic_s: float) -> None:
        with self._lock:
            self._captured_at[seq] = captured_monotonic_s
            while len(self._captured_at) > MAX_PENDING_FRAMES:
                self._captured_at.popitem(last=False)

    def result(self, seq: int, at_monotonic_s: float | None = None) -> float | None:
        """Record the result of frame ``seq``; returns its capture-to-result latency in ms."""
        now = time.monotonic() if at_monotonic_s is None else at_monotonic_s
        with self._lock:
            captured = self._captured_at.pop(seq, None)
            if captured is None:
                return None
            latency_ms = (now - captured) * 1000.0
            if len(self._latencies_ms) < MAX_LATENCY_SAMPLES:
                self._latencies_ms.append(latency_ms)
            return latency_ms

    def snapshot_and_reset(self) -> tuple[float | None, float | None]:
        """(p50, p95) in ms over the results since the last call; (None, None) without any."""
        with self._lock:
            latencies, self._latencies_ms = self._latencies_ms, []
        if not latencies:
            return None, None
        values = np.asarray(latencies)
        return round(float(np.percentile(values, 50)), 3), round(float(np.percentile(values, 95)), 3)
