"""Detection drift features: what a detector finds, as fixed-edge histograms (pure, numpy only).

Per box: score, size (sqrt(area) / frame diagonal) and centre (x / width, y /
height); per frame: how many boxes; per window: objects per class. Fixed edges
(:func:`agent.contract.drift.detection_feature_edges`) need no training
reference, merge by addition across devices and time, and support chi-square
and PSI like the classification histograms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.contract.drift import (
    DETECTION_FEATURES,
    HISTOGRAM_BINS,
    detection_feature_edges,
    encode_histograms,
)
from agent.contract.messages import DetectionDrift
from agent.infer.detect import Detection


def box_features(detections: Sequence[Detection], frame_width: int, frame_height: int) -> npt.NDArray[np.float64]:
    """(boxes, 4): score, sqrt(area)/diagonal, centre x / width, centre y / height."""
    if not detections:
        return np.zeros((0, len(DETECTION_FEATURES)))
    boxes = np.asarray([(d.x1, d.y1, d.x2, d.y2, d.score) for d in detections], dtype=np.float64)
    diagonal = float(np.hypot(frame_width, frame_height))
    size = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    return np.stack([boxes[:, 4], size / diagonal, (boxes[:, 0] + boxes[:, 2]) / 2 / frame_width,
                     (boxes[:, 1] + boxes[:, 3]) / 2 / frame_height], axis=1)


class DetectionDriftWindow:
    """Accumulates detection frames into one :class:`DetectionDrift` (O(boxes) per frame)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self._labels = list(labels)
        self._edges = detection_feature_edges()
        self._reset()

    def _reset(self) -> None:
        self.frames = 0
        self.boxes = 0
        self._counts = np.zeros((len(DETECTION_FEATURES), HISTOGRAM_BINS), dtype=np.int64)
        self._objects = np.zeros(len(self._labels), dtype=np.int64)
        self._per_frame = np.zeros(HISTOGRAM_BINS, dtype=np.int64)

    def add(self, detections: Sequence[Detection], frame_width: int, frame_height: int) -> None:
        features = box_features(detections, frame_width, frame_height)
        for index in range(len(DETECTION_FEATURES)):
            bins = np.searchsorted(self._edges[index], features[:, index], side="right")
            np.add.at(self._counts[index], bins, 1)
        np.add.at(self._objects, [d.class_id for d in detections], 1)
        self._per_frame[min(len(detections), HISTOGRAM_BINS - 1)] += 1
        self.frames += 1
        self.boxes += len(detections)

    def close(self) -> DetectionDrift | None:
        """The window so far (None when it saw no frame), and a fresh window."""
        if self.frames == 0:
            return None
        report = DetectionDrift(frames=min(self.frames, 65_535), boxes=self.boxes,
                                histograms=encode_histograms(self._counts),
                                object_counts=self._objects.tolist(), boxes_per_frame=self._per_frame.tolist())
        self._reset()
        return report
