"""Detection drift without a broker: the reference builder, the detection test statistics, the device window."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.contract import (
    DetectionSpec,
    DriftReport,
    ModelArtifact,
    PackageFile,
    PackageManifest,
    PreprocessSpec,
    sha256_bytes,
    utc_now,
)
from agent.contract.drift import DETECTION_FEATURES, DriftReference, detection_feature_edges
from agent.contract.messages import MAX_DRIFT_REPORT_BYTES
from agent.infer.detect import Detection
from agent.telemetry.drift import AgentMonitoring, MonitoringConfig
from cloud.monitor.reference import DetectionFrames, build_detection_reference
from cloud.monitor.stats import DetectionCounts, binned_mean, detection_rows, evaluate_window

SPEC = PreprocessSpec(width=32, height=32, resize="stretch", interpolation="area")
LABELS = ["circle", "square", "triangle"]
W, H = 200, 150


def _box(cx: float, cy: float, side: float, class_id: int, score: float) -> Detection:
    return Detection(x1=cx - side / 2, y1=cy - side / 2, x2=cx + side / 2, y2=cy + side / 2, class_id=class_id,
                     label=LABELS[class_id], score=score)


def _scenes(seed: int, count: int, *, scale: float = 1.0, weights: tuple[float, ...] = (1, 1, 1),
            ) -> tuple[list[np.ndarray], list[list[Detection]]]:
    """Noise images and the boxes a detector might find on them: 1-4 objects, sides 16-56 px x ``scale``."""
    rng = np.random.default_rng(seed)
    p = np.asarray(weights, dtype=np.float64) / sum(weights)
    images, found = [], []
    for _ in range(count):
        images.append(rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8))
        found.append([_box(rng.uniform(40, 160), rng.uniform(30, 120), rng.uniform(16, 56) * scale,
                           int(rng.choice(3, p=p)), float(rng.uniform(0.3, 0.95)))
                      for _ in range(int(rng.integers(1, 5)))])
    return images, found


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    images, found = _scenes(0, 160)
    return build_detection_reference(images, found, LABELS, SPEC, window_frames=40, calibration_windows=100)


def _window(seed: int, frames: int = 40, **shift: object) -> DetectionCounts:
    images, found = _scenes(seed, frames, **shift)  # type: ignore[arg-type]
    return DetectionFrames.of(images, found, len(LABELS)).window(range(frames))


def test_reference_counts_boxes_objects_and_frames_on_the_fixed_edges(reference: DriftReference) -> None:
    detection = reference.detection
    assert detection is not None and detection.frames == reference.reference_size == 80
    assert [f.name for f in detection.features] == list(DETECTION_FEATURES)
    assert np.allclose([f.edges for f in detection.features], detection_feature_edges())
    boxes = sum(detection.object_counts)
    assert all(sum(f.counts) == boxes for f in detection.features)
    assert sum(detection.boxes_per_frame) == 80 and detection.boxes_per_frame[0] == 0  # every scene has an object
    assert sum(n * c for n, c in enumerate(detection.boxes_per_frame)) == boxes
    # Image features as for a classifier; no predicted-class counts or projection for a detector.
    assert reference.feature_names == ["luma_mean", "luma_std", "saturation_mean", "sharpness_log_lapvar",
                                       "noise_sigma", "clipped_fraction"]
    assert reference.class_counts == [] and reference.projection == []
    assert reference.calibration.clean_windows == 100 and reference.calibration.window_frames == 40
    assert DriftReference.from_bytes(reference.to_bytes()) == reference


def test_reference_contract_stays_backward_compatible_and_rejects_what_devices_cannot_bin(
        reference: DriftReference) -> None:
    document = json.loads(reference.to_bytes())
    classifier = {**document, "detection": None, "labels": ["a", "b", "c"]}
    del classifier["detection"]  # a file written before detection references existed
    assert DriftReference.from_bytes(json.dumps(classifier).encode()).detection is None
    with pytest.raises(ValueError, match="one entry per label"):
        DriftReference.from_bytes(json.dumps({**document, "labels": ["a", "b"]}).encode())
    moved = json.loads(reference.to_bytes())
    moved["detection"]["features"][1]["edges"] = [e * 2 for e in moved["detection"]["features"][1]["edges"]]
    with pytest.raises(ValueError, match="fixed detection edges"):
        DriftReference.from_bytes(json.dumps(moved).encode())


def test_reference_builder_refuses_too_few_images_or_unpaired_detections() -> None:
    images, found = _scenes(1, 70)
    with pytest.raises(ValueError, match="at least 64 images"):
        build_detection_reference(images[:63], found[:63], LABELS, SPEC)
    with pytest.raises(ValueError, match="69 lists of detections for 70 images"):
        build_detection_reference(images, found[:69], LABELS, SPEC)


def test_binned_mean_by_hand() -> None:
    counts = np.zeros(32)
    counts[[3, 5]] = [1, 3]  # box_score bins 3 and 5 of 32 equal bins: midpoints 3.5/32 and 5.5/32
    assert binned_mean(counts, 0) == pytest.approx((3.5 + 3 * 5.5) / 32 / 4, abs=1e-4)
    assert binned_mean(np.zeros(32), 0) is None


def test_clean_windows_pass_and_each_shift_names_its_feature(reference: DriftReference) -> None:
    assert reference.detection is not None
    clean = detection_rows(reference.detection, _window(7))
    assert [row[0] for row in clean] == [*DETECTION_FEATURES, "object_counts", "boxes_per_frame"]
    assert min(row[3] for row in clean) > 1e-4

    small = {row[0]: row for row in detection_rows(reference.detection, _window(8, scale=0.4))}
    assert small["box_size"][3] < 1e-10 and small["box_size"][5] < small["box_size"][6]  # window mean < reference
    assert small["object_counts"][3] > 1e-4

    triangles = {row[0]: row for row in detection_rows(reference.detection, _window(9, weights=(0.5, 0.5, 9)))}
    assert triangles["object_counts"][3] < 1e-10 and triangles["box_size"][3] > 1e-4


def test_evaluate_window_adds_the_detection_rows_under_one_holm_correction(reference: DriftReference) -> None:
    images, found = _scenes(10, 40, scale=0.4)
    from agent.telemetry.drift import image_stats, model_view
    from cloud.monitor.reference import histogram

    values = np.asarray([image_stats(model_view(image, SPEC)) for image in images])
    counts = histogram(values, reference.edges_array())
    detection = DetectionFrames.of(images, found, len(LABELS)).window(range(40))

    with_boxes = evaluate_window(reference, counts, [], detection=detection, min_frames=20)
    without = evaluate_window(reference, counts, [], min_frames=20)

    assert len(with_boxes.features) == len(without.features) + 6
    assert "box_size" in with_boxes.drifted_features and without.drifted_features == []
    assert with_boxes.score > reference.calibration.k + reference.calibration.h
    # Holm over 12 rows: the smallest raw p is multiplied by 12.
    smallest = min(with_boxes.features, key=lambda f: f.p_value)
    assert smallest.p_adjusted == pytest.approx(min(1.0, 12 * smallest.p_value))


def test_windows_merge_by_addition() -> None:
    a, b = _window(11), _window(12)
    merged = a + b
    assert (merged.histograms == a.histograms + b.histograms).all()
    assert merged.object_counts == [x + y for x, y in zip(a.object_counts, b.object_counts, strict=True)]
    assert sum(merged.boxes_per_frame) == 80


@dataclass(frozen=True)
class _Served:
    manifest: PackageManifest
    artifact: ModelArtifact


def test_agent_publishes_a_detection_window_with_boxes_within_the_report_cap(tmp_path: Path) -> None:
    """The agent's monitoring hook on a detection package (80 classes, crowded frames) against the report cap."""
    labels = [f"class-{i}" for i in range(80)]
    images, found = _scenes(13, 80)
    raw = build_detection_reference(images, found, labels, SPEC, window_frames=30, calibration_windows=20).to_bytes()
    (tmp_path / "drift_reference.json").write_bytes(raw)
    artifact = ModelArtifact(file="model.onnx", runtime="onnxruntime", precision="fp32")
    manifest = PackageManifest(
        package_id="det-1", model_name="det", model_version="v1", created_at=utc_now(), labels=labels,
        preprocessing=SPEC, hardware_profiles=["x86-64-avx2"], task="detection",
        detection=DetectionSpec(decoder="yolo_raw", input_width=32, input_height=32), artifacts=[artifact],
        drift_reference_file="drift_reference.json",
        files=[PackageFile(name="model.onnx", sha256="0" * 64, size_bytes=1),
               PackageFile(name="drift_reference.json", sha256=sha256_bytes(raw), size_bytes=len(raw))])
    published: list[DriftReport] = []
    monitoring = AgentMonitoring(MonitoringConfig(window_frames=300, window_s=3600, samples="off"),
                                 device_id="cam-1", package_dir=lambda pipeline, package_id: tmp_path,
                                 publish_drift=published.append, publish_sample=lambda *args: None,
                                 threaded=False)
    rng = np.random.default_rng(0)
    for second in range(300):
        crowd = tuple(Detection(x1=x, y1=y, x2=x + side, y2=y + side, class_id=int(rng.integers(80)), label="x",
                                score=float(rng.uniform(0.25, 1)))
                      for x, y, side in rng.uniform((0, 0, 2), (W - 40, H - 40, 40), size=(rng.integers(0, 40), 3)))
        monitoring.on_detections("cam", _Served(manifest, artifact), images[second % 80], crowd,
                                 now_s=float(second + 1))
    assert len(published) == 1
    report = published[0]
    assert report.detection is not None and report.detection.frames == report.frames == 300
    assert report.detection.boxes == sum(report.detection.object_counts) > 0
    assert report.class_counts == [] and len(report.features) == 6 and report.pipeline == "cam"
    assert len(report.to_bytes()) < MAX_DRIFT_REPORT_BYTES
