"""Shadow mode: a candidate model runs beside the active one before any switch.

The active model's result is what the device uses; the candidate only sees a sampled
fraction of the same frames, and the device reports how often the two agree and how
fast the candidate is (``TelemetryReport.shadow``). The rollout engine gates on those
numbers before it lets the stage install the candidate.

:class:`ShadowRunner` holds no thread and no I/O: the inference thread calls
:meth:`ShadowRunner.observe` with each frame and the active model's label, and the
telemetry loop calls :meth:`ShadowRunner.take_window` once per report.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract import ShadowWindow
from agent.infer.detect import Detection, detect
from agent.infer.engine import LoadedModel, softmax
from agent.preprocess import preprocess

__all__ = ["BoxMatch", "ShadowFrame", "ShadowRunner", "ShadowSet", "match_boxes", "run_candidate",
           "run_candidate_detections"]

# A candidate box agrees with an active box when they overlap this much and name the same class.
MATCH_IOU = 0.5

# Per-window latency samples kept for the percentile; bounded like the telemetry window's.
MAX_LATENCY_SAMPLES = 2048


class CandidateOutputError(ValueError):
    """The candidate returned NaN or Inf scores for a frame."""


def run_candidate(model: LoadedModel, frame_bgr: npt.NDArray[np.uint8]) -> tuple[str, float, float]:
    """Run ``model`` on one BGR frame: ``(label, confidence, inference milliseconds)``.

    Raises:
        CandidateOutputError: the scores are not finite.
        ValueError, RuntimeError: preprocessing or the runtime failed.
    """
    tensor = preprocess(frame_bgr, model.manifest.preprocessing)
    started = time.perf_counter()
    scores = model.backend.run(tensor)[0]
    inference_ms = (time.perf_counter() - started) * 1000.0
    if not np.all(np.isfinite(scores)):
        raise CandidateOutputError("candidate produced a non-finite score")
    if model.manifest.detection is not None:
        raise CandidateOutputError("the candidate detects; the active model classifies")
    probabilities = softmax(scores) if model.artifact.output_activation == "softmax" else scores
    index = int(np.argmax(probabilities))
    return model.manifest.labels[index], float(probabilities[index]), inference_ms


def run_candidate_detections(model: LoadedModel, frame_bgr: npt.NDArray[np.uint8]
                             ) -> tuple[tuple[Detection, ...], float]:
    """Run a detection ``model`` on one BGR frame: ``(boxes in frame pixels, inference milliseconds)``.

    Raises:
        CandidateOutputError: the output is not finite, or ``model`` is not a detection package.
        ValueError, RuntimeError: preprocessing, the runtime or the decoder failed.
    """
    manifest = model.manifest
    if manifest.detection is None:
        raise CandidateOutputError("the candidate classifies; the active model detects")
    tensor = preprocess(frame_bgr, manifest.preprocessing)
    started = time.perf_counter()
    output = model.backend.run(tensor)
    inference_ms = (time.perf_counter() - started) * 1000.0
    if not np.all(np.isfinite(output)):
        raise CandidateOutputError("candidate produced a non-finite score")
    height, width = frame_bgr.shape[:2]
    found = detect(output, detection=manifest.detection, labels=manifest.labels,
                   preprocessing=manifest.preprocessing, source_width=width, source_height=height)
    return tuple(found), inference_ms


@dataclass(frozen=True)
class BoxMatch:
    """How one frame's boxes from two detectors pair up."""

    active: int
    candidate: int
    matched: int

    @property
    def unmatched(self) -> int:
        """Boxes of either model without a partner."""
        return self.active + self.candidate - 2 * self.matched

    @property
    def agrees(self) -> bool:
        return self.unmatched == 0


def _iou_matrix(first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of every row of ``first`` (A, 4) with every row of ``second`` (B, 4), x1y1x2y2."""
    inter_w = np.clip(np.minimum(first[:, None, 2], second[None, :, 2])
                      - np.maximum(first[:, None, 0], second[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(first[:, None, 3], second[None, :, 3])
                      - np.maximum(first[:, None, 1], second[None, :, 1]), 0, None)
    intersection = inter_w * inter_h

    def areas(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))

    union = areas(first)[:, None] + areas(second)[None, :] - intersection
    return np.asarray(np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0))


def match_boxes(active: Sequence[Detection], candidate: Sequence[Detection], *,
                iou_threshold: float = MATCH_IOU) -> BoxMatch:
    """Pair boxes of the same class whose IoU is at least ``iou_threshold``, best overlap first.

    Greedy one-to-one matching (as in detection evaluation): the pair with the highest
    IoU is taken, both boxes leave the pool, and so on. Pure numpy, O(A x B) memory.
    """
    if not active or not candidate:
        return BoxMatch(len(active), len(candidate), 0)
    first = np.asarray([(d.x1, d.y1, d.x2, d.y2) for d in active], dtype=np.float64)
    second = np.asarray([(d.x1, d.y1, d.x2, d.y2) for d in candidate], dtype=np.float64)
    iou = _iou_matrix(first, second)
    same_class = np.asarray([d.label for d in active])[:, None] == np.asarray([d.label for d in candidate])[None, :]
    iou = np.where(same_class & (iou >= iou_threshold), iou, -1.0)
    matched = 0
    while True:
        row, column = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[row, column] < 0:
            break
        matched += 1
        iou[row, :] = -1.0
        iou[:, column] = -1.0
    return BoxMatch(len(active), len(candidate), matched)


@dataclass(frozen=True)
class ShadowFrame:
    """The candidate's view of one detection frame: its boxes and how they matched the active model's."""

    candidate: tuple[Detection, ...]
    match: BoxMatch


class ShadowRunner:
    """Runs ``candidate`` on ``sample_fraction`` of frames for ``duration_s`` seconds.

    Thread-safe: ``observe`` runs on the inference thread, ``take_window`` on the
    telemetry thread. A failing candidate frame is counted, never raised.
    """

    def __init__(
        self,
        candidate: LoadedModel,
        *,
        sample_fraction: float,
        duration_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], not {sample_fraction}")
        self.candidate = candidate
        self.sample_fraction = sample_fraction
        self._clock = clock
        self.ends_at = clock() + duration_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # A shared model's workers may shadow frames at once: serialise the candidate's runs
        # unless its runtime takes concurrent ones (an ONNX Runtime session does).
        self._run_lock = threading.Lock()
        self._concurrent = bool(getattr(candidate.backend, "concurrent_runs", False))
        self._reset()

    def _reset(self) -> None:
        self._frames = 0
        self._agreements = 0
        self._errors = 0
        self._candidate_ms: list[float] = []
        self._active_ms: list[float] = []
        self._labels: Counter[str] = Counter()
        self._boxes_active = 0
        self._boxes_candidate = 0
        self._boxes_matched = 0

    @property
    def package_id(self) -> str:
        return self.candidate.manifest.package_id

    @property
    def expired(self) -> bool:
        return self._clock() >= self.ends_at

    def wants_frame(self) -> bool:
        """Whether to shadow the next frame (decided before any candidate work is done)."""
        return not self.expired and self._rng.random() < self.sample_fraction

    def observe(self, frame_bgr: npt.NDArray[np.uint8], active_label: str, active_inference_ms: float | None,
                *, sampled: bool | None = None) -> None:
        """Shadow one frame the active model labelled ``active_label`` (if it is sampled)."""
        if not (self.wants_frame() if sampled is None else sampled):
            return
        try:
            with contextlib.nullcontext() if self._concurrent else self._run_lock:
                label, _confidence, inference_ms = run_candidate(self.candidate, frame_bgr)
        except (CandidateOutputError, ValueError, RuntimeError):
            with self._lock:
                self._errors += 1
            return
        with self._lock:
            self._frames += 1
            self._agreements += label == active_label
            self._labels[label] += 1
            if len(self._candidate_ms) < MAX_LATENCY_SAMPLES:
                self._candidate_ms.append(inference_ms)
                if active_inference_ms is not None:
                    self._active_ms.append(active_inference_ms)

    def observe_detections(self, frame_bgr: npt.NDArray[np.uint8], active: Sequence[Detection],
                           active_inference_ms: float | None, *, sampled: bool | None = None) -> ShadowFrame | None:
        """Shadow one detection frame whose active boxes are ``active`` (if it is sampled).

        Returns the candidate's boxes and the match, or None when the frame was not
        shadowed or the candidate failed on it (counted in ``candidate_errors``).
        """
        if not (self.wants_frame() if sampled is None else sampled):
            return None
        try:
            found, inference_ms = run_candidate_detections(self.candidate, frame_bgr)
        except (CandidateOutputError, ValueError, RuntimeError):
            with self._lock:
                self._errors += 1
            return None
        match = match_boxes(active, found)
        with self._lock:
            self._frames += 1
            self._agreements += match.agrees
            self._labels.update(d.label for d in found)
            self._boxes_active += match.active
            self._boxes_candidate += match.candidate
            self._boxes_matched += match.matched
            if len(self._candidate_ms) < MAX_LATENCY_SAMPLES:
                self._candidate_ms.append(inference_ms)
                if active_inference_ms is not None:
                    self._active_ms.append(active_inference_ms)
        return ShadowFrame(found, match)

    def take_window(self) -> ShadowWindow | None:
        """The results since the last call, or None when nothing was shadowed and it has ended."""
        with self._lock:
            frames, agreements, errors = self._frames, self._agreements, self._errors
            candidate_ms, active_ms, labels = self._candidate_ms, self._active_ms, dict(self._labels)
            boxes = (self._boxes_active, self._boxes_candidate, self._boxes_matched)
            self._reset()
        if frames == 0 and errors == 0 and self.expired:
            return None
        return ShadowWindow(
            package_id=self.candidate.manifest.package_id, model_version=self.candidate.version, frames=frames,
            agreements=agreements, candidate_errors=errors, candidate_p95_latency_ms=_p95(candidate_ms),
            active_p95_latency_ms=_p95(active_ms), class_counts=labels,
            boxes_active=boxes[0], boxes_candidate=boxes[1], boxes_matched=boxes[2],
        )


def _p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


class ShadowSet:
    """The agent's shadow runners, one per camera pipeline at most.

    :meth:`hook` wraps an inference engine's ``output_hook`` so every frame the active
    model scores is offered to that pipeline's runner (which samples it); the
    telemetry loop calls :meth:`take_window`. Starting an install on a pipeline ends
    its shadow (:meth:`stop`).
    """

    def __init__(self) -> None:
        self._runners: dict[str, ShadowRunner] = {}
        self._lock = threading.Lock()

    def start(self, pipeline: str, runner: ShadowRunner) -> None:
        with self._lock:
            self._runners[pipeline] = runner

    def stop(self, pipeline: str) -> None:
        with self._lock:
            self._runners.pop(pipeline, None)

    def runner(self, pipeline: str) -> ShadowRunner | None:
        with self._lock:
            return self._runners.get(pipeline)

    def take_window(self, pipeline: str) -> ShadowWindow | None:
        runner = self.runner(pipeline)
        if runner is None:
            return None
        window = runner.take_window()
        if window is None:  # ended and reported everything
            with self._lock:
                if self._runners.get(pipeline) is runner:
                    del self._runners[pipeline]
        return window

    def hook(self, pipeline: str, inner: Callable[[LoadedModel, Any, npt.NDArray[np.float32]], None] | None = None,
             ) -> Callable[[LoadedModel, Any, npt.NDArray[np.float32]], None]:
        """An engine ``output_hook``: call ``inner`` (e.g. drift monitoring), then shadow the frame.

        ``item`` is the engine's frame item (``.frame`` is the BGR frame); ``scores`` the
        active model's finite scores, whose arg-max names its label.
        """

        def on_output(model: LoadedModel, item: Any, scores: npt.NDArray[np.float32]) -> None:
            if inner is not None:
                inner(model, item, scores)
            runner = self.runner(pipeline)
            if runner is None or not runner.wants_frame():
                return
            active_label = model.manifest.labels[int(np.argmax(scores))]
            # The engine does not hand the active model's timing to hooks; the candidate's
            # own latency is still reported, and the gate on the ratio is skipped without it.
            runner.observe(item.frame, active_label, None, sampled=True)

        return on_output

    def detection_hook(
        self, pipeline: str,
        inner: Callable[[LoadedModel, Any, tuple[Detection, ...], ShadowFrame | None], None] | None = None,
    ) -> Callable[[LoadedModel, Any, tuple[Detection, ...]], None]:
        """An engine ``detection_hook``: shadow the frame (when sampled), then call ``inner``
        (samples) with the candidate's boxes and the match, so disagreeing frames can be kept."""

        def on_detections(model: LoadedModel, item: Any, detections: tuple[Detection, ...]) -> None:
            runner = self.runner(pipeline)
            shadow = None
            if runner is not None and runner.wants_frame():
                shadow = runner.observe_detections(item.frame, detections, None, sampled=True)
            if inner is not None:
                inner(model, item, detections, shadow)

        return on_detections
