"""Sample capture on the device: which frames to send, within what budget.

Pure classes over data (no I/O): samplers decide *whether* a frame is worth
sending and say why; :class:`SampleBudget` bounds how many and how many bytes
per minute, hour and day; :class:`NearDuplicateFilter` drops frames that look
like one recently sent; :class:`SampleCollector` chains them and produces a
downscaled JPEG (or, in stats-only privacy mode, no image at all).

Samplers are consulted in the order given; the first that selects a frame names
the reason. Cheap checks run first: probabilities before pixels, pixels before JPEG.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from agent.contract import SampleBox, SampleReport, new_message_id, utc_now
from agent.contract.messages import MAX_INLINE_SAMPLE_BYTES, MAX_SAMPLE_BOXES

if TYPE_CHECKING:
    from agent.infer.detect import Detection

__all__ = [
    "BoxUncertaintySampler",
    "BudgetLimits",
    "CapturedSample",
    "DriftTriggeredSampler",
    "NearDuplicateFilter",
    "OperatorRequestSampler",
    "RandomSampler",
    "SampleBudget",
    "SampleCandidate",
    "SampleCollector",
    "SampleUploader",
    "Sampler",
    "SamplerName",
    "ShadowDisagreementSampler",
    "UncertaintySampler",
    "dhash64",
    "encode_jpeg",
    "sample_boxes",
]

SamplerName = Literal["random", "uncertainty", "drift", "operator", "disagreement"]


@dataclass(frozen=True)
class SampleCandidate:
    """One inferred frame offered for sampling. ``now_s`` is a monotonic clock in seconds."""

    frame_bgr: npt.NDArray[np.uint8]
    probabilities: npt.NDArray[np.floating]
    label: str
    now_s: float
    captured_at: datetime = field(default_factory=utc_now)
    features: dict[str, float] = field(default_factory=dict)
    # Detection frames only: the active model's boxes (source-frame pixels, highest score
    # first) and its score threshold; when the frame was shadowed, the candidate's boxes
    # and how many boxes of either model found no partner (agent.infer.shadow.match_boxes).
    detections: tuple[Detection, ...] | None = None
    score_threshold: float | None = None
    candidate_detections: tuple[Detection, ...] | None = None
    unmatched_boxes: int = 0

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities)) if np.size(self.probabilities) else 0.0


class Sampler(Protocol):
    name: SamplerName

    def select(self, candidate: SampleCandidate) -> str | None:
        """A short reason when this frame should be sampled, else ``None``."""
        ...


class RandomSampler:
    """A small unbiased stream (for evaluation and for references): each frame with ``probability``."""

    name: SamplerName = "random"

    def __init__(self, probability: float, *, seed: int | None = None) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        self.probability = probability
        self._rng = np.random.default_rng(seed)

    def select(self, candidate: SampleCandidate) -> str | None:
        return "random" if self._rng.random() < self.probability else None


class UncertaintySampler:
    """Frames the model is unsure of.

    ``mode="entropy"``: normalised entropy (0-1) at least ``entropy_above``;
    ``"margin"``: top-1 minus top-2 below ``margin_below``;
    ``"threshold"``: top score within ``band`` of a decision ``threshold``.
    """

    name: SamplerName = "uncertainty"

    def __init__(self, mode: Literal["entropy", "margin", "threshold"] = "margin", *, entropy_above: float = 0.6,
                 margin_below: float = 0.2, threshold: float = 0.5, band: float = 0.1) -> None:
        self.mode = mode
        self.entropy_above = entropy_above
        self.margin_below = margin_below
        self.threshold = threshold
        self.band = band

    def select(self, candidate: SampleCandidate) -> str | None:
        if candidate.detections is not None:
            return None  # box scores are not a class distribution: BoxUncertaintySampler's job
        p = np.asarray(candidate.probabilities, dtype=np.float64).reshape(-1)
        if self.mode == "entropy":
            entropy = float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum()) / math.log(max(p.size, 2))
            return f"entropy {entropy:.2f}" if entropy >= self.entropy_above else None
        top2 = np.sort(p)[-2:]
        if self.mode == "margin":
            margin = float(top2[-1] - top2[0]) if p.size > 1 else 1.0
            return f"margin {margin:.2f}" if margin < self.margin_below else None
        top = float(top2[-1])
        return f"score {top:.2f} near {self.threshold:.2f}" if abs(top - self.threshold) <= self.band else None


class BoxUncertaintySampler:
    """Detection frames with a box whose score sits just above the model's score threshold.

    Boxes below the threshold were never reported, so "near" means within ``band``
    above it: the objects the model almost missed (or almost invented), where a
    label helps most. At least ``min_boxes`` such boxes make a frame uncertain.
    """

    name: SamplerName = "uncertainty"

    def __init__(self, *, band: float = 0.1, min_boxes: int = 1) -> None:
        if not 0.0 < band <= 1.0 or min_boxes < 1:
            raise ValueError("band must be in (0, 1] and min_boxes at least 1")
        self.band = band
        self.min_boxes = min_boxes

    def select(self, candidate: SampleCandidate) -> str | None:
        if not candidate.detections or candidate.score_threshold is None:
            return None
        threshold = candidate.score_threshold
        near = [d for d in candidate.detections if d.score - threshold <= self.band]
        if len(near) < self.min_boxes:
            return None
        lowest = min(near, key=lambda d: d.score)
        return f"{len(near)} box(es) within {self.band:.2f} of threshold {threshold:.2f} (lowest {lowest.label} " \
               f"{lowest.score:.2f})"


class ShadowDisagreementSampler:
    """Detection frames where the shadowed candidate's boxes and the active model's disagree.

    A frame qualifies when at least ``min_unmatched`` boxes of either model found no
    partner of the same class at IoU >= 0.5. The sample carries both models' boxes.
    """

    name: SamplerName = "disagreement"

    def __init__(self, *, min_unmatched: int = 1) -> None:
        if min_unmatched < 1:
            raise ValueError("min_unmatched must be at least 1")
        self.min_unmatched = min_unmatched

    def select(self, candidate: SampleCandidate) -> str | None:
        if candidate.candidate_detections is None or candidate.unmatched_boxes < self.min_unmatched:
            return None
        active = len(candidate.detections or ())
        return (f"{candidate.unmatched_boxes} unmatched box(es): active {active}, "
                f"candidate {len(candidate.candidate_detections)}")


def sample_boxes(candidate: SampleCandidate, *, include_candidate: bool) -> tuple[SampleBox, ...]:
    """The frame's boxes as fractions of the frame, at most ``MAX_SAMPLE_BOXES``.

    With ``include_candidate`` the candidate's boxes follow the active model's (each
    model keeps at least half of the room when both have more boxes than fit).
    """
    height, width = candidate.frame_bgr.shape[:2]

    def scaled(boxes: Sequence[Detection], model: Literal["active", "candidate"], limit: int) -> list[SampleBox]:
        return [SampleBox(x1=_fraction(d.x1, width), y1=_fraction(d.y1, height), x2=_fraction(d.x2, width),
                          y2=_fraction(d.y2, height), label=d.label[:256], score=min(max(d.score, 0.0), 1.0),
                          model=model) for d in list(boxes)[:limit]]

    active = candidate.detections or ()
    others = (candidate.candidate_detections or ()) if include_candidate else ()
    room_for_others = min(len(others), max(MAX_SAMPLE_BOXES - len(active), MAX_SAMPLE_BOXES // 2))
    return (*scaled(active, "active", MAX_SAMPLE_BOXES - room_for_others),
            *scaled(others, "candidate", room_for_others))


def _fraction(pixels: float, extent: int) -> float:
    return round(min(max(pixels / max(extent, 1), 0.0), 1.0), 5)


class DriftTriggeredSampler:
    """After :meth:`trigger` (a drift window looked shifted), sample with ``probability`` for ``active_s``."""

    name: SamplerName = "drift"

    def __init__(self, probability: float = 0.5, *, active_s: float = 600.0, seed: int | None = None) -> None:
        if not 0.0 <= probability <= 1.0 or active_s <= 0:
            raise ValueError("probability must be between 0 and 1 and active_s positive")
        self.probability = probability
        self.active_s = active_s
        self._until_s = -math.inf
        self._rng = np.random.default_rng(seed)

    def trigger(self, now_s: float) -> None:
        self._until_s = now_s + self.active_s

    def active(self, now_s: float) -> bool:
        return now_s < self._until_s

    def select(self, candidate: SampleCandidate) -> str | None:
        if self.active(candidate.now_s) and self._rng.random() < self.probability:
            return "drift window"
        return None


class OperatorRequestSampler:
    """The next ``count`` frames after an operator's request (budgets still apply)."""

    name: SamplerName = "operator"

    def __init__(self) -> None:
        self.pending = 0

    def request(self, count: int) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self.pending += count

    def select(self, candidate: SampleCandidate) -> str | None:
        if self.pending <= 0:
            return None
        self.pending -= 1
        return "operator request"


@dataclass(frozen=True)
class BudgetLimits:
    """Per-device limits on samples sent, in count and bytes (0 = nothing allowed)."""

    per_minute_count: int = 6
    per_hour_count: int = 60
    per_day_count: int = 500
    per_minute_bytes: int = 64 * 1024
    per_hour_bytes: int = 512 * 1024
    per_day_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.per_minute_count, self.per_hour_count, self.per_day_count, self.per_minute_bytes,
               self.per_hour_bytes, self.per_day_bytes) < 0:
            raise ValueError("budget limits must be >= 0")


_PERIODS_S = (60.0, 3600.0, 86_400.0)


class SampleBudget:
    """Sliding-window budgets: a sample fits only if it fits every period, in count and bytes."""

    def __init__(self, limits: BudgetLimits) -> None:
        self.limits = limits
        self._spent: deque[tuple[float, int]] = deque()

    def _caps(self) -> tuple[tuple[float, int, int], ...]:
        lim = self.limits
        return ((60.0, lim.per_minute_count, lim.per_minute_bytes),
                (3600.0, lim.per_hour_count, lim.per_hour_bytes),
                (86_400.0, lim.per_day_count, lim.per_day_bytes))

    def usage(self, now_s: float, period_s: float) -> tuple[int, int]:
        """(count, bytes) spent in the last ``period_s`` seconds."""
        recent = [size for at, size in self._spent if now_s - at < period_s]
        return len(recent), sum(recent)

    def fits(self, size_bytes: int, now_s: float) -> bool:
        while self._spent and now_s - self._spent[0][0] >= _PERIODS_S[-1]:
            self._spent.popleft()
        for period_s, max_count, max_bytes in self._caps():
            count, spent = self.usage(now_s, period_s)
            if count + 1 > max_count or spent + size_bytes > max_bytes:
                return False
        return True

    def spend(self, size_bytes: int, now_s: float) -> None:
        self._spent.append((now_s, size_bytes))

    def try_spend(self, size_bytes: int, now_s: float) -> bool:
        if not self.fits(size_bytes, now_s):
            return False
        self.spend(size_bytes, now_s)
        return True


def dhash64(image_bgr: npt.NDArray[np.uint8]) -> int:
    """A 64-bit difference hash: robust to small changes, so near-duplicates collide."""
    grey = cv2.cvtColor(cv2.resize(image_bgr, (9, 8), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    bits = (grey[:, 1:] > grey[:, :-1]).reshape(-1)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


class NearDuplicateFilter:
    """Rejects an image whose hash is within ``max_hamming`` bits of one of the last ``memory`` kept."""

    def __init__(self, *, max_hamming: int = 4, memory: int = 256) -> None:
        self.max_hamming = max_hamming
        self._recent: deque[int] = deque(maxlen=memory)

    def is_duplicate(self, image_hash: int) -> bool:
        return any(bin(image_hash ^ seen).count("1") <= self.max_hamming for seen in self._recent)

    def remember(self, image_hash: int) -> None:
        self._recent.append(image_hash)


def encode_jpeg(image_bgr: npt.NDArray[np.uint8], *, max_side: int = 160, quality: int = 85,
                max_bytes: int = MAX_INLINE_SAMPLE_BYTES) -> tuple[bytes, int, int]:
    """Downscale so the longer side is at most ``max_side`` and encode as JPEG under ``max_bytes``.

    Lowers the quality step by step to fit. Raises ``ValueError`` if even quality 20 is too big.
    """
    height, width = image_bgr.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        image_bgr = np.asarray(cv2.resize(image_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                                          interpolation=cv2.INTER_AREA), dtype=np.uint8)
    for q in range(quality, 19, -15):
        ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok and encoded.size <= max_bytes:
            return encoded.tobytes(), int(image_bgr.shape[1]), int(image_bgr.shape[0])
    raise ValueError(f"cannot encode a {image_bgr.shape[1]}x{image_bgr.shape[0]} JPEG under {max_bytes} bytes")


@dataclass(frozen=True)
class CapturedSample:
    sample_id: str
    sampler: SamplerName
    reason: str
    captured_at: datetime
    label: str
    confidence: float
    features: dict[str, float]
    jpeg: bytes | None
    width: int = 0
    height: int = 0
    boxes: tuple[SampleBox, ...] = ()

    @property
    def image_sha256(self) -> str | None:
        return None if self.jpeg is None else hashlib.sha256(self.jpeg).hexdigest()

    def to_report(self, device_id: str, *, upload: Literal["inline", "http"], model_version: str | None = None,
                  package_id: str | None = None, pipeline: str | None = None) -> SampleReport:
        """The MQTT report; ``upload="http"`` means the JPEG was (or will be) PUT to the API first."""
        import base64

        has_image = self.jpeg is not None
        return SampleReport(
            device_id=device_id, sample_id=self.sample_id, model_version=model_version, package_id=package_id,
            pipeline=pipeline, sampler=self.sampler, reason=self.reason[:256], captured_at=self.captured_at,
            predicted_label=self.label, confidence=min(max(self.confidence, 0.0), 1.0), features=self.features,
            stats_only=not has_image, upload=upload if has_image else None, image_sha256=self.image_sha256,
            image_bytes=len(self.jpeg) if self.jpeg is not None else 0, image_width=self.width,
            image_height=self.height,
            image_b64=base64.b64encode(self.jpeg).decode() if self.jpeg is not None and upload == "inline" else None,
            boxes=list(self.boxes),
        )


@dataclass
class CollectorCounters:
    offered: int = 0
    selected: int = 0
    duplicates: int = 0
    over_budget: int = 0
    too_large: int = 0
    captured: int = 0
    bytes_captured: int = 0


class SampleCollector:
    """Samplers → near-duplicate filter → JPEG → budget. ``stats_only`` never produces an image.

    ``sampler_budgets`` optionally caps one sampler inside the device budget, so that
    a flood of uncertain frames cannot crowd out the small unbiased random stream:
    when the first sampler that selects a frame is over its own cap, the next one
    that selects it may still take it.
    """

    def __init__(self, samplers: list[Sampler], budget: SampleBudget, *,
                 dedupe: NearDuplicateFilter | None = None, stats_only: bool = False, max_side: int = 160,
                 jpeg_quality: int = 85, max_image_bytes: int = MAX_INLINE_SAMPLE_BYTES,
                 sampler_budgets: dict[SamplerName, SampleBudget] | None = None) -> None:
        self.samplers = samplers
        self.budget = budget
        self.sampler_budgets = dict(sampler_budgets or {})
        self.dedupe = dedupe if dedupe is not None else NearDuplicateFilter()
        self.stats_only = stats_only
        self.max_side = max_side
        self.jpeg_quality = jpeg_quality
        self.max_image_bytes = max_image_bytes
        self.counters = CollectorCounters()

    def sampler(self, name: SamplerName) -> Sampler | None:
        return next((s for s in self.samplers if s.name == name), None)

    def offer(self, candidate: SampleCandidate) -> CapturedSample | None:
        self.counters.offered += 1
        chosen: tuple[SamplerName, str] | None = None
        selected = False
        for sampler in self.samplers:
            reason = sampler.select(candidate)
            if reason is None:
                continue
            selected = True
            own = self.sampler_budgets.get(sampler.name)
            if own is None or own.fits(0, candidate.now_s):
                chosen = (sampler.name, reason)
                break
        if chosen is None:
            if selected:
                self.counters.selected += 1
                self.counters.over_budget += 1
            return None
        self.counters.selected += 1
        # Fail fast on the count budget before spending CPU on hashing and encoding.
        if not self.budget.fits(0, candidate.now_s):
            self.counters.over_budget += 1
            return None
        image_hash = dhash64(candidate.frame_bgr)
        if self.dedupe.is_duplicate(image_hash):
            self.counters.duplicates += 1
            return None
        jpeg: bytes | None = None
        width = height = 0
        if not self.stats_only:
            try:
                jpeg, width, height = encode_jpeg(candidate.frame_bgr, max_side=self.max_side,
                                                  quality=self.jpeg_quality, max_bytes=self.max_image_bytes)
            except ValueError:
                self.counters.too_large += 1
                return None
        size = len(jpeg) if jpeg is not None else 0
        own = self.sampler_budgets.get(chosen[0])
        if not self.budget.fits(size, candidate.now_s) or (own is not None and not own.fits(size, candidate.now_s)):
            self.counters.over_budget += 1
            return None
        self.budget.spend(size, candidate.now_s)
        if own is not None:
            own.spend(size, candidate.now_s)
        self.dedupe.remember(image_hash)
        self.counters.captured += 1
        self.counters.bytes_captured += size
        return CapturedSample(sample_id=new_message_id(), sampler=chosen[0], reason=chosen[1],
                              captured_at=candidate.captured_at, label=candidate.label,
                              confidence=candidate.confidence, features=dict(candidate.features), jpeg=jpeg,
                              width=width, height=height,
                              boxes=sample_boxes(candidate, include_candidate=chosen[0] == "disagreement"))


class SampleUploader:
    """Uploads sample JPEGs to the control plane on its own thread, then hands the report on.

    ``PUT {api_url}/api/v1/devices/{device_id}/samples/blobs`` with the device's token;
    the MQTT report naming the image is published only after the upload succeeded, so
    the control plane never sees a report for an image it does not have. A full queue
    or a failed upload drops the sample (samples are best effort; budgets were spent).
    """

    def __init__(self, *, api_url: str, device_id: str, token: str | None,
                 publish: Callable[[CapturedSample], None], queue_size: int = 32, timeout_s: float = 10.0) -> None:
        self.url = f"{api_url.rstrip('/')}/api/v1/devices/{device_id}/samples/blobs"
        self.token = token
        self.publish = publish
        self.timeout_s = timeout_s
        self.dropped = 0
        self.uploaded = 0
        self._queue: queue.Queue[CapturedSample | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="sample-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout=timeout_s)

    def submit(self, sample: CapturedSample) -> None:
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.dropped += 1

    def upload(self, sample: CapturedSample) -> bool:
        if sample.jpeg is None:
            return True
        request = urllib.request.Request(self.url, data=sample.jpeg, method="PUT",
                                         headers={"content-type": "image/jpeg",
                                                  **({"authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= int(response.status) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _loop(self) -> None:
        while True:
            sample = self._queue.get()
            if sample is None:
                return
            if self.upload(sample):
                self.uploaded += 1
                self.publish(sample)
            else:
                self.dropped += 1
