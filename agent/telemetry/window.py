"""Accumulates per-frame results into one telemetry window. Thread-safe, O(1) per frame."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Latencies are kept per window to compute percentiles; bound them so a very fast
# model on a long window cannot grow memory (a uniform reservoir would be overkill).
MAX_LATENCY_SAMPLES = 4096


@dataclass
class WindowSnapshot:
    window_s: float
    frames: int
    fps: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    mean_confidence: float | None
    class_counts: dict[str, int]
    inference_errors: int
    invalid_outputs: int = 0


@dataclass
class _Window:
    started_at: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    invalid: int = 0
    confidence_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    class_counts: Counter[str] = field(default_factory=Counter)


class WindowStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = _Window()
        self.total_frames = 0
        self.total_errors = 0
        self.total_invalid = 0

    def record(self, latency_ms: float, confidence: float, label: str) -> None:
        with self._lock:
            window = self._window
            window.frames += 1
            window.confidence_sum += confidence
            if len(window.latencies_ms) < MAX_LATENCY_SAMPLES:
                window.latencies_ms.append(latency_ms)
            window.class_counts[label] += 1
            self.total_frames += 1

    def record_error(self) -> None:
        with self._lock:
            self._window.errors += 1
            self.total_errors += 1

    def record_invalid(self) -> None:
        with self._lock:
            self._window.invalid += 1
            self.total_invalid += 1

    def snapshot_and_reset(self) -> WindowSnapshot:
        with self._lock:
            window, self._window = self._window, _Window()
        elapsed_s = max(time.monotonic() - window.started_at, 1e-6)
        latencies = np.asarray(window.latencies_ms) if window.latencies_ms else None
        return WindowSnapshot(
            window_s=round(elapsed_s, 3),
            frames=window.frames,
            fps=round(window.frames / elapsed_s, 2),
            p50_latency_ms=None if latencies is None else round(float(np.percentile(latencies, 50)), 3),
            p95_latency_ms=None if latencies is None else round(float(np.percentile(latencies, 95)), 3),
            mean_confidence=round(window.confidence_sum / window.frames, 4) if window.frames else None,
            class_counts=dict(window.class_counts),
            inference_errors=window.errors,
            invalid_outputs=window.invalid,
        )
