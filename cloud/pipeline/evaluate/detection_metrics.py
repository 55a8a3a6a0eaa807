"""Detection metrics: COCO-style mAP@0.5 and mAP@0.5:0.95 (numpy only, pure).

Per image and class, predictions are matched greedily in descending score order to
the unmatched ground-truth box of highest IoU at or above the threshold; a match is a
true positive, anything else (including a second detection of an already matched
object) a false positive. AP is the area under the precision envelope sampled at
101 recall points (0, 0.01, ..., 1), as COCO does. mAP is the mean over classes
that have ground truth. No crowd/ignore regions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ImageBoxes:
    """One image's ground truth and predictions, boxes as (K, 4) x1, y1, x2, y2 in the same pixels."""

    image_id: str
    gt_boxes: npt.NDArray[np.floating[Any]]
    gt_classes: npt.NDArray[np.integer[Any]]
    pred_boxes: npt.NDArray[np.floating[Any]]
    pred_classes: npt.NDArray[np.integer[Any]]
    pred_scores: npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class DetectionMetrics:
    map_50: float
    map_50_95: float
    ap_50: dict[int, float] = field(default_factory=dict)
    ap_50_95: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"map_50": self.map_50, "map_50_95": self.map_50_95,
                "ap_50": {str(k): v for k, v in self.ap_50.items()},
                "ap_50_95": {str(k): v for k, v in self.ap_50_95.items()}}


def iou_matrix(a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): an (N, M) array."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def interpolated_ap(tp: npt.NDArray[np.bool_], scores: npt.NDArray[np.floating[Any]], num_gt: int) -> float:
    """101-point interpolated AP of one class from its predictions' TP flags and scores."""
    if num_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    hits = np.asarray(tp, dtype=np.float64)[order]
    tp_cum = np.cumsum(hits)
    fp_cum = np.cumsum(1.0 - hits)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    # Precision envelope: at each rank, the best precision at that recall or beyond.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    indices = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(indices < len(envelope), envelope[np.minimum(indices, len(envelope) - 1)], 0.0)
    return float(np.mean(sampled))


def _match(image: ImageBoxes, class_id: int, threshold: float) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], int]:
    gt = np.asarray(image.gt_boxes).reshape(-1, 4)[np.asarray(image.gt_classes) == class_id]
    mask = np.asarray(image.pred_classes) == class_id
    preds = np.asarray(image.pred_boxes).reshape(-1, 4)[mask]
    scores = np.asarray(image.pred_scores, dtype=np.float64)[mask]
    order = np.argsort(-scores, kind="mergesort")
    preds, scores = preds[order], scores[order]
    tp = np.zeros(len(preds), dtype=bool)
    if len(gt) and len(preds):
        ious = iou_matrix(preds, gt)
        taken = np.zeros(len(gt), dtype=bool)
        for i in range(len(preds)):
            candidates = np.where(taken, -1.0, ious[i])
            best = int(np.argmax(candidates))
            if candidates[best] >= threshold:
                taken[best] = True
                tp[i] = True
    return tp, scores, len(gt)


def evaluate_detections(images: Sequence[ImageBoxes]) -> DetectionMetrics:
    """mAP@0.5 and mAP@0.5:0.95 over ``images``, per class and overall (classes with ground truth)."""
    classes = sorted({int(c) for image in images for c in np.asarray(image.gt_classes).tolist()})
    ap_by_threshold: dict[float, dict[int, float]] = {}
    for threshold in IOU_THRESHOLDS:
        per_class: dict[int, float] = {}
        for class_id in classes:
            flags, scores, num_gt = [], [], 0
            for image in images:
                tp, image_scores, image_gt = _match(image, class_id, threshold)
                flags.append(tp)
                scores.append(image_scores)
                num_gt += image_gt
            per_class[class_id] = interpolated_ap(np.concatenate(flags) if flags else np.zeros(0, bool),
                                                  np.concatenate(scores) if scores else np.zeros(0), num_gt)
        ap_by_threshold[threshold] = per_class
    ap_50 = ap_by_threshold[0.5]
    ap_50_95 = {c: float(np.mean([ap_by_threshold[t][c] for t in IOU_THRESHOLDS])) for c in classes}
    return DetectionMetrics(
        map_50=float(np.mean(list(ap_50.values()))) if classes else 0.0,
        map_50_95=float(np.mean(list(ap_50_95.values()))) if classes else 0.0,
        ap_50=ap_50, ap_50_95=ap_50_95,
    )


def evaluate_by_slice(images: Sequence[ImageBoxes], slice_of: Callable[[ImageBoxes], str]) -> dict[str, DetectionMetrics]:
    """Metrics per slice (e.g. lighting, camera): ``slice_of`` names each image's slice."""
    groups: dict[str, list[ImageBoxes]] = defaultdict(list)
    for image in images:
        groups[slice_of(image)].append(image)
    return {key: evaluate_detections(group) for key, group in sorted(groups.items())}
