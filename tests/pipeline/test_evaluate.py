"""Metrics and gates as pure functions over predictions and reports."""

from __future__ import annotations

import numpy as np

from cloud.pipeline.evaluate.gates import (
    QuantizationGateConfig,
    ValidationThresholds,
    quantization_gate,
    validation_gate,
)
from cloud.pipeline.evaluate.metrics import EvaluationReport, evaluate_predictions

LABELS = ["cat", "dog", "fox"]


def _report(correct_per_item: list[bool], lighting: list[str]) -> EvaluationReport:
    targets = np.asarray([i % 3 for i in range(len(correct_per_item))], dtype=np.int64)
    predictions = np.where(correct_per_item, targets, (targets + 1) % 3)
    return evaluate_predictions(predictions, targets, LABELS, [{"lighting": light} for light in lighting])


def test_metrics_per_class_confusion_and_slices() -> None:
    targets = np.asarray([0, 0, 0, 1, 1, 2], dtype=np.int64)
    predictions = np.asarray([0, 0, 1, 1, 2, 2], dtype=np.int64)
    metadata = [{"lighting": "dim"}, {"lighting": "dim"}, {"lighting": "dim"}, {"lighting": "normal"},
                {"lighting": "normal"}, {"lighting": ""}]
    report = evaluate_predictions(predictions, targets, LABELS, metadata)
    assert report.accuracy == round(4 / 6, 4)
    assert report.confusion_matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report.per_class["cat"] == {"precision": 1.0, "recall": round(2 / 3, 4), "f1": 0.8, "support": 3}
    assert report.per_class["dog"]["precision"] == 0.5 and report.per_class["dog"]["recall"] == 0.5
    assert report.per_class["fox"]["precision"] == 0.5 and report.per_class["fox"]["recall"] == 1.0
    assert set(report.slices) == {"lighting=dim", "lighting=normal"}  # empty values are not a slice
    assert report.slices["lighting=dim"].accuracy == round(2 / 3, 4)
    assert EvaluationReport.from_dict(report.as_dict()) == report


def test_validation_gate_checks_thresholds_slices_and_production() -> None:
    lighting = ["dim"] * 50 + ["normal"] * 50
    good = _report([True] * 100, lighting)
    assert validation_gate(good, ValidationThresholds()).status == "validated"

    # Fine overall (85 %), but the dim slice (70 %) is below the slice minimum of 80 %.
    weak_dim = _report([i >= 15 for i in range(50)] + [True] * 50, lighting)
    decision = validation_gate(weak_dim, ValidationThresholds(min_accuracy=0.8, min_slice_accuracy=0.8))
    assert decision.status == "rejected"
    assert decision.reasons == ["slice lighting=dim: accuracy 0.700 is below the minimum 0.800 (50 images)"]

    # Above every threshold, but 3 pp worse than production on the same test set.
    slightly_worse = _report([i >= 3 for i in range(100)], lighting)
    decision = validation_gate(slightly_worse, ValidationThresholds(min_accuracy=0.5), good, "shapes-1")
    assert decision.status == "rejected"
    assert any("3.0 pp worse than shapes-1" in reason for reason in decision.reasons)
    # One image worse is within the 1 pp tolerance at 100 images.
    one_worse = _report([i >= 1 for i in range(100)], lighting)
    assert validation_gate(one_worse, ValidationThresholds(min_accuracy=0.5), good, "shapes-1").passed


def test_quantization_gate_overall_slices_and_golden_agreement() -> None:
    lighting = ["dim"] * 200 + ["normal"] * 200
    fp32 = _report([True] * 400, lighting)
    scores = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    config = QuantizationGateConfig(max_accuracy_drop_pp=1.0)

    # 2 of 400 wrong = 0.5 pp overall, 1 pp on the dim slice: accepted.
    int8_ok = _report([i not in (0, 1) for i in range(400)], lighting)
    assert quantization_gate(fp32, int8_ok, config, scores, scores).status == "accepted"

    # 3 wrong, all dim: 0.75 pp overall (fine) but 1.5 pp on the dim slice: rejected for the slice.
    int8_dim = _report([i not in (0, 1, 2) for i in range(400)], lighting)
    decision = quantization_gate(fp32, int8_dim, config, scores, scores)
    assert decision.status == "rejected"
    assert decision.reasons == ["slice lighting=dim: accuracy drop 1.50 pp exceeds the limit of 1.00 pp"]

    # Same accuracy, but a golden input changes class: rejected.
    flipped = scores.copy()
    flipped[3] = [0, 1, 0]
    decision = quantization_gate(fp32, fp32, config, scores, flipped)
    assert decision.status == "rejected" and "golden inputs" in decision.reasons[0]
