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

from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.contract import PreprocessSpec
from agent.contract.drift import (
    HISTOGRAM_BINS,
    IMAGE_FEATURES,
    OUTPUT_FEATURES,
    DriftReference,
    FeatureReference,
    SequentialCalibration,
    projection_feature_names,
)
from agent.preprocess import preprocess
from agent.telemetry.drift import image_stats, model_view, output_stats
from cloud.monitor.stats import Cusum, evaluate_window

__all__ = ["build_reference", "feature_matrix", "histogram", "run_logits", "softmax"]


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
              streams: int = 8) -> SequentialCalibration:
    """Choose CUSUM ``k`` and ``h`` from clean windows drawn from held-out reference frames.

    ``k`` is the 99th percentile of clean window scores (at least 1); ``h`` is 1.5x the
    highest CUSUM excursion over the clean windows (split into ``streams`` runs), at least 3.
    """
    rng = np.random.default_rng(seed + 1)
    scores = []
    half = max(1, window_frames // 2)
    labels = len(reference.labels)
    for _ in range(windows):
        drawn = np.repeat(rng.integers(0, len(values), size=half), 2)
        counts = histogram(values[drawn], edges)
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
