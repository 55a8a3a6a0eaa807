"""mAP: a hand-worked example, edge cases, and (when installed) agreement with pycocotools."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.pipeline.evaluate.detection_metrics import (
    ImageBoxes,
    evaluate_by_slice,
    evaluate_detections,
    interpolated_ap,
)


def _image(image_id: str, gt: list[tuple[list[float], int]], preds: list[tuple[list[float], int, float]]) -> ImageBoxes:
    return ImageBoxes(
        image_id=image_id,
        gt_boxes=np.asarray([b for b, _ in gt], dtype=np.float64).reshape(-1, 4),
        gt_classes=np.asarray([c for _, c in gt], dtype=np.int64),
        pred_boxes=np.asarray([b for b, _, _ in preds], dtype=np.float64).reshape(-1, 4),
        pred_classes=np.asarray([c for _, c, _ in preds], dtype=np.int64),
        pred_scores=np.asarray([s for _, _, s in preds], dtype=np.float64),
    )


HAND_WORKED = [
    _image("a", gt=[([0, 0, 10, 10], 0), ([20, 20, 30, 30], 0)],
           preds=[([0, 0, 10, 10], 0, 0.9),      # TP (first gt)
                  ([0, 0, 10, 10], 0, 0.8),      # duplicate of a matched object: FP
                  ([20, 20, 30, 30], 0, 0.6)]),  # TP (second gt)
    _image("b", gt=[([0, 0, 10, 10], 0), ([0, 0, 20, 20], 1)],
           preds=[([50, 50, 60, 60], 0, 0.7),    # FP (nothing there); the gt at the origin is missed
                  ([0, 0, 20, 10], 1, 0.5),      # IoU 200/400 = 0.5: TP at 0.5, FP at 0.55 and above
                  ([5, 5, 9, 9], 2, 0.95)]),     # class 2 has no ground truth: not in the mean
]


def test_hand_worked_example() -> None:
    # Class 0: 3 gt. Ranked by score:
    #   score  TP/FP  cumTP cumFP  recall  precision  envelope
    #   0.9    TP     1     0      1/3     1.000      1.0
    #   0.8    FP     1     1      1/3     0.500      0.5
    #   0.7    FP     1     2      1/3     0.333      0.5
    #   0.6    TP     2     2      2/3     0.500      0.5
    # 101 recall points: r = 0.00..0.33 (34 points) -> 1.0; r = 0.34..0.66 (33 points) -> 0.5;
    # r = 0.67..1.00 (34 points, recall never reaches them) -> 0.
    # AP = (34 x 1.0 + 33 x 0.5) / 101 = 50.5 / 101 = 0.5, at every IoU threshold (exact boxes).
    # Class 1: 1 gt, 1 prediction at IoU 0.5: AP 1.0 at 0.5, 0 at 0.55..0.95 -> AP@[.5:.95] = 1/10.
    # mAP@0.5 = (0.5 + 1.0) / 2 = 0.75; mAP@0.5:0.95 = (0.5 + 0.1) / 2 = 0.3.
    metrics = evaluate_detections(HAND_WORKED)

    assert metrics.ap_50 == pytest.approx({0: 0.5, 1: 1.0})
    assert metrics.ap_50_95 == pytest.approx({0: 0.5, 1: 0.1})
    assert metrics.map_50 == pytest.approx(0.75)
    assert metrics.map_50_95 == pytest.approx(0.3)


def test_no_predictions_give_zero_ap_and_no_ground_truth_is_left_out() -> None:
    empty = _image("x", gt=[([0, 0, 10, 10], 3)], preds=[])
    metrics = evaluate_detections([empty])
    assert metrics.ap_50 == {3: 0.0} and metrics.map_50 == 0.0
    assert np.isnan(interpolated_ap(np.zeros(0, bool), np.zeros(0), 0))


def test_predictions_only_for_classes_without_ground_truth_do_not_count() -> None:
    image = _image("x", gt=[([0, 0, 10, 10], 0)], preds=[([0, 0, 10, 10], 0, 0.9), ([0, 0, 10, 10], 1, 0.99)])
    metrics = evaluate_detections([image])
    assert metrics.ap_50 == {0: pytest.approx(1.0)} and metrics.map_50 == pytest.approx(1.0)


def test_duplicates_are_false_positives() -> None:
    one = _image("x", gt=[([0, 0, 10, 10], 0)], preds=[([0, 0, 10, 10], 0, 0.9)])
    doubled = _image("x", gt=[([0, 0, 10, 10], 0)], preds=[([0, 0, 10, 10], 0, 0.5), ([0, 0, 10, 10], 0, 0.9)])
    assert evaluate_detections([one]).map_50 == pytest.approx(1.0)
    # The duplicate ranks below the match and adds recall nothing: the envelope at every recall is still 1.
    assert evaluate_detections([doubled]).map_50 == pytest.approx(1.0)
    # A duplicate ranked ABOVE a true match costs precision: FP at 0.95 first, then TP (P = 1/2 at R = 1).
    ranked_first = _image("y", gt=[([0, 0, 10, 10], 0)],
                          preds=[([0, 0, 10, 10], 0, 0.9), ([40, 40, 50, 50], 0, 0.95)])
    assert evaluate_detections([ranked_first]).map_50 == pytest.approx(0.5)


def test_per_slice_metrics() -> None:
    slices = evaluate_by_slice(HAND_WORKED, lambda image: "day" if image.image_id == "a" else "night")
    # Day: class 0 only, 2 gt, TP 0.9, FP 0.8, TP 0.6 -> envelope 1.0 to recall 1/2, then 2/3 to 1.
    # AP = (51 x 1.0 + 50 x 2/3) / 101.
    assert slices["day"].map_50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert set(slices) == {"day", "night"}


def _random_images(rng: np.random.Generator, count: int) -> list[ImageBoxes]:
    images = []
    for index in range(count):
        n_gt, n_pred = rng.integers(0, 6), rng.integers(0, 9)
        xy = rng.uniform(0, 80, size=(n_gt, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, size=(n_gt, 2))], axis=1)
        jitter = rng.normal(0, 4, size=(n_gt, 4))
        pred_from_gt = gt + jitter
        xy_p = rng.uniform(0, 80, size=(n_pred, 2))
        random_preds = np.concatenate([xy_p, xy_p + rng.uniform(5, 30, size=(n_pred, 2))], axis=1)
        preds = np.concatenate([pred_from_gt, random_preds])
        preds[:, 2:] = np.maximum(preds[:, 2:], preds[:, :2] + 1)
        gt_classes = rng.integers(0, 3, n_gt)
        # Predictions near a gt box mostly name its class; the random ones any class.
        pred_classes = np.concatenate([np.where(rng.uniform(size=n_gt) < 0.8, gt_classes, rng.integers(0, 3, n_gt)),
                                       rng.integers(0, 3, n_pred)])
        images.append(ImageBoxes(image_id=str(index), gt_boxes=gt, gt_classes=gt_classes,
                                 pred_boxes=preds, pred_classes=pred_classes,
                                 pred_scores=rng.uniform(0.05, 1, len(preds))))
    return images


def test_agrees_with_pycocotools_on_random_boxes() -> None:
    coco = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is not installed in this environment "
                               "(it is only a cross-check; the metric itself is numpy)")
    from pycocotools.coco import COCO

    images = _random_images(np.random.default_rng(7), 40)
    gt_doc: dict[str, list[dict[str, object]]] = {"images": [], "annotations": [], "categories": []}
    detections = []
    for i, image in enumerate(images):
        gt_doc["images"].append({"id": i, "width": 200, "height": 200})
        for box, cls in zip(image.gt_boxes, image.gt_classes, strict=True):
            x1, y1, x2, y2 = box.tolist()
            gt_doc["annotations"].append({"id": len(gt_doc["annotations"]) + 1, "image_id": i, "category_id": int(cls),
                                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                          "iscrowd": 0})
        for box, cls, score in zip(image.pred_boxes, image.pred_classes, image.pred_scores, strict=True):
            x1, y1, x2, y2 = box.tolist()
            detections.append({"image_id": i, "category_id": int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
                               "score": float(score)})
    gt_doc["categories"] = [{"id": c} for c in range(3)]
    ground = COCO()
    ground.dataset = gt_doc
    ground.createIndex()
    evaluator = coco.COCOeval(ground, ground.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ours = evaluate_detections(images)
    assert ours.map_50_95 == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert ours.map_50 == pytest.approx(evaluator.stats[1], abs=1e-6)
