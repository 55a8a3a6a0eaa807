"""Object detection decoding: raw model output → boxes in the source frame's pixels.

Pure numpy. Three output layouts (the manifest's ``detection.decoder``):

* ``yolo_raw``: ``1 x (4+C) x N`` (YOLOv8/YOLO11 raw export): rows 0-3 are centre-x,
  centre-y, width, height in model-input pixels, rows 4.. the C class scores; no
  objectness; NMS is ours.
* ``nms_in_graph``: ``1 x N x 6``: x1, y1, x2, y2, score, class id in model-input
  pixels, already suppressed by the graph (rows past the real detections are
  padding with a score below threshold).
* ``yolov5``: ``1 x N x (5+C)``: centre-x, centre-y, width, height, objectness, then
  the C class scores; a box's score is objectness x its best class score.

Boxes are then mapped back through the preprocessing resize (letterbox, stretch or
centre crop) and clipped to the source frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import DetectionSpec
from agent.contract.preprocess import PreprocessSpec

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]

# Class-aware NMS in one pass: each class's boxes are shifted by class id x this
# offset, so boxes of different classes never overlap. Larger than any input size.
_CLASS_OFFSET = 8192.0


@dataclass(frozen=True)
class Detection:
    """One object: a box in source-frame pixels (x1, y1) top-left to (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Candidates:
    """Decoded boxes before suppression, in model-input pixels (x1, y1, x2, y2)."""

    xyxy: FloatArray
    scores: FloatArray
    class_ids: IntArray

    def select(self, keep: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Candidates:
        return Candidates(self.xyxy[keep], self.scores[keep], self.class_ids[keep])


def _sigmoid(values: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float32)


def _cxcywh_to_xyxy(boxes: FloatArray) -> FloatArray:
    # Centre and half size as (K, 2) pairs: three array operations per frame, not nine.
    centre, half = boxes[:, :2], boxes[:, 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def _drop_batch(output: npt.NDArray[np.generic], layout: str) -> FloatArray:
    array = np.asarray(output, dtype=np.float32)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"{layout}: expected a batch of one, got output shape {list(array.shape)}")
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{layout}: expected a 2-D or batch-of-one 3-D output, got shape {list(array.shape)}")
    return array


def decode_yolo_raw(output: npt.NDArray[np.generic], num_classes: int, *, score_threshold: float,
                    scores_are_logits: bool = False) -> Candidates:
    """Decode a ``1 x (4+C) x N`` output: each of the N columns is one candidate box.

    Raises:
        ValueError: the output does not have 4 + ``num_classes`` rows.
    """
    array = _drop_batch(output, "yolo_raw")
    if array.shape[0] != 4 + num_classes:
        hint = " (it looks transposed: N x (4+C))" if array.shape[1] == 4 + num_classes else ""
        raise ValueError(f"yolo_raw: expected {4 + num_classes} rows (4 box + {num_classes} classes), "
                         f"got output shape {list(array.shape)}{hint}")
    class_scores = array[4:]
    if scores_are_logits:
        class_scores = _sigmoid(class_scores)
    # Threshold on each column's best score first, then find the class of the few kept.
    best = class_scores.max(axis=0)
    columns = np.flatnonzero(best > score_threshold)
    class_ids = class_scores[:, columns].argmax(axis=0)
    return Candidates(_cxcywh_to_xyxy(array[:4, columns].T), best[columns].astype(np.float32),
                      class_ids.astype(np.int64))


def decode_yolov5(output: npt.NDArray[np.generic], num_classes: int, *, score_threshold: float,
                  scores_are_logits: bool = False) -> Candidates:
    """Decode a ``1 x N x (5+C)`` output: box, objectness, class scores per row.

    Raises:
        ValueError: the output does not have 5 + ``num_classes`` columns.
    """
    array = _drop_batch(output, "yolov5")
    if array.shape[1] != 5 + num_classes:
        raise ValueError(f"yolov5: expected {5 + num_classes} columns (4 box + objectness + {num_classes} classes), "
                         f"got output shape {list(array.shape)}")
    objectness, class_scores = array[:, 4], array[:, 5:]
    if scores_are_logits:
        objectness, class_scores = _sigmoid(objectness), _sigmoid(class_scores)
    class_ids = np.argmax(class_scores, axis=1)
    scores = objectness * class_scores[np.arange(array.shape[0]), class_ids]
    keep = scores > score_threshold
    return Candidates(_cxcywh_to_xyxy(array[keep, :4]), scores[keep].astype(np.float32),
                      class_ids[keep].astype(np.int64))


def decode_nms_in_graph(output: npt.NDArray[np.generic], num_classes: int, *, score_threshold: float) -> Candidates:
    """Decode a ``1 x N x 6`` output (x1, y1, x2, y2, score, class).

    Raises:
        ValueError: not 6 columns, or a kept row names a class outside the label list.
    """
    array = _drop_batch(output, "nms_in_graph")
    if array.shape[1] != 6:
        raise ValueError(f"nms_in_graph: expected 6 columns (x1, y1, x2, y2, score, class), "
                         f"got output shape {list(array.shape)}")
    keep = array[:, 4] > score_threshold
    kept = array[keep]
    class_ids = np.rint(kept[:, 5]).astype(np.int64)
    if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(f"nms_in_graph: class ids {sorted(set(class_ids.tolist()))} outside 0..{num_classes - 1}")
    return Candidates(np.ascontiguousarray(kept[:, :4]), kept[:, 4].copy(), class_ids)


def box_iou(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one (4,) x1y1x2y2 box with each row of ``boxes`` (M, 4)."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    intersection = inter_w * inter_h
    area = max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - intersection
    return np.asarray(np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0), dtype=np.float32)


# Up to this many candidates NMS computes their pairwise IoU matrix in one vectorised step
# (n x n float64: 2 MB at 512); beyond it, one IoU row per kept box, to bound memory.
_NMS_MATRIX_MAX = 512


def _iou_rows(columns: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pairwise IoU of n x1y1x2y2 boxes given as (4, n) contiguous columns, the same arithmetic as :func:`box_iou`.

    Each coordinate is a contiguous column and every step an (n, n) array written in
    place: numpy's cost here is per call and per inner loop, so (n, n, 2) corner pairs,
    whose inner loops are two elements long, are several times slower at the 30-60
    candidates a trained detector leaves above its threshold.
    """
    x1, y1, x2, y2 = columns
    overlap_w = np.minimum(x2[:, None], x2[None, :])
    overlap_w -= np.maximum(x1[:, None], x1[None, :])
    np.maximum(overlap_w, 0.0, out=overlap_w)
    overlap_h = np.minimum(y2[:, None], y2[None, :])
    overlap_h -= np.maximum(y1[:, None], y1[None, :])
    np.maximum(overlap_h, 0.0, out=overlap_h)
    intersection = overlap_w
    intersection *= overlap_h
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    union = areas[:, None] + areas[None, :]
    union -= intersection
    # A zero union means two empty boxes, whose intersection is zero too: 0 / tiny = IoU 0.
    np.maximum(union, np.finfo(np.float64).tiny, out=union)
    intersection /= union
    return np.asarray(intersection, dtype=np.float64)


def _greedy_over_matrix(suppresses: npt.NDArray[np.bool_], max_detections: int) -> npt.NDArray[np.intp]:
    """Greedy NMS over a score-sorted (n, n) "row suppresses column" matrix: the kept ranks.

    Each row becomes one Python integer bitmask, so a step (drop what the kept box
    suppresses, jump to the next survivor) is a few integer operations instead of four
    numpy calls; at the dozen boxes a frame keeps, those calls were most of NMS's time.
    """
    count = len(suppresses)
    row_bytes = (count + 7) // 8
    packed = np.packbits(suppresses, axis=1, bitorder="little").tobytes()
    alive = (1 << count) - 1
    kept: list[int] = []
    rank = 0
    while True:
        kept.append(rank)
        if len(kept) >= max_detections:
            break
        row = int.from_bytes(packed[rank * row_bytes:(rank + 1) * row_bytes], "little")
        # Survivors: not suppressed by any kept box, and after this one in score order.
        alive &= ~row & ~((1 << (rank + 1)) - 1)
        if not alive:
            break
        rank = (alive & -alive).bit_length() - 1
    return np.asarray(kept, dtype=np.intp)


def nms(xyxy: FloatArray, scores: FloatArray, class_ids: IntArray, *, iou_threshold: float,
        max_detections: int) -> npt.NDArray[np.intp]:
    """Class-aware greedy NMS: indices of kept boxes, highest score first, at most ``max_detections``.

    A box is suppressed by a higher-scoring kept box of the same class whose IoU with it
    exceeds ``iou_threshold``; classes are kept apart by offsetting each class's boxes by
    its id x a constant larger than any coordinate. For the usual few dozen candidates,
    every pairwise IoU is computed at once and the greedy pass walks bitmasks of that
    matrix's rows; for many candidates, the loop runs once per *kept* box, each step a
    vectorised IoU against the rest.
    """
    if len(scores) == 0 or max_detections < 1:
        return np.zeros(0, dtype=np.intp)
    if len(scores) == 1:
        return np.zeros(1, dtype=np.intp)
    # Stable sort: equal scores keep their input order (so results are deterministic).
    order = np.argsort(-scores, kind="stable")
    # Classes apart: each class's boxes move by its id x a constant larger than any
    # coordinate, so boxes of different classes never overlap and IoU alone decides.
    shifted = xyxy[order].astype(np.float64)
    shifted += class_ids[order].astype(np.float64)[:, None] * _CLASS_OFFSET
    if len(order) <= _NMS_MATRIX_MAX:
        return order[_greedy_over_matrix(_iou_rows(np.ascontiguousarray(shifted.T)) > iou_threshold,
                                         max_detections)]
    kept: list[int] = []
    remaining = np.arange(len(order))
    while len(remaining) and len(kept) < max_detections:
        best = remaining[0]
        kept.append(int(order[best]))
        rest = remaining[1:]
        if not len(rest):
            break
        overlaps = box_iou(shifted[best], shifted[rest])
        remaining = rest[overlaps <= iou_threshold]
    return np.asarray(kept, dtype=np.intp)


def input_to_source(xyxy: FloatArray, spec: PreprocessSpec, source_width: int, source_height: int) -> FloatArray:
    """Map boxes from model-input pixels back to the source frame (undo the resize), clipped to it."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    if spec.resize == "letterbox":
        new_w, new_h, pad_x, pad_y = spec.letterbox(source_width, source_height)
        scale_x, scale_y = new_w / source_width, new_h / source_height
        offset_x, offset_y = float(pad_x), float(pad_y)
        crop_x = crop_y = 0.0
    elif spec.resize == "center_crop":
        crop_w, crop_h, crop_x, crop_y = _centre_crop(spec, source_width, source_height)
        scale_x, scale_y = spec.width / crop_w, spec.height / crop_h
        offset_x = offset_y = 0.0
    else:
        scale_x, scale_y = spec.width / source_width, spec.height / source_height
        offset_x = offset_y = crop_x = crop_y = 0.0
    # All four coordinates in one pass (x1, y1, x2, y2 against per-column constants): this
    # runs for every frame, and at a handful of boxes each numpy call costs more than its work.
    offset = np.array([offset_x, offset_y, offset_x, offset_y])
    scale = np.array([scale_x, scale_y, scale_x, scale_y])
    out = (boxes - offset) / scale + np.array([crop_x, crop_y, crop_x, crop_y])
    np.maximum(out, 0.0, out=out)
    np.minimum(out, np.array([source_width, source_height, source_width, source_height], dtype=np.float64), out=out)
    return np.asarray(out, dtype=np.float32)


def source_to_input(xyxy: FloatArray, spec: PreprocessSpec, source_width: int, source_height: int) -> FloatArray:
    """Map boxes from source-frame pixels to model-input pixels (the resize ``preprocess`` applies).

    The inverse of :func:`input_to_source` (before its clipping): use it to turn
    ground-truth boxes into training targets for a letterboxed model.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(boxes)
    if spec.resize == "letterbox":
        new_w, new_h, pad_x, pad_y = spec.letterbox(source_width, source_height)
        out[:, [0, 2]] = boxes[:, [0, 2]] * (new_w / source_width) + pad_x
        out[:, [1, 3]] = boxes[:, [1, 3]] * (new_h / source_height) + pad_y
    elif spec.resize == "center_crop":
        crop_w, crop_h, crop_x, crop_y = _centre_crop(spec, source_width, source_height)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - crop_x) * (spec.width / crop_w)
        out[:, [1, 3]] = (boxes[:, [1, 3]] - crop_y) * (spec.height / crop_h)
    else:
        out[:, [0, 2]] = boxes[:, [0, 2]] * (spec.width / source_width)
        out[:, [1, 3]] = boxes[:, [1, 3]] * (spec.height / source_height)
    return out.astype(np.float32)


def _centre_crop(spec: PreprocessSpec, source_width: int, source_height: int) -> tuple[int, int, int, int]:
    """(crop width, crop height, x0, y0) exactly as ``agent.preprocess`` crops."""
    target_ratio = spec.width / spec.height
    if source_width / source_height > target_ratio:
        crop_w = round(source_height * target_ratio)
        return crop_w, source_height, (source_width - crop_w) // 2, 0
    crop_h = round(source_width / target_ratio)
    return source_width, crop_h, 0, (source_height - crop_h) // 2



def decode(output: npt.NDArray[np.generic], detection: DetectionSpec, num_classes: int) -> Candidates:
    """Decode ``output`` with the manifest's decoder and score threshold (input pixels, not suppressed).

    Raises:
        ValueError: the output's shape does not fit the decoder and the number of classes.
    """
    logits = detection.scores == "logits"
    if detection.decoder == "yolo_raw":
        return decode_yolo_raw(output, num_classes, score_threshold=detection.score_threshold,
                               scores_are_logits=logits)
    if detection.decoder == "yolov5":
        return decode_yolov5(output, num_classes, score_threshold=detection.score_threshold,
                             scores_are_logits=logits)
    return decode_nms_in_graph(output, num_classes, score_threshold=detection.score_threshold)


def check_output_shape(shape: tuple[int, ...], detection: DetectionSpec, num_classes: int) -> str | None:
    """What is wrong with a detection model's output shape for its decoder, or None when it fits."""
    expected = {"yolo_raw": "1 x (4+C) x N", "nms_in_graph": "1 x N x 6", "yolov5": "1 x N x (5+C)"}[detection.decoder]
    fits = len(shape) == 3 and shape[0] == 1 and (
        (detection.decoder == "yolo_raw" and shape[1] == 4 + num_classes)
        or (detection.decoder == "nms_in_graph" and shape[2] == 6)
        or (detection.decoder == "yolov5" and shape[2] == 5 + num_classes))
    if fits:
        return None
    return f"{detection.decoder} expects output {expected} with C={num_classes}; the model outputs {list(shape)}"


def detect(output: npt.NDArray[np.generic], *, detection: DetectionSpec, labels: list[str],
           preprocessing: PreprocessSpec, source_width: int, source_height: int) -> list[Detection]:
    """Raw output of one frame → detections in source-frame pixels, highest score first.

    Decode, keep scores above the threshold, class-aware NMS (skipped for
    ``nms_in_graph``, whose graph already did it), keep ``max_detections``, undo the
    resize and clip to the frame. Boxes that end up empty after clipping are dropped.

    Raises:
        ValueError: the output's shape does not fit the decoder.
    """
    candidates = decode(output, detection, len(labels))
    if detection.decoder == "nms_in_graph":
        order = np.argsort(-candidates.scores, kind="stable")[: detection.max_detections]
    else:
        order = nms(candidates.xyxy, candidates.scores, candidates.class_ids,
                    iou_threshold=detection.iou_threshold, max_detections=detection.max_detections)
    kept = candidates.select(order)
    boxes = input_to_source(kept.xyxy, preprocessing, source_width, source_height)
    # Boxes that clipping left empty are dropped; rounding is done on the arrays, not per value.
    present = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    corners = np.round(boxes[present].astype(np.float64), 2).tolist()
    scores = np.round(kept.scores[present].astype(np.float64), 5).tolist()
    # Positional: a frozen dataclass built by keyword costs a third more, per box, per frame.
    return [Detection(x1, y1, x2, y2, class_id, labels[class_id], score)
            for (x1, y1, x2, y2), class_id, score in zip(corners, kept.class_ids[present].tolist(), scores,
                                                          strict=True)]
