"""Build a package's drift reference from reference images and the model's outputs.

The per-frame features come from :mod:`agent.telemetry.drift` (the device's own
code), applied to the model's view of each image, so the reference and the device
cannot disagree about what a feature means.

Half of the reference images fix the histogram edges (31 interior quantiles) and
counts; the other half make clean windows on which the sequential test is
calibrated. Consecutive video frames are correlated even after subsampling, so
every calibration window repeats each drawn frame twice (half the effective sample
size of its nominal length): thresholds err towards fewer false alarms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.contract import PreprocessSpec
from agent.contract.drift import (
    DETECTION_FEATURES,
    HISTOGRAM_BINS,
    IMAGE_FEATURES,
    OUTPUT_FEATURES,
    DetectionReference,
    DriftReference,
    FeatureReference,
    SequentialCalibration,
    detection_feature_edges,
    projection_feature_names,
)
from agent.contract.manifest import DetectionSpec
from agent.infer.detect import Detection, detect
from agent.preprocess import preprocess
from agent.telemetry.detection_drift import box_features
from agent.telemetry.drift import image_stats, model_view, output_stats
from cloud.monitor.stats import Cusum, DetectionCounts, evaluate_window

__all__ = ["DetectionFrames", "build_detection_reference", "build_reference", "detections_from_outputs",
           "feature_matrix", "histogram", "run_detections", "run_logits", "softmax"]


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def run_logits(onnx_path: Path, images_bgr: list[npt.NDArray[np.uint8]], spec: PreprocessSpec,
               batch_size: int = 64) -> npt.NDArray[np.float32]:
    """The model's raw outputs for each image, with the agent's preprocessing."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = []
    for start in range(0, len(images_bgr), batch_size):
        batch = np.concatenate([preprocess(image, spec) for image in images_bgr[start : start + batch_size]])
        outputs.append(np.asarray(session.run(None, {name: batch})[0], dtype=np.float32))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def feature_matrix(views_bgr: list[npt.NDArray[np.uint8]], logits: npt.NDArray[np.floating],
                   projection: npt.NDArray[np.float64], projection_mean: npt.NDArray[np.float64],
                   activation: str = "softmax", image_features: npt.NDArray[np.float64] | None = None,
                   ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """(N, features) in reference order and the predicted class of each image.

    ``image_features`` (N, 6) replaces the image statistics computed from the views: for
    device samples, whose statistics the device computed on the raw frame before JPEG.
    """
    probabilities = softmax(logits) if activation == "softmax" else np.asarray(logits, dtype=np.float64)
    rows, classes = [], []
    for index, (view, row_logits, row_p) in enumerate(zip(views_bgr, logits, probabilities, strict=True)):
        outputs, predicted = output_stats(row_p)
        projected = projection @ (np.asarray(row_logits, dtype=np.float64) - projection_mean)
        stats = image_stats(view) if image_features is None else np.asarray(image_features[index], dtype=np.float64)
        rows.append(np.concatenate([stats, outputs, projected]))
        classes.append(predicted)
    return np.asarray(rows, dtype=np.float64), np.asarray(classes, dtype=np.int64)


def histogram(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts of (N, F) values over per-feature interior edges (F, 31): shape (F, 32)."""
    counts = np.zeros((edges.shape[0], HISTOGRAM_BINS), dtype=np.int64)
    for index in range(edges.shape[0]):
        bins = np.searchsorted(edges[index], values[:, index], side="right")
        counts[index] = np.bincount(bins, minlength=HISTOGRAM_BINS)[:HISTOGRAM_BINS]
    return counts


def build_reference(
    images_bgr: list[npt.NDArray[np.uint8]],
    logits: npt.NDArray[np.floating],
    labels: list[str],
    spec: PreprocessSpec,
    *,
    activation: str = "softmax",
    projection_dims: int = 4,
    window_frames: int = 100,
    calibration_windows: int = 400,
    seed: int = 0,
    source: str = "",
    image_features: npt.NDArray[np.float64] | None = None,
) -> DriftReference:
    """A reference from images the model should see in service (e.g. the validation split).

    Raises:
        ValueError: fewer than 64 images, or logits that do not match the labels.
    """
    if len(images_bgr) < 64:
        raise ValueError(f"a drift reference needs at least 64 images, got {len(images_bgr)}")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (len(images_bgr), len(labels)):
        raise ValueError(f"logits have shape {logits.shape}, expected {(len(images_bgr), len(labels))}")
    views = [model_view(image, spec) for image in images_bgr]
    # PCA of the logits: the projection devices apply (a linear map, a few floats).
    projection_mean = logits.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov((logits - projection_mean).T))
    dims = min(projection_dims, len(labels))
    projection = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dims]].T
    values, classes = feature_matrix(views, logits, projection, projection_mean, activation, image_features)
    names = [*IMAGE_FEATURES, *OUTPUT_FEATURES, *projection_feature_names(dims)]

    order = np.random.default_rng(seed).permutation(len(views))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    quantiles = np.arange(1, HISTOGRAM_BINS) / HISTOGRAM_BINS
    edges = np.quantile(values[half_a], quantiles, axis=0).T  # (F, 31)
    counts = histogram(values[half_a], edges)
    class_counts = np.bincount(classes[half_a], minlength=len(labels))
    features = [
        FeatureReference(name=name, edges=[float(e) for e in edges[i]], counts=[int(c) for c in counts[i]],
                         mean=float(values[half_a, i].mean()), std=float(values[half_a, i].std()))
        for i, name in enumerate(names)
    ]
    draft = DriftReference(labels=labels, features=features, class_counts=[int(c) for c in class_counts],
                           projection_mean=[float(v) for v in projection_mean],
                           projection=[[float(v) for v in row] for row in projection],
                           reference_size=len(half_a), source=source[:256])
    calibration = calibrate(draft, values[half_b], classes[half_b], edges, window_frames=window_frames,
                            windows=calibration_windows, seed=seed)
    return draft.model_copy(update={"calibration": calibration})


def calibrate(reference: DriftReference, values: npt.NDArray[np.float64], classes: npt.NDArray[np.int64],
              edges: npt.NDArray[np.float64], *, window_frames: int, windows: int, seed: int = 0,
              streams: int = 8, detections: DetectionFrames | None = None) -> SequentialCalibration:
    """Choose CUSUM ``k`` and ``h`` from clean windows drawn from held-out reference frames.

    ``k`` is the 99th percentile of clean window scores (at least 1); ``h`` is 1.5x the
    highest CUSUM excursion over the clean windows (split into ``streams`` runs), at least 3.
    ``detections`` (a detection package) are the same frames' boxes; each window then
    carries its drawn frames' boxes, so ``k`` covers how boxes of one frame move together.
    """
    rng = np.random.default_rng(seed + 1)
    scores = []
    half = max(1, window_frames // 2)
    labels = len(reference.labels)
    for _ in range(windows):
        drawn = np.repeat(rng.integers(0, len(values), size=half), 2)
        counts = histogram(values[drawn], edges)
        if detections is not None:
            scores.append(evaluate_window(reference, counts, detection=detections.window(drawn)).score)
            continue
        class_counts = np.bincount(classes[drawn], minlength=labels).tolist()
        scores.append(evaluate_window(reference, counts, class_counts).score)
    k = max(1.0, float(np.quantile(scores, 0.99)))
    base = SequentialCalibration(k=k, h=1.0, window_frames=window_frames)
    peak = 0.0
    for run in np.array_split(np.asarray(scores), streams):
        cusum = Cusum(base)
        for score in run:
            cusum.state.statistic = max(0.0, cusum.state.statistic + score - k)
            peak = max(peak, cusum.state.statistic)
    h = max(3.0, 1.5 * peak)
    alarms = 0
    for run in np.array_split(np.asarray(scores), streams):
        cusum = Cusum(base.model_copy(update={"h": h}))
        alarms += sum(1 for score in run if cusum.step(float(score)) == "open")
    return SequentialCalibration(k=round(k, 4), h=round(h, 4), window_frames=window_frames, clean_windows=windows,
                                 clean_alarms=alarms)


# --- detection packages -----------------------------------------------------------
def detections_from_outputs(outputs: npt.NDArray[np.generic], images_bgr: list[npt.NDArray[np.uint8]],
                            detection: DetectionSpec, labels: list[str], spec: PreprocessSpec) -> list[list[Detection]]:
    """Each image's boxes from the raw outputs (N, ...), with the device's decoder and thresholds."""
    return [detect(outputs[index : index + 1], detection=detection, labels=labels, preprocessing=spec,
                   source_width=image.shape[1], source_height=image.shape[0])
            for index, image in enumerate(images_bgr)]


def run_detections(onnx_path: Path, images_bgr: list[npt.NDArray[np.uint8]], spec: PreprocessSpec,
                   detection: DetectionSpec, labels: list[str]) -> list[list[Detection]]:
    """The detector's boxes on each image in frame pixels, as the device finds them (ONNX Runtime, one at a time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [np.asarray(session.run(None, {name: preprocess(image, spec)})[0]) for image in images_bgr]
    return detections_from_outputs(np.concatenate(outputs), images_bgr, detection, labels, spec)


@dataclass(frozen=True)
class DetectionFrames:
    """Per-frame boxes as drift features: ``boxes[i]`` is frame i's (boxes, 4) features, ``classes[i]`` their classes."""

    boxes: list[npt.NDArray[np.float64]]
    classes: list[npt.NDArray[np.int64]]
    labels: int

    @classmethod
    def of(cls, images_bgr: list[npt.NDArray[np.uint8]], detections: Sequence[Sequence[Detection]],
           labels: int) -> DetectionFrames:
        return cls([box_features(found, image.shape[1], image.shape[0]) for image, found in
                    zip(images_bgr, detections, strict=True)],
                   [np.asarray([d.class_id for d in found], dtype=np.int64) for found in detections], labels)

    def window(self, frames: npt.NDArray[np.intp] | Sequence[int]) -> DetectionCounts:
        """The counts a device window holding these frames would report (binned as the device bins)."""
        edges = detection_feature_edges()
        boxes = np.concatenate([self.boxes[i] for i in frames] or [np.zeros((0, len(DETECTION_FEATURES)))])
        histograms = histogram(boxes, edges) if len(boxes) else np.zeros((len(DETECTION_FEATURES), HISTOGRAM_BINS),
                                                                         dtype=np.int64)
        classes = np.concatenate([self.classes[i] for i in frames] or [np.zeros(0, dtype=np.int64)])
        per_frame = np.bincount([min(len(self.classes[i]), HISTOGRAM_BINS - 1) for i in frames],
                                minlength=HISTOGRAM_BINS)
        return DetectionCounts(histograms, np.bincount(classes, minlength=self.labels).tolist(), per_frame.tolist())


def build_detection_reference(
    images_bgr: list[npt.NDArray[np.uint8]],
    detections: Sequence[Sequence[Detection]],
    labels: list[str],
    spec: PreprocessSpec,
    *,
    window_frames: int = 100,
    calibration_windows: int = 400,
    seed: int = 0,
    source: str = "",
) -> DriftReference:
    """A detection package's reference from held-out images and the packaged detector's boxes on them.

    The image features get quantile edges as for a classifier; the box features use
    the fixed detection edges. Half of the images make the expected counts, the other
    half the clean windows the CUSUM constants are calibrated on.

    Raises:
        ValueError: fewer than 64 images, or not one list of detections per image.
    """
    if len(images_bgr) < 64:
        raise ValueError(f"a drift reference needs at least 64 images, got {len(images_bgr)}")
    if len(detections) != len(images_bgr):
        raise ValueError(f"{len(detections)} lists of detections for {len(images_bgr)} images")
    values = np.asarray([image_stats(model_view(image, spec)) for image in images_bgr], dtype=np.float64)
    frames = DetectionFrames.of(images_bgr, detections, len(labels))
    order = np.random.default_rng(seed).permutation(len(images_bgr))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    quantiles = np.arange(1, HISTOGRAM_BINS) / HISTOGRAM_BINS
    edges = np.quantile(values[half_a], quantiles, axis=0).T  # (6, 31)
    counts = histogram(values[half_a], edges)
    features = [
        FeatureReference(name=name, edges=[float(e) for e in edges[i]], counts=[int(c) for c in counts[i]],
                         mean=float(values[half_a, i].mean()), std=float(values[half_a, i].std()))
        for i, name in enumerate(IMAGE_FEATURES)
    ]
    expected = frames.window(half_a)
    boxes = np.concatenate([frames.boxes[i] for i in half_a])
    fixed = detection_feature_edges()
    box_features_ref = [
        FeatureReference(name=name, edges=[float(e) for e in fixed[i]],
                         counts=[int(c) for c in expected.histograms[i]],
                         mean=float(boxes[:, i].mean()) if len(boxes) else 0.0,
                         std=float(boxes[:, i].std()) if len(boxes) else 0.0)
        for i, name in enumerate(DETECTION_FEATURES)
    ]
    detection = DetectionReference(features=box_features_ref, object_counts=expected.object_counts,
                                   boxes_per_frame=expected.boxes_per_frame, frames=len(half_a))
    draft = DriftReference(labels=labels, features=features, reference_size=len(half_a), source=source[:256],
                           detection=detection)
    calibration = calibrate(draft, values[half_b], np.full(len(half_b), -1, dtype=np.int64), edges,
                            window_frames=window_frames, windows=calibration_windows, seed=seed,
                            detections=DetectionFrames([frames.boxes[i] for i in half_b],
                                                       [frames.classes[i] for i in half_b], len(labels)))
    return draft.model_copy(update={"calibration": calibration})
