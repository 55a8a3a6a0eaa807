"""Evaluation (metrics over predictions) and the two gates (validation, quantization)."""

from cloud.pipeline.evaluate.gates import (
    GateDecision,
    QuantizationGateConfig,
    ValidationThresholds,
    quantization_gate,
    validation_gate,
)
from cloud.pipeline.evaluate.metrics import EvaluationReport, evaluate_predictions

__all__ = [
    "EvaluationReport",
    "GateDecision",
    "QuantizationGateConfig",
    "ValidationThresholds",
    "evaluate_predictions",
    "quantization_gate",
    "validation_gate",
]
