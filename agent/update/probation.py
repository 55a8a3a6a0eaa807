"""Probation: is the model we just switched to healthy? Pure decision over counts.

The evidence is gathered by the inference engine (:class:`ProbationWatch`) on live
frames; :func:`judge` decides. "Installed" is not "healthy": only a pass commits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# Latencies kept per probation for the p95; the window is short, this only bounds memory.
MAX_PROBATION_SAMPLES = 4096


class Verdict(StrEnum):
    CONTINUE = "continue"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class ProbationLimits:
    window_s: float = 10.0
    min_frames: int = 20
    max_error_ratio: float = 0.05
    max_invalid_outputs: int = 0
    max_p95_latency_ratio: float = 3.0
    min_confidence_ratio: float = 0.5
    # With no frames at all (camera down) the window is extended up to this long,
    # then the model is committed on its self-test alone rather than blocking updates.
    max_wait_s: float = 300.0


@dataclass(frozen=True)
class Baseline:
    """The previous model on the same live feed, just before the switch (None: no previous model)."""

    p95_latency_ms: float | None = None
    mean_confidence: float | None = None


@dataclass(frozen=True)
class Evidence:
    elapsed_s: float
    frames: int
    errors: int
    invalid_outputs: int
    p95_latency_ms: float | None
    mean_confidence: float | None

    @property
    def attempts(self) -> int:
        return self.frames + self.errors + self.invalid_outputs

    def as_report(self, baseline: Baseline) -> dict[str, float | None]:
        return {
            "elapsed_s": round(self.elapsed_s, 3),
            "frames": float(self.frames),
            "errors": float(self.errors),
            "invalid_outputs": float(self.invalid_outputs),
            "p95_latency_ms": self.p95_latency_ms,
            "mean_confidence": self.mean_confidence,
            "baseline_p95_latency_ms": baseline.p95_latency_ms,
            "baseline_mean_confidence": baseline.mean_confidence,
        }


def judge(evidence: Evidence, baseline: Baseline, limits: ProbationLimits) -> tuple[Verdict, str]:
    """Decide from the evidence so far. Returns the verdict and a short reason code."""
    if evidence.invalid_outputs > limits.max_invalid_outputs:
        return Verdict.FAIL, "invalid_outputs"
    enough = evidence.attempts >= limits.min_frames
    # With min_frames 0 the window may end before any frame: no attempts, no error rate to judge.
    if enough and evidence.attempts and evidence.errors / evidence.attempts > limits.max_error_ratio:
        return Verdict.FAIL, "error_rate"
    if evidence.elapsed_s < limits.window_s or not enough:
        if not enough and evidence.elapsed_s >= limits.max_wait_s:
            return Verdict.PASS, "too_few_frames"
        return Verdict.CONTINUE, "observing"
    if (
        baseline.p95_latency_ms
        and evidence.p95_latency_ms is not None
        and evidence.p95_latency_ms > baseline.p95_latency_ms * limits.max_p95_latency_ratio
    ):
        return Verdict.FAIL, "latency"
    if (
        baseline.mean_confidence
        and evidence.mean_confidence is not None
        and evidence.mean_confidence < baseline.mean_confidence * limits.min_confidence_ratio
    ):
        return Verdict.FAIL, "confidence_collapse"
    return Verdict.PASS, "healthy"


class ProbationWatch:
    """Collects evidence for one model on the inference thread. Thread-safe."""

    def __init__(self, model_key: object) -> None:
        self.model_key = model_key
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._frames = 0
        self._errors = 0
        self._invalid = 0
        self._confidence_sum = 0.0
        self._latencies_ms: list[float] = []

    def record(self, latency_ms: float, confidence: float) -> None:
        with self._lock:
            self._frames += 1
            self._confidence_sum += confidence
            if len(self._latencies_ms) < MAX_PROBATION_SAMPLES:
                self._latencies_ms.append(latency_ms)

    def record_error(self) -> None:
        with self._lock:
            self._errors += 1

    def record_invalid(self) -> None:
        with self._lock:
            self._invalid += 1

    def evidence(self) -> Evidence:
        with self._lock:
            latencies = list(self._latencies_ms)
            return Evidence(
                elapsed_s=time.monotonic() - self._started,
                frames=self._frames,
                errors=self._errors,
                invalid_outputs=self._invalid,
                p95_latency_ms=round(float(np.percentile(latencies, 95)), 3) if latencies else None,
                mean_confidence=round(self._confidence_sum / self._frames, 4) if self._frames else None,
            )
