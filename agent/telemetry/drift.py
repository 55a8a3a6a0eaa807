"""Drift windows on the device: per-frame statistics folded into fixed-edge histograms.

Pure numpy/OpenCV over data; no I/O. The pieces:

* :func:`model_view` — the frame as the model sees it (the package's crop/resize),
  so image statistics on the device and on training images come from the same pixels.
* :func:`image_stats`, :func:`output_stats`, :func:`frame_features` — one feature
  vector per frame, in the order of the reference's features.
* :class:`FrameSubsampler` — consecutive video frames are strongly correlated
  (docs/drift.md): keep at most one frame per ``interval_s``, or a frame whose
  thumbnail changed enough (a scene change), never two within ``min_gap_s``.
* :class:`DriftWindow` — histograms with the reference's fixed edges, moments and
  class counts; closed by frame count or by time into a :class:`DriftReport`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from agent.contract import (
    DriftReport,
    ModelArtifact,
    PackageManifest,
    PreprocessSpec,
    SampleReport,
    Topics,
    utc_now,
)
from agent.contract.drift import (
    DEFAULT_WINDOW_FRAMES,
    DEFAULT_WINDOW_S,
    HISTOGRAM_BINS,
    IMAGE_FEATURES,
    OUTPUT_FEATURES,
    DriftReference,
    encode_histograms,
    projection_feature_names,
)
from agent.preprocess import preprocess
from agent.telemetry.detection_drift import DetectionDriftWindow
from agent.telemetry.samples import (
    BoxUncertaintySampler,
    BudgetLimits,
    CapturedSample,
    DriftTriggeredSampler,
    OperatorRequestSampler,
    RandomSampler,
    SampleBudget,
    SampleCandidate,
    SampleCollector,
    Sampler,
    SampleUploader,
    ShadowDisagreementSampler,
    UncertaintySampler,
)

if TYPE_CHECKING:
    from agent.infer.detect import Detection
    from agent.infer.shadow import ShadowFrame

log = logging.getLogger(__name__)

__all__ = [
    "AgentMonitoring",
    "DeviceMonitor",
    "DriftWindow",
    "FrameFeatures",
    "FrameSubsampler",
    "MonitoringConfig",
    "Observation",
    "agent_monitoring",
    "frame_features",
    "image_features",
    "image_stats",
    "in_reference_order",
    "load_reference",
    "model_view",
    "output_stats",
    "project_logits",
]

# Immerkær (1996) fast noise estimation kernel: the difference of two Laplacians
# cancels image structure to first order, leaving mostly sensor noise.
_NOISE_KERNEL = np.asarray([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_CLIP_LOW, _CLIP_HIGH = 2, 253


def model_view(frame_bgr: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.uint8]:
    """The BGR uint8 pixels the model is fed (after the package's crop and resize)."""
    view_spec = spec.model_copy(update={"dtype": "uint8", "layout": "nhwc", "color_order": "bgr"})
    return np.asarray(preprocess(frame_bgr, view_spec)[0], dtype=np.uint8)


def image_stats(view_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """Luma mean and spread, mean saturation (0-1), log10 Laplacian variance (sharpness),
    noise sigma (grey levels) and the fraction of clipped pixels — :data:`IMAGE_FEATURES` order.

    Raises:
        ValueError: not an (H, W, 3) uint8 image of at least 3x3 pixels.
    """
    if view_bgr.ndim != 3 or view_bgr.shape[2] != 3 or view_bgr.shape[0] < 3 or view_bgr.shape[1] < 3:
        raise ValueError(f"expected an (H, W, 3) image of at least 3x3 pixels, got {view_bgr.shape}")
    grey_u8 = cv2.cvtColor(view_bgr, cv2.COLOR_BGR2GRAY)
    grey = grey_u8.astype(np.float32)
    saturation = cv2.cvtColor(view_bgr, cv2.COLOR_BGR2HSV)[:, :, 1]
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    height, width = grey.shape
    residual = cv2.filter2D(grey, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    noise_sigma = math.sqrt(math.pi / 2.0) * float(np.abs(residual).sum()) / (6.0 * (width - 2) * (height - 2))
    clipped = float(np.count_nonzero((grey_u8 <= _CLIP_LOW) | (grey_u8 >= _CLIP_HIGH))) / grey_u8.size
    return np.asarray(
        [
            float(grey.mean()),
            float(grey.std()),
            float(saturation.mean()) / 255.0,
            math.log10(1.0 + float(laplacian.var())),
            noise_sigma,
            clipped,
        ],
        dtype=np.float64,
    )


def output_stats(probabilities: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.float64], int]:
    """(top score, entropy in nats, top-1 minus top-2 margin) and the predicted class index."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    order = np.argsort(p)[::-1]
    top = float(p[order[0]])
    second = float(p[order[1]]) if p.size > 1 else 0.0
    safe = np.clip(p, 1e-12, 1.0)
    entropy = float(-(p * np.log(safe)).sum())
    return np.asarray([top, max(entropy, 0.0), top - second], dtype=np.float64), int(order[0])


def project_logits(logits: npt.NDArray[np.floating], reference: DriftReference) -> npt.NDArray[np.float64]:
    """The reference's low-dimensional projection of the output logits (empty when it has none)."""
    if not reference.projection:
        return np.zeros(0, dtype=np.float64)
    matrix, mean = reference.projection_arrays()
    centred = np.asarray(logits, dtype=np.float64).reshape(-1) - mean
    return np.asarray(matrix, dtype=np.float64) @ centred


@dataclass(frozen=True)
class FrameFeatures:
    """One subsampled frame: the feature vector (reference order) and the predicted class."""

    values: npt.NDArray[np.float64]
    class_index: int

    def as_dict(self, names: list[str]) -> dict[str, float]:
        return {name: round(float(v), 6) for name, v in zip(names, self.values, strict=True)}


def image_features(view_bgr: npt.NDArray[np.uint8]) -> dict[str, float]:
    """:func:`image_stats` keyed by its :data:`IMAGE_FEATURES` names."""
    return dict(zip(IMAGE_FEATURES, image_stats(view_bgr).tolist(), strict=True))


def in_reference_order(by_name: dict[str, float], reference: DriftReference) -> npt.NDArray[np.float64]:
    """Named features as a vector in ``reference.feature_names`` order.

    A feature the frame did not produce is NaN (a detection frame has no output or
    projection features), so the window skips it rather than reading a made-up zero.
    """
    return np.asarray([by_name.get(name, math.nan) for name in reference.feature_names], dtype=np.float64)


def frame_features(
    view_bgr: npt.NDArray[np.uint8],
    logits: npt.NDArray[np.floating],
    probabilities: npt.NDArray[np.floating],
    reference: DriftReference,
) -> FrameFeatures:
    """Every monitored feature of one frame, in ``reference.feature_names`` order."""
    outputs, class_index = output_stats(probabilities)
    by_name = image_features(view_bgr)
    by_name.update(zip(OUTPUT_FEATURES, outputs.tolist(), strict=True))
    projected = project_logits(logits, reference)
    by_name.update(zip(projection_feature_names(len(projected)), projected.tolist(), strict=True))
    return FrameFeatures(values=in_reference_order(by_name, reference), class_index=class_index)


class FrameSubsampler:
    """Decides which frames enter a drift window.

    Keeps a frame when ``interval_s`` passed since the last kept one, or when its
    16x16 grey thumbnail differs from the last kept one's by at least
    ``scene_change`` grey levels (mean absolute difference) and ``min_gap_s`` passed.
    """

    def __init__(self, *, interval_s: float = 1.0, scene_change: float = 20.0, min_gap_s: float = 0.2) -> None:
        if interval_s < 0 or min_gap_s < 0 or scene_change <= 0:
            raise ValueError("interval_s and min_gap_s must be >= 0 and scene_change > 0")
        self.interval_s = interval_s
        self.scene_change = scene_change
        self.min_gap_s = min_gap_s
        self._last_at: float | None = None
        self._last_thumb: npt.NDArray[np.float32] | None = None
        self.offered = 0
        self.kept = 0

    @staticmethod
    def _thumbnail(frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        small = cv2.resize(frame_bgr, (16, 16), interpolation=cv2.INTER_AREA)
        return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), dtype=np.float32)

    def accept(self, frame_bgr: npt.NDArray[np.uint8], now_s: float) -> bool:
        """Whether to keep this frame (``now_s`` is a monotonic clock in seconds)."""
        self.offered += 1
        if self._last_at is None or now_s - self._last_at >= self.interval_s:
            keep = True
            thumb = self._thumbnail(frame_bgr)
        else:
            if now_s - self._last_at < self.min_gap_s:
                return False
            thumb = self._thumbnail(frame_bgr)
            assert self._last_thumb is not None
            keep = float(np.abs(thumb - self._last_thumb).mean()) >= self.scene_change
        if keep:
            self._last_at, self._last_thumb = now_s, thumb
            self.kept += 1
        return keep


@dataclass
class _Accumulator:
    started_s: float
    started_at: datetime
    features: int
    classes: int
    counts: npt.NDArray[np.int64] = field(init=False)
    sums: npt.NDArray[np.float64] = field(init=False)
    squares: npt.NDArray[np.float64] = field(init=False)
    finite: npt.NDArray[np.int64] = field(init=False)
    class_counts: npt.NDArray[np.int64] = field(init=False)
    frames: int = 0
    frames_seen: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.features, HISTOGRAM_BINS), dtype=np.int64)
        self.sums = np.zeros(self.features, dtype=np.float64)
        self.squares = np.zeros(self.features, dtype=np.float64)
        self.finite = np.zeros(self.features, dtype=np.int64)
        self.class_counts = np.zeros(self.classes, dtype=np.int64)


class DriftWindow:
    """Accumulates subsampled frames; :meth:`close_if_due` turns them into a report.

    A window closes when it holds ``max_frames`` frames, or when ``max_window_s``
    seconds passed since it opened and it holds at least one frame. Not thread-safe:
    one inference thread owns it.
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        device_id: str,
        model_version: str | None = None,
        package_id: str | None = None,
        reference_sha256: str | None = None,
        pipeline: str | None = None,
        max_frames: int = DEFAULT_WINDOW_FRAMES,
        max_window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        if not 1 <= max_frames <= 65_535:
            raise ValueError("max_frames must be between 1 and 65535 (uint16 histogram counts)")
        if max_window_s <= 0:
            raise ValueError("max_window_s must be positive")
        self.reference = reference
        self.names = reference.feature_names
        self._edges = reference.edges_array()
        self._ref_mean = np.asarray([f.mean for f in reference.features], dtype=np.float64)
        self._ref_std = np.asarray([f.std for f in reference.features], dtype=np.float64)
        self.device_id = device_id
        self.model_version = model_version
        self.package_id = package_id
        self.reference_sha256 = reference_sha256
        self.pipeline = pipeline
        self.max_frames = max_frames
        self.max_window_s = max_window_s
        self.window_seq = 0
        self._acc: _Accumulator | None = None
        # A detection package's windows also carry box histograms and objects per class.
        self.detection = DetectionDriftWindow(reference.labels) if reference.detection is not None else None

    def _open(self, now_s: float) -> _Accumulator:
        if self._acc is None:
            # Detection windows count objects per class in their detection block instead.
            classes = 0 if self.detection is not None else len(self.reference.labels)
            self._acc = _Accumulator(now_s, utc_now(), len(self.names), classes)
        return self._acc

    def count_seen(self, now_s: float) -> None:
        """Count a frame that the subsampler skipped (reported as ``frames_seen``)."""
        self._open(now_s).frames_seen += 1

    def add(self, features: FrameFeatures, now_s: float) -> None:
        acc = self._open(now_s)
        acc.frames_seen += 1
        acc.frames += 1
        values = features.values
        for index, value in enumerate(values):
            if not math.isfinite(value):
                continue  # a feature the frame could not give; its histogram just counts fewer
            acc.counts[index, int(np.searchsorted(self._edges[index], value, side="right"))] += 1
            acc.sums[index] += value
            acc.squares[index] += value * value
            acc.finite[index] += 1
        if 0 <= features.class_index < acc.class_counts.size:
            acc.class_counts[features.class_index] += 1

    def add_detections(self, features: FrameFeatures, detections: Sequence[Detection], frame_width: int,
                       frame_height: int, now_s: float) -> None:
        """One subsampled detection frame: its image features and its boxes (frame pixels)."""
        self.add(features, now_s)
        if self.detection is not None:
            self.detection.add(detections, frame_width, frame_height)

    @property
    def frames(self) -> int:
        return 0 if self._acc is None else self._acc.frames

    def due(self, now_s: float) -> bool:
        acc = self._acc
        if acc is None or acc.frames == 0:
            return False
        return acc.frames >= self.max_frames or now_s - acc.started_s >= self.max_window_s

    def close_if_due(self, now_s: float) -> DriftReport | None:
        return self.close() if self.due(now_s) else None

    def close(self) -> DriftReport | None:
        """Close the open window now; ``None`` when it holds no frame."""
        acc, self._acc = self._acc, None
        if acc is None or acc.frames == 0:
            return None
        n = np.maximum(acc.finite, 1)
        means = acc.sums / n
        stds = np.sqrt(np.maximum(acc.squares / n - means * means, 0.0))
        # Standardised mean shift of the worst feature: cheap, window-size independent,
        # good enough to switch the drift-triggered sampler on; the real test is in the cloud.
        shift = np.abs(means - self._ref_mean) / np.maximum(self._ref_std, 1e-9)
        local_score = float(np.max(np.where(acc.finite > 0, shift, 0.0)))
        report = DriftReport(
            device_id=self.device_id,
            model_version=self.model_version,
            package_id=self.package_id,
            reference_sha256=self.reference_sha256,
            pipeline=self.pipeline,
            window_seq=self.window_seq,
            window_started_at=acc.started_at,
            window_ended_at=max(utc_now(), acc.started_at),
            frames_seen=acc.frames_seen,
            frames=acc.frames,
            features=list(self.names),
            histograms=encode_histograms(acc.counts),
            means=[round(float(v), 6) for v in means],
            stds=[round(float(v), 6) for v in stds],
            class_counts=[int(c) for c in acc.class_counts],
            local_score=round(min(local_score, 1e6), 4),
            detection=self.detection.close() if self.detection is not None else None,
        )
        self.window_seq += 1
        return report


@dataclass
class Observation:
    """What one frame produced: closed windows to publish and captured samples to upload."""

    reports: list[DriftReport] = field(default_factory=list)
    samples: list[CapturedSample] = field(default_factory=list)


class DeviceMonitor:
    """Feeds inferred frames into the drift window and the sample collector.

    One per active model (the reference belongs to the package). ``observe`` runs on
    the inference thread: only subsampled frames cost more than a thumbnail.
    ``drift_trigger_score`` is the device's own standardised mean shift above which
    the drift-triggered sampler switches on.
    """

    def __init__(
        self,
        *,
        device_id: str,
        manifest: PackageManifest,
        reference: DriftReference | None,
        reference_sha256: str | None = None,
        subsampler: FrameSubsampler | None = None,
        collector: SampleCollector | None = None,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
        window_s: float = DEFAULT_WINDOW_S,
        drift_trigger_score: float = 1.0,
        pipeline: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.reference = reference
        self.subsampler = subsampler or FrameSubsampler()
        self.collector = collector
        self.drift_trigger_score = drift_trigger_score
        self.window = None if reference is None else DriftWindow(
            reference, device_id=device_id, model_version=manifest.model_version, package_id=manifest.package_id,
            reference_sha256=reference_sha256, pipeline=pipeline, max_frames=window_frames, max_window_s=window_s)

    def observe(self, frame_bgr: npt.NDArray[np.uint8], scores: npt.NDArray[np.floating], *, now_s: float,
                activation: str = "softmax", captured_at: datetime | None = None) -> Observation:
        out = Observation()
        if self.subsampler.accept(frame_bgr, now_s):
            logits = np.asarray(scores, dtype=np.float64).reshape(-1)
            probabilities = _softmax(logits) if activation == "softmax" else logits
            view = model_view(frame_bgr, self.manifest.preprocessing)
            if self.reference is not None and self.window is not None:
                features = frame_features(view, logits, probabilities, self.reference)
                self.window.add(features, now_s)
                named = features.as_dict(self.reference.feature_names)
                class_index = features.class_index
            else:
                outputs, class_index = output_stats(probabilities)
                named = {**image_features(view), **dict(zip(OUTPUT_FEATURES, outputs.tolist(), strict=True))}
            if self.collector is not None:
                label = self.manifest.labels[class_index] if class_index < len(self.manifest.labels) else ""
                candidate = SampleCandidate(frame_bgr=frame_bgr, probabilities=probabilities, label=label,
                                            now_s=now_s, captured_at=captured_at or utc_now(),
                                            features={k: round(v, 6) for k, v in named.items()})
                captured = self.collector.offer(candidate)
                if captured is not None:
                    out.samples.append(captured)
        elif self.window is not None:
            self.window.count_seen(now_s)
        if self.window is not None:
            self._close_due(out, now_s)
        return out

    def _close_due(self, out: Observation, now_s: float) -> None:
        assert self.window is not None
        report = self.window.close_if_due(now_s)
        if report is not None:
            out.reports.append(report)
            drift_sampler = self.collector.sampler("drift") if self.collector is not None else None
            if (isinstance(drift_sampler, DriftTriggeredSampler) and report.local_score is not None
                    and report.local_score >= self.drift_trigger_score):
                drift_sampler.trigger(now_s)

    def observe_detections(self, frame_bgr: npt.NDArray[np.uint8], detections: tuple[Detection, ...], *,
                           now_s: float, shadow: ShadowFrame | None = None,
                           captured_at: datetime | None = None) -> Observation:
        """Add a subsampled detection frame to the drift window and offer it to the sample collector.

        Subsampled like classification frames (consecutive frames repeat), except frames
        whose shadowed boxes disagreed with the candidate's: those are rare and are
        exactly what a label should settle, so they are always offered to the collector
        (but do not enter the drift window, which must see frames as subsampled).
        """
        out = Observation()
        disagrees = shadow is not None and not shadow.match.agrees
        accepted = self.subsampler.accept(frame_bgr, now_s)
        if accepted and self.reference is not None and self.window is not None:
            view = model_view(frame_bgr, self.manifest.preprocessing)
            values = in_reference_order(image_features(view), self.reference)
            height, width = frame_bgr.shape[:2]
            self.window.add_detections(FrameFeatures(values=values, class_index=-1), detections, width, height,
                                       now_s)
        elif self.window is not None:
            self.window.count_seen(now_s)
        if self.collector is not None and (accepted or disagrees):
            detection = self.manifest.detection
            scores = np.asarray([d.score for d in detections], dtype=np.float64)
            candidate = SampleCandidate(
                frame_bgr=frame_bgr, probabilities=scores, label=detections[0].label if detections else "",
                now_s=now_s, captured_at=captured_at or utc_now(),
                features={"boxes": float(len(detections)), "mean_box_score": round(float(scores.mean()), 6)
                          if len(scores) else 0.0},
                detections=detections, score_threshold=detection.score_threshold if detection is not None else None,
                candidate_detections=shadow.candidate if shadow is not None else None,
                unmatched_boxes=shadow.match.unmatched if shadow is not None else 0)
            captured = self.collector.offer(candidate)
            if captured is not None:
                out.samples.append(captured)
        if self.window is not None:
            self._close_due(out, now_s)
        return out

def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum(), dtype=np.float64)


class MonitoringConfig(BaseModel):
    """The agent's drift and sample settings (``monitoring:`` in the agent config)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    subsample_interval_s: float = Field(default=1.0, ge=0)
    scene_change: float = Field(default=20.0, gt=0)
    # A window closes at window_frames subsampled frames or after window_s seconds, whichever
    # comes first: the first window of a fresh camera arrives within about window_s.
    window_frames: int = Field(default=DEFAULT_WINDOW_FRAMES, ge=1, le=65_535)
    window_s: float = Field(default=DEFAULT_WINDOW_S, gt=0)
    drift_trigger_score: float = Field(default=1.0, gt=0)
    # "stats_only" is the privacy mode: statistics of sampled frames, never an image.
    samples: Literal["off", "stats_only", "inline", "http"] = "inline"
    random_probability: float = Field(default=0.02, ge=0, le=1)
    uncertainty: Literal["entropy", "margin", "threshold"] = "margin"
    uncertainty_margin_below: float = Field(default=0.15, ge=0, le=1)
    uncertainty_entropy_above: float = Field(default=0.7, ge=0, le=1)
    uncertainty_threshold: float = Field(default=0.5, ge=0, le=1)
    uncertainty_band: float = Field(default=0.05, ge=0, le=1)
    drift_probability: float = Field(default=0.2, ge=0, le=1)
    drift_active_s: float = Field(default=900.0, gt=0)
    # Caps inside the device budget so uncertain frames cannot crowd out the random stream.
    uncertainty_per_minute_count: int = Field(default=2, ge=0)
    # Detection packages: boxes scoring within this band above the score threshold make a
    # frame uncertain; frames whose shadowed boxes disagree have their own per-minute cap.
    box_uncertainty_band: float = Field(default=0.1, gt=0, le=1)
    disagreement_per_minute_count: int = Field(default=2, ge=0)
    per_minute_count: int = Field(default=6, ge=0)
    per_hour_count: int = Field(default=60, ge=0)
    per_day_count: int = Field(default=500, ge=0)
    per_minute_bytes: int = Field(default=64 * 1024, ge=0)
    per_hour_bytes: int = Field(default=512 * 1024, ge=0)
    per_day_bytes: int = Field(default=4 * 1024 * 1024, ge=0)
    max_side: int = Field(default=160, ge=16, le=1024)
    jpeg_quality: int = Field(default=85, ge=20, le=100)

    def collector(self) -> SampleCollector | None:
        if self.samples == "off":
            return None
        samplers: list[Sampler] = [
            RandomSampler(self.random_probability),
            DriftTriggeredSampler(self.drift_probability, active_s=self.drift_active_s),
            UncertaintySampler(self.uncertainty, entropy_above=self.uncertainty_entropy_above,
                               margin_below=self.uncertainty_margin_below, threshold=self.uncertainty_threshold,
                               band=self.uncertainty_band),
            # A frame the shadow candidate disagreed on is worth more than an uncertain one,
            # and its sample shows both models' boxes.
            ShadowDisagreementSampler(),
            BoxUncertaintySampler(band=self.box_uncertainty_band),
            OperatorRequestSampler(),
        ]
        budget = SampleBudget(BudgetLimits(
            per_minute_count=self.per_minute_count, per_hour_count=self.per_hour_count,
            per_day_count=self.per_day_count, per_minute_bytes=self.per_minute_bytes,
            per_hour_bytes=self.per_hour_bytes, per_day_bytes=self.per_day_bytes))
        own = SampleBudget(BudgetLimits(per_minute_count=self.uncertainty_per_minute_count))
        disagreement = SampleBudget(BudgetLimits(per_minute_count=self.disagreement_per_minute_count))
        return SampleCollector(samplers, budget, stats_only=self.samples == "stats_only", max_side=self.max_side,
                               jpeg_quality=self.jpeg_quality,
                               sampler_budgets={"uncertainty": own, "disagreement": disagreement})


class ServedModel(Protocol):
    @property
    def manifest(self) -> PackageManifest: ...

    @property
    def artifact(self) -> ModelArtifact: ...


class FrameLike(Protocol):
    @property
    def frame(self) -> npt.NDArray[np.uint8]: ...


def load_reference(manifest: PackageManifest, package_dir: Path) -> tuple[DriftReference, str] | None:
    """The package's drift reference and its sha256, checked against the manifest (``None`` if absent).

    Raises:
        ValueError: the file does not match the manifest's hash or is not a valid reference.
    """
    if manifest.drift_reference_file is None:
        return None
    raw = (package_dir / manifest.drift_reference_file).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest.file(manifest.drift_reference_file).sha256:
        raise ValueError(f"{manifest.drift_reference_file} does not match the manifest's sha256")
    return DriftReference.from_bytes(raw), digest


class AgentMonitoring:
    """The agent's hook: one :class:`DeviceMonitor` per pipeline, rebuilt when the served package changes.

    ``publish_drift`` and ``publish_sample`` hand reports to the uplink (never blocking);
    ``package_dir`` finds an installed package's directory.

    The engine calls :meth:`submit` on its inference thread; with ``threaded`` the work
    (thumbnails, statistics, JPEG) runs on a monitoring thread behind a small queue, so
    it never adds to a frame's latency or to the probation's figures. A full queue
    drops the frame from monitoring (counted in ``dropped_frames``), never from inference.
    """

    def __init__(self, config: MonitoringConfig, *, device_id: str,
                 package_dir: Callable[[str, str], Path],
                 publish_drift: Callable[[DriftReport], None],
                 publish_sample: Callable[[CapturedSample, PackageManifest, str], None],
                 clock: Callable[[], float] = time.monotonic, threaded: bool = True, queue_size: int = 4) -> None:
        self.config = config
        self.device_id = device_id
        self.package_dir = package_dir
        self.publish_drift = publish_drift
        self.publish_sample = publish_sample
        self.clock = clock
        self.threaded = threaded
        self.dropped_frames = 0
        self._monitors: dict[str, tuple[str, DeviceMonitor]] = {}
        self._lock = threading.Lock()
        # Each entry is one frame's monitoring work, bound to its arguments.
        self._queue: queue.Queue[tuple[str, Callable[[], None]]] = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None

    def submit(self, pipeline: str, model: ServedModel, frame_bgr: npt.NDArray[np.uint8],
               scores: npt.NDArray[np.floating]) -> None:
        if not self.config.enabled:
            return
        now_s = self.clock()
        self._run(pipeline, lambda: self.on_output(pipeline, model, frame_bgr, scores, now_s=now_s))

    def submit_detections(self, pipeline: str, model: ServedModel, frame_bgr: npt.NDArray[np.uint8],
                          detections: tuple[Detection, ...], shadow: ShadowFrame | None = None) -> None:
        if not self.config.enabled:
            return
        now_s = self.clock()
        self._run(pipeline, lambda: self.on_detections(pipeline, model, frame_bgr, detections, shadow, now_s=now_s))

    def _run(self, pipeline: str, work: Callable[[], None]) -> None:
        if not self.threaded:
            work()
            return
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._loop, name="drift-monitor", daemon=True)
                    self._worker.start()
        try:
            self._queue.put_nowait((pipeline, work))
        except queue.Full:
            self.dropped_frames += 1

    def _loop(self) -> None:
        while True:
            pipeline, work = self._queue.get()
            try:
                work()
            except Exception:  # a bad frame must not end monitoring
                log.exception("[%s] drift monitoring failed on a frame", pipeline)

    def monitor_for(self, pipeline: str, model: ServedModel) -> DeviceMonitor:
        package_id = model.manifest.package_id
        with self._lock:
            current = self._monitors.get(pipeline)
            if current is not None and current[0] == package_id:
                return current[1]
        reference: tuple[DriftReference, str] | None = None
        try:
            reference = load_reference(model.manifest, self.package_dir(pipeline, package_id))
        except (OSError, ValueError) as exc:
            log.error("[%s] no drift windows for %s: %s", pipeline, package_id, exc)
        previous = current[1] if current is not None else None
        if previous is not None and previous.window is not None:
            closing = previous.window.close()  # the old model's partial window still counts
            if closing is not None:
                self.publish_drift(closing)
        config = self.config
        monitor = DeviceMonitor(
            device_id=self.device_id, manifest=model.manifest, reference=reference[0] if reference else None,
            reference_sha256=reference[1] if reference else None,
            subsampler=FrameSubsampler(interval_s=config.subsample_interval_s, scene_change=config.scene_change),
            # Budgets belong to the device, not the model: keep the collector across model changes.
            collector=previous.collector if previous is not None else config.collector(),
            window_frames=config.window_frames, window_s=config.window_s,
            drift_trigger_score=config.drift_trigger_score, pipeline=pipeline)
        with self._lock:
            self._monitors[pipeline] = (package_id, monitor)
        return monitor

    def hook(self, pipeline: str) -> Callable[[ServedModel, FrameLike, npt.NDArray[np.float32]], None]:
        """The engine's ``output_hook`` for ``pipeline``."""
        return lambda model, item, scores: self.submit(pipeline, model, item.frame, scores)

    def detection_hook(self, pipeline: str
                       ) -> Callable[[ServedModel, FrameLike, tuple[Detection, ...], ShadowFrame | None], None]:
        """The inner hook of :meth:`agent.infer.shadow.ShadowSet.detection_hook` for ``pipeline``."""
        return lambda model, item, detections, shadow: self.submit_detections(pipeline, model, item.frame,
                                                                              detections, shadow)

    def on_detections(self, pipeline: str, model: ServedModel, frame_bgr: npt.NDArray[np.uint8],
                      detections: tuple[Detection, ...], shadow: ShadowFrame | None = None, *,
                      now_s: float | None = None) -> None:
        """Add one detection frame to the drift window and offer it to the samplers now (on the caller's thread)."""
        monitor = self.monitor_for(pipeline, model)
        observed = monitor.observe_detections(frame_bgr, detections, shadow=shadow,
                                              now_s=self.clock() if now_s is None else now_s)
        for report in observed.reports:
            self.publish_drift(report)
        for sample in observed.samples:
            self.publish_sample(sample, model.manifest, pipeline)

    def on_output(self, pipeline: str, model: ServedModel, frame_bgr: npt.NDArray[np.uint8],
                  scores: npt.NDArray[np.floating], *, now_s: float | None = None) -> None:
        """Observe one frame now (on the caller's thread)."""
        monitor = self.monitor_for(pipeline, model)
        observed = monitor.observe(frame_bgr, scores, now_s=self.clock() if now_s is None else now_s,
                                   activation=model.artifact.output_activation)
        for report in observed.reports:
            self.publish_drift(report)
        for sample in observed.samples:
            self.publish_sample(sample, model.manifest, pipeline)


def agent_monitoring(*, config: MonitoringConfig, device_id: str, state_dir: Path, topics: Topics, api_url: str,
                     api_token_file: Path | None, publish: Callable[[str, DriftReport | SampleReport], None]
                     ) -> AgentMonitoring:
    """Wire :class:`AgentMonitoring` for the agent: package slots on disk, the uplink, the HTTP upload."""
    from agent.update.store import PackageStore

    token: str | None = None
    if api_token_file is not None:
        try:
            token = api_token_file.read_text().strip() or None
        except OSError as exc:
            log.warning("cannot read the API token for sample uploads: %s", exc)
    uploader: SampleUploader | None = None

    def send(sample: CapturedSample, manifest: PackageManifest, pipeline: str) -> None:
        upload: Literal["inline", "http"] = "http" if uploader is not None else "inline"
        publish(topics.samples(device_id), sample.to_report(
            device_id, upload=upload, model_version=manifest.model_version, package_id=manifest.package_id,
            pipeline=pipeline))

    pending: dict[str, tuple[PackageManifest, str]] = {}

    def after_upload(sample: CapturedSample) -> None:
        manifest, pipeline = pending.pop(sample.sample_id)
        send(sample, manifest, pipeline)

    if config.samples == "http":
        uploader = SampleUploader(api_url=api_url, device_id=device_id, token=token, publish=after_upload)
        uploader.start()

    def publish_sample(sample: CapturedSample, manifest: PackageManifest, pipeline: str) -> None:
        if uploader is not None and sample.jpeg is not None:
            pending[sample.sample_id] = (manifest, pipeline)
            uploader.submit(sample)
        else:
            send(sample, manifest, pipeline)

    return AgentMonitoring(
        config, device_id=device_id,
        package_dir=lambda pipeline, package_id: PackageStore(state_dir, pipeline).package_dir(package_id),
        publish_drift=lambda report: publish(topics.drift(device_id), report),
        publish_sample=publish_sample)
