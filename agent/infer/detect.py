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

import functools
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
    """Decoded boxes before suppression, highest score first (stable: ties keep output order).

    ``columns`` is (4, K): the x1, y1, x2, y2 rows in model-input pixels. Every later step
    (pairwise IoU, mapping back to the frame) works a coordinate at a time, so boxes are
    kept as contiguous coordinate rows and sorted once, here.
    """

    columns: FloatArray
    scores: FloatArray
    class_ids: IntArray

    def select(self, keep: npt.NDArray[np.intp] | slice) -> Candidates:
        return Candidates(self.columns[:, keep], self.scores[keep], self.class_ids[keep])


def _sigmoid(values: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float32)


# x1 = cx - w/2, y1 = cy - h/2, x2 = cx + w/2, y2 = cy + h/2 as one product. Each product
# is exact (a coordinate times 1, 0 or a power of two) and the zeros add nothing, so the
# one rounding is that of cx -/+ w/2, as when written out; one call instead of eight.
_CORNERS_FROM_CENTRE_SIZE = np.array([[1, 0, -0.5, 0], [0, 1, 0, -0.5], [1, 0, 0.5, 0], [0, 1, 0, 0.5]],
                                     dtype=np.float32)


def _centre_size_to_corners(centre_size: FloatArray) -> FloatArray:
    """(4, K) rows of centre-x, centre-y, width, height -> (4, K) C-ordered rows of x1, y1, x2, y2.

    C order matters: a fancy-indexed input is Fortran-ordered, and every later (n, n)
    step over its rows runs several times slower on strided memory.
    """
    return np.ascontiguousarray(_CORNERS_FROM_CENTRE_SIZE @ np.asarray(centre_size, dtype=np.float32))


def _by_score(scores: FloatArray) -> npt.NDArray[np.intp]:
    # Stable: equal scores keep their output order, so results are deterministic.
    return np.argsort(-scores, kind="stable")


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
    # Threshold on each column's best score first, then sort the few kept and gather
    # their rows once (C-ordered, unlike a fancy index on the second axis).
    best = class_scores.max(axis=0)
    columns = (best > score_threshold).nonzero()[0]
    scores = best[columns]
    order = _by_score(scores)
    # The sigmoid keeps the order of a column's scores, so its class is the raw rows' argmax.
    picked = array.take(columns[order], axis=1)
    return Candidates(_centre_size_to_corners(picked[:4]), scores[order].astype(np.float32, copy=False),
                      picked[4:].argmax(axis=0).astype(np.int64, copy=False))


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
    rows = np.flatnonzero(scores > score_threshold)
    rows = rows[_by_score(scores[rows])]
    return Candidates(_centre_size_to_corners(array[rows, :4].T), scores[rows].astype(np.float32, copy=False),
                      class_ids[rows].astype(np.int64, copy=False))


def decode_nms_in_graph(output: npt.NDArray[np.generic], num_classes: int, *, score_threshold: float) -> Candidates:
    """Decode a ``1 x N x 6`` output (x1, y1, x2, y2, score, class).

    Raises:
        ValueError: not 6 columns, or a kept row names a class outside the label list.
    """
    array = _drop_batch(output, "nms_in_graph")
    if array.shape[1] != 6:
        raise ValueError(f"nms_in_graph: expected 6 columns (x1, y1, x2, y2, score, class), "
                         f"got output shape {list(array.shape)}")
    rows = np.flatnonzero(array[:, 4] > score_threshold)
    kept = array[rows[_by_score(array[rows, 4])]]
    class_ids = np.rint(kept[:, 5]).astype(np.int64)
    if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(f"nms_in_graph: class ids {sorted(set(class_ids.tolist()))} outside 0..{num_classes - 1}")
    return Candidates(np.ascontiguousarray(kept[:, :4].T), kept[:, 4].copy(), class_ids)


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
# (a few n x n float64 arrays: 2 MB each at 512); beyond it, one IoU row per kept box.
_NMS_MATRIX_MAX = 512


def _suppression_matrix(columns: npt.NDArray[np.float64], iou_threshold: float) -> npt.NDArray[np.bool_]:
    """``[i, j]``: box i overlaps box j by IoU over ``iou_threshold``; boxes as (4, n) x1, y1, x2, y2 rows.

    The same arithmetic as :func:`box_iou`, compared without the division (IoU > t is
    intersection > t x union; an empty union has an empty intersection, so never). The
    x and y pairs are computed together as (2, n, n) arrays whose inner loops are n long:
    numpy's cost at the 30-60 candidates a trained detector leaves is per call, and a
    decode that runs right after inference finds little of it in the caches, so fewer
    calls is what makes it faster.
    """
    low, high = columns[:2], columns[2:]
    overlap = np.minimum(high[:, :, None], high[:, None, :])
    overlap -= np.maximum(low[:, :, None], low[:, None, :])
    np.maximum(overlap, 0.0, out=overlap)
    intersection = overlap[0] * overlap[1]
    size = high - low
    np.maximum(size, 0.0, out=size)
    areas = size[0] * size[1]
    union = areas[:, None] + areas[None, :]
    union -= intersection
    union *= iou_threshold
    return np.asarray(intersection > union)


def _greedy_over_matrix(suppresses: npt.NDArray[np.bool_], max_detections: int) -> npt.NDArray[np.intp]:
    """Greedy NMS over a score-sorted (n, n) "row suppresses column" matrix: the kept ranks.

    Each row becomes one Python integer bitmask, so a step (drop what the kept box
    suppresses, jump to the next survivor) is a few integer operations instead of four
    numpy calls; at the handful of boxes a frame keeps, those calls were most of NMS's time.
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


def _nms_sorted(columns: FloatArray, class_ids: IntArray, *, iou_threshold: float,
                max_detections: int) -> npt.NDArray[np.intp]:
    """Class-aware greedy NMS over boxes already sorted by score: the kept positions, in order."""
    count = columns.shape[1]
    if count == 0 or max_detections < 1:
        return np.zeros(0, dtype=np.intp)
    if count == 1:
        return np.zeros(1, dtype=np.intp)
    # Classes apart: each class's boxes move by its id x a constant larger than any
    # coordinate, so boxes of different classes never overlap and IoU alone decides.
    # float64 holds the shifted float32 coordinates and their differences exactly.
    shifted = np.add(columns, class_ids * _CLASS_OFFSET, dtype=np.float64)
    if count <= _NMS_MATRIX_MAX:
        return _greedy_over_matrix(_suppression_matrix(shifted, iou_threshold), max_detections)
    boxes = np.ascontiguousarray(shifted.T)
    kept: list[int] = []
    remaining = np.arange(count)
    while len(remaining) and len(kept) < max_detections:
        best = int(remaining[0])
        kept.append(best)
        rest = remaining[1:]
        if not len(rest):
            break
        remaining = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(kept, dtype=np.intp)


def nms(xyxy: FloatArray, scores: FloatArray, class_ids: IntArray, *, iou_threshold: float,
        max_detections: int) -> npt.NDArray[np.intp]:
    """Class-aware greedy NMS: indices of kept boxes, highest score first, at most ``max_detections``.

    A box is suppressed by a higher-scoring kept box of the same class whose IoU with it
    exceeds ``iou_threshold``. For the usual few dozen candidates, every pairwise IoU is
    computed at once and the greedy pass walks bitmasks of that matrix's rows; for many
    candidates, the loop runs once per *kept* box, each step a vectorised IoU against
    the rest.
    """
    order = _by_score(np.asarray(scores))
    boxes = np.asarray(xyxy).reshape(-1, 4)[order]
    kept = _nms_sorted(np.ascontiguousarray(boxes.T), np.asarray(class_ids)[order], iou_threshold=iou_threshold,
                       max_detections=max_detections)
    return order[kept]


@functools.lru_cache(maxsize=256)
def _source_mapping(spec: PreprocessSpec, source_width: int,
                    source_height: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(scale, shift, frame) as (4, 1) columns for x1, y1, x2, y2: source = input x scale + shift, within frame.

    Cached: a camera's frame size and its model's preprocessing stay the same from frame to
    frame (the arrays are never written to).
    """
    if spec.resize == "letterbox":
        new_w, new_h, pad_x, pad_y = spec.letterbox(source_width, source_height)
        scale_x, scale_y = source_width / new_w, source_height / new_h
        shift_x, shift_y = -pad_x * scale_x, -pad_y * scale_y
    elif spec.resize == "center_crop":
        crop_w, crop_h, crop_x, crop_y = _centre_crop(spec, source_width, source_height)
        scale_x, scale_y = crop_w / spec.width, crop_h / spec.height
        shift_x, shift_y = float(crop_x), float(crop_y)
    else:
        scale_x, scale_y = source_width / spec.width, source_height / spec.height
        shift_x = shift_y = 0.0
    return (np.array([[scale_x], [scale_y], [scale_x], [scale_y]]),
            np.array([[shift_x], [shift_y], [shift_x], [shift_y]]),
            np.array([[source_width], [source_height], [source_width], [source_height]], dtype=np.float64))


def _columns_to_source(columns: FloatArray, spec: PreprocessSpec, source_width: int,
                       source_height: int) -> npt.NDArray[np.float64]:
    """(4, K) x1, y1, x2, y2 rows in model-input pixels -> the same in source pixels, clipped to the frame.

    All four coordinates in one pass against per-row constants: this runs for every frame,
    and at a handful of boxes each numpy call costs more than its work.
    """
    scale, shift, frame = _source_mapping(spec, source_width, source_height)
    out = columns * scale
    out += shift
    np.maximum(out, 0.0, out=out)  # two ufuncs: np.clip's Python wrapper costs more than both
    np.minimum(out, frame, out=out)
    return out


def input_to_source(xyxy: FloatArray, spec: PreprocessSpec, source_width: int, source_height: int) -> FloatArray:
    """Map boxes from model-input pixels back to the source frame (undo the resize), clipped to it."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return _columns_to_source(boxes.T, spec, source_width, source_height).T.astype(np.float32)


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
    candidates = decode(output, detection, len(labels))  # sorted by score
    if detection.decoder == "nms_in_graph":
        kept = candidates.select(slice(detection.max_detections))  # the graph did NMS; sorted already
    else:
        kept = candidates.select(_nms_sorted(candidates.columns, candidates.class_ids,
                                             iou_threshold=detection.iou_threshold,
                                             max_detections=detection.max_detections))
    corners = _columns_to_source(kept.columns, preprocessing, source_width, source_height)
    # Rounded on the arrays, then one Python pass; boxes that clipping left empty are dropped.
    boxes = np.round(corners, 2).T.tolist()
    scores = np.round(kept.scores.astype(np.float64), 5).tolist()
    # Positional: a frozen dataclass built by keyword costs a third more, per box, per frame.
    return [Detection(left, top, right, bottom, class_id, labels[class_id], score)
            for (left, top, right, bottom), class_id, score in zip(boxes, kept.class_ids.tolist(), scores, strict=True)
            if right > left and bottom > top]
