"""Detection drift windows: fixed-edge box histograms and object counts, within the drift report cap."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from agent.contract.drift import DETECTION_FEATURES, decode_histograms, encode_histograms
from agent.contract.messages import MAX_DRIFT_REPORT_BYTES, DriftReport, parse_report
from agent.infer.detect import Detection
from agent.telemetry.detection_drift import DetectionDriftWindow, box_features

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _box(x1: float, y1: float, x2: float, y2: float, class_id: int, score: float) -> Detection:
    return Detection(x1=x1, y1=y1, x2=x2, y2=y2, class_id=class_id, label=str(class_id), score=score)


def test_box_features_by_hand() -> None:
    # 640x480 frame: diagonal 800. A 40x90 box: sqrt(3600) / 800 = 0.075; centre (340, 60).
    features = box_features([_box(320, 15, 360, 105, 0, 0.8)], 640, 480)
    assert features.tolist() == [pytest.approx([0.8, 0.075, 340 / 640, 60 / 480])]


def test_window_counts_boxes_objects_and_boxes_per_frame() -> None:
    window = DetectionDriftWindow(["person", "car", "dog"])
    window.add([_box(0, 0, 10, 10, 0, 0.9), _box(100, 100, 300, 200, 1, 0.3)], 640, 480)
    window.add([], 640, 480)
    window.add([_box(600, 400, 640, 480, 0, 0.99)], 640, 480)

    drift = window.close()

    assert drift is not None and drift.frames == 3 and drift.boxes == 3
    assert drift.object_counts == [2, 1, 0]
    assert drift.boxes_per_frame[:3] == [1, 1, 1] and sum(drift.boxes_per_frame) == 3
    counts = decode_histograms(drift.histograms, len(DETECTION_FEATURES))
    assert counts.sum(axis=1).tolist() == [3, 3, 3, 3]
    # Scores 0.3, 0.9, 0.99 fall in bins 9, 28 and 31 of 32 equal-width bins.
    assert np.flatnonzero(counts[0]).tolist() == [9, 28, 31]
    assert window.close() is None  # reset after closing


def test_detection_drift_report_with_80_classes_fits_the_drift_cap() -> None:
    window = DetectionDriftWindow([f"class-{i}" for i in range(80)])
    rng = np.random.default_rng(0)
    for _ in range(300):
        boxes = []
        for _ in range(rng.integers(0, 40)):
            x, y = rng.uniform(0, 600), rng.uniform(0, 440)
            boxes.append(_box(x, y, x + rng.uniform(2, 40), y + rng.uniform(2, 40), int(rng.integers(0, 80)),
                              float(rng.uniform(0.25, 1))))
        window.add(boxes, 640, 480)
    detection = window.close()
    # The classification part as a 9-feature window of 300 frames beside it.
    counts = np.stack([rng.multinomial(300, np.full(32, 1 / 32)) for _ in range(9)])
    report = DriftReport(device_id="cam-1", window_seq=0, window_started_at=NOW, window_ended_at=NOW,
                         frames_seen=9000, frames=300, features=[f"feature_{i}" for i in range(9)],
                         histograms=encode_histograms(counts), means=[1.0] * 9, stds=[1.0] * 9,
                         class_counts=rng.multinomial(300, np.full(80, 1 / 80)).tolist(), local_score=1.0, detection=detection)
    raw = report.model_dump_json().encode()

    assert len(raw) < MAX_DRIFT_REPORT_BYTES
    parsed = parse_report("drift", raw, "cam-1")
    assert isinstance(parsed, DriftReport) and parsed.detection == detection
