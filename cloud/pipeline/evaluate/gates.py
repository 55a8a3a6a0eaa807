"""The validation gate (is this candidate fit to ship?) and the quantization gate
(is this INT8 artifact as good as its FP32 source?). Pure functions over reports.

A slice of ``n`` images cannot resolve accuracy differences finer than ``100/n``
percentage points (one image). Comparisons on small slices therefore allow at
least one image's worth of difference; otherwise a 1 pp limit on a 60-image slice
would reject every artifact that flips a single prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.pipeline.evaluate.metrics import EvaluationReport


@dataclass(frozen=True)
class ValidationThresholds:
    min_accuracy: float = 0.80
    min_slice_accuracy: float = 0.70
    # Slices with fewer images are reported but not held to min_slice_accuracy.
    min_slice_samples: int = 20
    # How far (percentage points) a candidate may fall below the production model.
    max_regression_pp: float = 1.0


@dataclass(frozen=True)
class QuantizationGateConfig:
    max_accuracy_drop_pp: float = 1.0
    # Top-1 agreement with FP32 required on the golden inputs, and the score tolerance shipped to devices.
    min_golden_agreement: float = 1.0
    golden_tolerance: float = 0.05


@dataclass
class GateDecision:
    status: str  # validated | rejected (model gate); accepted | rejected (quantization gate)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status in ("validated", "accepted")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_minimums(reasons: list[str], notes: list[str], *, metric: str, overall: float, minimum: float,
                   images: int, slices: Mapping[str, tuple[int, float]], slice_minimum: float,
                   min_slice_images: int) -> None:
    """The minimum checks both validation gates make, appended to ``reasons`` and ``notes``.

    ``overall`` (named ``metric``) must reach ``minimum`` on a non-empty test split, and
    each slice, ``name -> (images, value)``, must reach ``slice_minimum`` unless it has
    fewer than ``min_slice_images`` images (then it is only noted: its value is noise).
    """
    if images == 0:
        reasons.append("the test split is empty: nothing to evaluate on")
    if overall < minimum:
        reasons.append(f"{metric} {overall:.3f} is below the minimum {minimum:.3f}")
    for name, (slice_images, value) in slices.items():
        if slice_images < min_slice_images:
            notes.append(f"slice {name} has {slice_images} images (< {min_slice_images}); not gated")
        elif value < slice_minimum:
            reasons.append(f"slice {name}: {metric} {value:.3f} is below the minimum {slice_minimum:.3f} "
                           f"({slice_images} images)")


def _allowed_drop_pp(limit_pp: float, samples: int) -> float:
    return max(limit_pp, 100.0 / samples) if samples else limit_pp


# Drops are computed from exact counts; the epsilon only absorbs float rounding of 100*k/n.
_EPSILON_PP = 1e-6


def _drop_pp(reference_correct: int, candidate_correct: int, samples: int) -> float:
    return 100.0 * (reference_correct - candidate_correct) / samples if samples else 0.0


def validation_gate(
    candidate: EvaluationReport,
    thresholds: ValidationThresholds,
    production: EvaluationReport | None = None,
    production_version: str | None = None,
) -> GateDecision:
    """Validated only if thresholds hold overall and on every slice, and the candidate is
    not worse than ``production`` (evaluated on the same test set) beyond the tolerance."""
    reasons: list[str] = []
    notes: list[str] = []
    check_minimums(reasons, notes, metric="accuracy", overall=candidate.accuracy, minimum=thresholds.min_accuracy,
                   images=candidate.samples,
                   slices={name: (m.samples, m.accuracy) for name, m in candidate.slices.items()},
                   slice_minimum=thresholds.min_slice_accuracy, min_slice_images=thresholds.min_slice_samples)
    if production is not None:
        who = production_version or "production"
        drop_pp = _drop_pp(production.correct, candidate.correct, candidate.samples)
        allowed = _allowed_drop_pp(thresholds.max_regression_pp, candidate.samples)
        if drop_pp > allowed + _EPSILON_PP:
            reasons.append(f"accuracy {candidate.accuracy:.3f} is {drop_pp:.1f} pp worse than {who} "
                           f"({production.accuracy:.3f}) on the same test set (tolerance {allowed:.1f} pp)")
        for name, metrics in candidate.slices.items():
            theirs = production.slices.get(name)
            if theirs is None or metrics.samples < thresholds.min_slice_samples:
                continue
            slice_drop = _drop_pp(theirs.correct, metrics.correct, metrics.samples)
            slice_allowed = _allowed_drop_pp(thresholds.max_regression_pp, metrics.samples)
            if slice_drop > slice_allowed + _EPSILON_PP:
                reasons.append(f"slice {name}: {slice_drop:.1f} pp worse than {who} (tolerance {slice_allowed:.1f} pp)")
    else:
        notes.append("no production model to compare against")
    return GateDecision(status="rejected" if reasons else "validated", reasons=reasons, notes=notes)


def quantization_gate(
    fp32: EvaluationReport,
    int8: EvaluationReport,
    config: QuantizationGateConfig,
    fp32_golden_scores: npt.NDArray[np.float32],
    int8_golden_scores: npt.NDArray[np.float32],
) -> GateDecision:
    """Accept an INT8 artifact only if its accuracy is within the drop limit of FP32
    overall and on every slice, and its top-1 agrees with FP32 on the golden inputs."""
    reasons: list[str] = []
    notes: list[str] = []
    drop_pp = _drop_pp(fp32.correct, int8.correct, fp32.samples)
    allowed = _allowed_drop_pp(config.max_accuracy_drop_pp, fp32.samples)
    if drop_pp > allowed + _EPSILON_PP:
        reasons.append(f"accuracy drop {drop_pp:.2f} pp ({fp32.accuracy:.3f} → {int8.accuracy:.3f}) "
                       f"exceeds the limit of {allowed:.2f} pp")
    for name, reference in fp32.slices.items():
        quantized = int8.slices.get(name)
        if quantized is None:
            continue
        slice_drop = _drop_pp(reference.correct, quantized.correct, reference.samples)
        slice_allowed = _allowed_drop_pp(config.max_accuracy_drop_pp, reference.samples)
        if slice_allowed > config.max_accuracy_drop_pp:
            notes.append(f"slice {name} ({reference.samples} images) resolves only {slice_allowed:.1f} pp")
        if slice_drop > slice_allowed + _EPSILON_PP:
            reasons.append(f"slice {name}: accuracy drop {slice_drop:.2f} pp exceeds the limit of {slice_allowed:.2f} pp")
    if len(fp32_golden_scores):
        agreement = float((fp32_golden_scores.argmax(axis=1) == int8_golden_scores.argmax(axis=1)).mean())
        if agreement < config.min_golden_agreement:
            reasons.append(f"top-1 agrees with FP32 on {agreement:.0%} of the golden inputs "
                           f"(required {config.min_golden_agreement:.0%})")
    return GateDecision(status="rejected" if reasons else "accepted", reasons=reasons, notes=notes)
