"""The drift reference shipped in a model package, and the histogram wire encoding.

A package may carry ``drift_reference.json`` (named by the manifest's
``drift_reference_file``): for every monitored feature the fixed histogram edges
(interior quantiles of the training reference), the reference counts in those
bins and the reference moments; the projection applied to the model's output
logits; and the calibrated sequential-test constants. Devices only need the edges
and the projection; the control plane needs the rest to test windows.

Histograms travel as one base64 string of little-endian uint16 counts, shape
(features, 32): 64 bytes a feature, and they merge by addition (docs/drift.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DRIFT_REFERENCE_FILE = "drift_reference.json"
HISTOGRAM_BINS = 32
UINT16_MAX = 65_535

# A device window closes at whichever comes first: this many subsampled frames, or this
# many seconds (with at least one frame). At the default subsampling (one frame a second,
# more on scene changes) the first window reaches the control plane within about 30 s,
# with enough frames (the control plane's ``min_window_frames``, 20) to be tested.
# Package references are calibrated on windows of DEFAULT_WINDOW_FRAMES frames.
DEFAULT_WINDOW_FRAMES = 30
DEFAULT_WINDOW_S = 30.0

# Per-frame image statistics, computed on the model's view of the frame (after the
# package's resize/crop, before normalisation), so training images and device frames
# pass through the same code.
IMAGE_FEATURES: tuple[str, ...] = (
    "luma_mean",
    "luma_std",
    "saturation_mean",
    "sharpness_log_lapvar",
    "noise_sigma",
    "clipped_fraction",
)
OUTPUT_FEATURES: tuple[str, ...] = ("top_score", "entropy", "margin")

# Detection drift: box features over fixed edges (no training quantiles needed, so every
# detection package monitors them and windows merge across models). All in [0, 1]:
# box score; box size as sqrt(box area) / frame diagonal on a geometric scale (small
# objects matter most); box centre x and y as fractions of the frame width and height.
DETECTION_FEATURES: tuple[str, ...] = ("box_score", "box_size", "box_center_x", "box_center_y")


def detection_feature_edges() -> npt.NDArray[np.float64]:
    """The 31 fixed interior edges of each detection feature, shape (4, 31)."""
    unit = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)[1:-1]
    size = np.geomspace(0.005, 0.7, HISTOGRAM_BINS - 1)
    return np.stack([unit, size, unit, unit])


FeatureName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]


def projection_feature_names(dims: int) -> tuple[str, ...]:
    return tuple(f"proj_{i}" for i in range(dims))


class FeatureReference(BaseModel):
    """One monitored feature: 31 interior edges make 32 bins (the outer two are open)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FeatureName
    edges: list[float] = Field(min_length=HISTOGRAM_BINS - 1, max_length=HISTOGRAM_BINS - 1)
    counts: list[int] = Field(min_length=HISTOGRAM_BINS, max_length=HISTOGRAM_BINS)
    mean: float
    std: float = Field(ge=0)

    @model_validator(mode="after")
    def _sorted(self) -> FeatureReference:
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"edges of {self.name} must be non-decreasing")
        if any(c < 0 for c in self.counts):
            raise ValueError(f"counts of {self.name} must be non-negative")
        return self


class SequentialCalibration(BaseModel):
    """CUSUM constants over window scores (``-log10`` of the Holm-adjusted window p-value).

    ``k`` is subtracted from every window's score (the allowance), ``h`` is the alarm
    level, ``clear_windows`` consecutive clean windows close an open alert. Calibrated
    on clean windows of ``window_frames`` frames so that false alarms stay rare.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: float = Field(default=2.0, ge=0)
    h: float = Field(default=6.0, gt=0)
    clear_windows: int = Field(default=3, ge=1)
    max_score: float = Field(default=20.0, gt=0)
    window_frames: int = Field(default=300, ge=1)
    clean_windows: int = Field(default=0, ge=0)
    clean_alarms: int = Field(default=0, ge=0)


class DetectionReference(BaseModel):
    """What a detection package's windows should look like (its part of a :class:`DriftReference`).

    ``features`` are the box histograms over :func:`detection_feature_edges`, in
    :data:`DETECTION_FEATURES` order, counted per box; ``object_counts`` follows the
    reference's labels; ``boxes_per_frame`` counts frames with 0, 1, ..., 31 or more
    boxes. All from the packaged detector's own boxes on ``frames`` held-out images,
    decoded with the device's decoder and thresholds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[FeatureReference] = Field(min_length=len(DETECTION_FEATURES), max_length=len(DETECTION_FEATURES))
    object_counts: list[int] = Field(min_length=1, max_length=1000)
    boxes_per_frame: list[int] = Field(min_length=HISTOGRAM_BINS, max_length=HISTOGRAM_BINS)
    frames: int = Field(ge=1)

    @model_validator(mode="after")
    def _fixed_edges(self) -> DetectionReference:
        if [f.name for f in self.features] != list(DETECTION_FEATURES):
            raise ValueError(f"detection features must be {list(DETECTION_FEATURES)}")
        # Devices bin with the fixed edges, not the file's: a reference with other edges cannot be tested.
        if not np.allclose(np.asarray([f.edges for f in self.features]), detection_feature_edges()):
            raise ValueError("detection feature edges must be the fixed detection edges")
        if any(c < 0 for c in (*self.object_counts, *self.boxes_per_frame)):
            raise ValueError("object_counts and boxes_per_frame must be non-negative")
        if sum(self.boxes_per_frame) != self.frames:
            raise ValueError("boxes_per_frame must count every reference frame once")
        return self

    def counts_array(self) -> npt.NDArray[np.float64]:
        return np.asarray([f.counts for f in self.features], dtype=np.float64)


class DriftReference(BaseModel):
    """A package's drift reference.

    Classifiers: image, output and projection features, and predicted-class counts.
    Detectors: the image features, no class counts or projection, and ``detection``
    (absent from classifier references, so older files load unchanged).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    bins: Literal[32] = 32
    labels: list[str] = Field(min_length=2, max_length=1000)
    features: list[FeatureReference] = Field(min_length=1, max_length=64)
    class_counts: list[int] = Field(default_factory=list)
    # Low-dimensional projection of the model's output logits: ``(logits - mean) @ matrix.T``.
    # Logits rather than penultimate features: the exported graph has one output, and
    # the logits are a linear map of the penultimate layer (see docs/drift.md).
    projection_source: Literal["logits"] = "logits"
    projection_mean: list[float] = Field(default_factory=list)
    projection: list[list[float]] = Field(default_factory=list, max_length=16)
    reference_size: int = Field(ge=1)
    calibration: SequentialCalibration = Field(default_factory=SequentialCalibration)
    source: str = Field(default="", max_length=256)
    detection: DetectionReference | None = None

    @model_validator(mode="after")
    def _detection_labels(self) -> DriftReference:
        if self.detection is not None and len(self.detection.object_counts) != len(self.labels):
            raise ValueError("detection.object_counts must have one entry per label")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def edges_array(self) -> npt.NDArray[np.float64]:
        return np.asarray([f.edges for f in self.features], dtype=np.float64)

    def counts_array(self) -> npt.NDArray[np.float64]:
        return np.asarray([f.counts for f in self.features], dtype=np.float64)

    def projection_arrays(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        matrix = np.asarray(self.projection, dtype=np.float32).reshape(len(self.projection), -1)
        mean = np.asarray(self.projection_mean, dtype=np.float32)
        return matrix, mean

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DriftReference:
        """Parse a reference file. Raises ``ValueError`` saying what is wrong."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ValueError(f"invalid drift reference: {where}: {first['msg']}") from exc


def encode_histograms(counts: npt.NDArray[np.integer] | npt.NDArray[np.floating]) -> str:
    """Base64 of (features, 32) counts as little-endian uint16, saturating at 65535."""
    array = np.clip(np.asarray(counts), 0, UINT16_MAX).astype("<u2")
    if array.ndim != 2 or array.shape[1] != HISTOGRAM_BINS:
        raise ValueError(f"histograms must have shape (features, {HISTOGRAM_BINS}), got {array.shape}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_histograms(text: str, features: int) -> npt.NDArray[np.int64]:
    """Inverse of :func:`encode_histograms`. Raises ``ValueError`` on a malformed string."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"histograms are not base64: {exc}") from exc
    expected = features * HISTOGRAM_BINS * 2
    if len(raw) != expected:
        raise ValueError(f"histograms hold {len(raw)} bytes, expected {expected} for {features} features")
    return np.frombuffer(raw, dtype="<u2").reshape(features, HISTOGRAM_BINS).astype(np.int64)
