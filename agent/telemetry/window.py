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
    # Detection packages: objects per class, mean score of the reported boxes, boxes per
    # frame and frames with no object (None for a window without detection frames).
    detection: DetectionSnapshot | None = None


@dataclass(frozen=True)
class DetectionSnapshot:
    frames: int
    object_counts: dict[str, int]
    mean_box_score: float | None
    boxes_per_frame: float
    empty_frames: int


@dataclass
class _Window:
    started_at: float = field(default_factory=time.monotonic)
    frames: int = 0
    errors: int = 0
    invalid: int = 0
    confidence_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    class_counts: Counter[str] = field(default_factory=Counter)
    detection_frames: int = 0
    empty_frames: int = 0
    box_count: int = 0
    box_score_sum: float = 0.0
    object_counts: Counter[str] = field(default_factory=Counter)


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

    def record_detections(self, latency_ms: float, boxes: list[tuple[str, float]]) -> None:
        """One detection frame: its latency and each reported box's (label, score)."""
        with self._lock:
            window = self._window
            window.frames += 1
            if len(window.latencies_ms) < MAX_LATENCY_SAMPLES:
                window.latencies_ms.append(latency_ms)
            window.detection_frames += 1
            window.empty_frames += not boxes
            window.box_count += len(boxes)
            for label, score in boxes:
                window.object_counts[label] += 1
                window.box_score_sum += score
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
        classified = window.frames - window.detection_frames
        detection = None
        if window.detection_frames:
            detection = DetectionSnapshot(
                frames=window.detection_frames,
                object_counts=dict(window.object_counts),
                mean_box_score=round(window.box_score_sum / window.box_count, 4) if window.box_count else None,
                boxes_per_frame=round(window.box_count / window.detection_frames, 3),
                empty_frames=window.empty_frames,
            )
        return WindowSnapshot(
            window_s=round(elapsed_s, 3),
            frames=window.frames,
            fps=round(window.frames / elapsed_s, 2),
            p50_latency_ms=None if latencies is None else round(float(np.percentile(latencies, 50)), 3),
            p95_latency_ms=None if latencies is None else round(float(np.percentile(latencies, 95)), 3),
            mean_confidence=round(window.confidence_sum / classified, 4) if classified else None,
            class_counts=dict(window.class_counts),
            inference_errors=window.errors,
            invalid_outputs=window.invalid,
            detection=detection,
        )
