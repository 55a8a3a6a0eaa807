"""Pure gate statistics: canary windows against a control group, per stratum.

Input is plain data (telemetry windows, install outcomes, shadow windows); output
is a list of :class:`GateResult` carrying the numbers that drove each verdict, so a
decision can be stored and shown exactly as it was made.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloud.rollout.spec import GateThresholds, ShadowSpec

__all__ = [
    "DetectionCounts",
    "GateResult",
    "GateStatus",
    "GroupStats",
    "InstallOutcomes",
    "ShadowStats",
    "TelemetryWindow",
    "aggregate",
    "class_distribution_test",
    "count_rate_test",
    "evaluate_shadow",
    "evaluate_stratum",
]


class GateStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class DetectionCounts:
    """A detection package's part of one telemetry window (``TelemetryReport.detection``)."""

    frames: int
    boxes: int
    mean_box_score: float | None = None
    object_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TelemetryWindow:
    device_id: str
    frames: int
    inference_errors: int = 0
    p95_latency_ms: float | None = None
    mean_confidence: float | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    drift_score: float | None = None
    detection: DetectionCounts | None = None


@dataclass
class GroupStats:
    """Telemetry of one group (canaries or control) in one stratum, summed."""

    devices: int = 0
    windows: int = 0
    frames: int = 0
    errors: int = 0
    confidence_frames: int = 0
    confidence_sum: float = 0.0
    p95_latency_ms: list[float] = field(default_factory=list)
    class_counts: Counter[str] = field(default_factory=Counter)
    drift_scores: list[float] = field(default_factory=list)
    restarts: int = 0
    # Detection packages: frames, boxes (those with a reported score apart), summed box
    # scores and objects per class, over the group's detection windows.
    detection_frames: int = 0
    boxes: int = 0
    scored_boxes: int = 0
    box_score_sum: float = 0.0
    object_counts: Counter[str] = field(default_factory=Counter)

    @property
    def boxes_per_frame(self) -> float | None:
        return self.boxes / self.detection_frames if self.detection_frames else None

    @property
    def mean_box_score(self) -> float | None:
        return self.box_score_sum / self.scored_boxes if self.scored_boxes else None

    @property
    def detects(self) -> bool:
        """Most of the group's frames came from a detection package."""
        return self.frames > 0 and 2 * self.detection_frames >= self.frames

    @property
    def error_rate(self) -> float | None:
        attempts = self.frames + self.errors
        return self.errors / attempts if attempts else None

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.confidence_frames if self.confidence_frames else None

    @property
    def median_p95_latency_ms(self) -> float | None:
        return statistics.median(self.p95_latency_ms) if self.p95_latency_ms else None

    @property
    def restarts_per_device(self) -> float | None:
        return self.restarts / self.devices if self.devices else None

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "devices": self.devices, "windows": self.windows, "frames": self.frames, "errors": self.errors,
            "error_rate": _round(self.error_rate), "mean_confidence": _round(self.mean_confidence),
            "median_p95_latency_ms": _round(self.median_p95_latency_ms), "restarts": self.restarts,
            "class_counts": dict(sorted(self.class_counts.items())),
        }
        if self.detection_frames:
            summary.update(detection_frames=self.detection_frames, boxes=self.boxes,
                           boxes_per_frame=_round(self.boxes_per_frame), mean_box_score=_round(self.mean_box_score),
                           object_counts=dict(sorted(self.object_counts.items())))
        return summary

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "class_counts": dict(self.class_counts), "object_counts": dict(self.object_counts)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> GroupStats:
        # Baselines stored before detection gates lack the detection fields: they default.
        return cls(**{**document, "class_counts": Counter(document.get("class_counts", {})),
                      "object_counts": Counter(document.get("object_counts", {}))})


def aggregate(windows: Iterable[TelemetryWindow], *, restarts: int = 0, devices: int | None = None) -> GroupStats:
    stats = GroupStats(restarts=restarts)
    seen: set[str] = set()
    for window in windows:
        seen.add(window.device_id)
        stats.windows += 1
        stats.frames += window.frames
        stats.errors += window.inference_errors
        if window.mean_confidence is not None and window.frames:
            stats.confidence_frames += window.frames
            stats.confidence_sum += window.mean_confidence * window.frames
        if window.p95_latency_ms is not None and window.frames:
            stats.p95_latency_ms.append(window.p95_latency_ms)
        stats.class_counts.update(window.class_counts)
        if window.drift_score is not None:
            stats.drift_scores.append(window.drift_score)
        detection = window.detection
        if detection is not None and detection.frames:
            stats.detection_frames += detection.frames
            stats.boxes += detection.boxes
            if detection.mean_box_score is not None and detection.boxes:
                stats.scored_boxes += detection.boxes
                stats.box_score_sum += detection.mean_box_score * detection.boxes
            stats.object_counts.update(detection.object_counts)
    stats.devices = len(seen) if devices is None else devices
    return stats


@dataclass(frozen=True)
class InstallOutcomes:
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


@dataclass
class ShadowStats:
    """Summed shadow windows of one stratum: candidate beside the active model."""

    devices: int = 0
    frames: int = 0
    agreements: int = 0
    candidate_errors: int = 0
    candidate_p95_latency_ms: list[float] = field(default_factory=list)
    active_p95_latency_ms: list[float] = field(default_factory=list)
    # Detection packages: boxes of each model over the shadowed frames, and matched pairs
    # (IoU >= 0.5, same class; matched on the device, agent/infer/shadow.py).
    boxes_active: int = 0
    boxes_candidate: int = 0
    boxes_matched: int = 0

    @property
    def box_agreement_rate(self) -> float | None:
        """Share of both models' boxes that found a partner: 2 x matched / (active + candidate)."""
        total = self.boxes_active + self.boxes_candidate
        return 2 * self.boxes_matched / total if total else None

    @property
    def agreement_rate(self) -> float | None:
        """Box agreement for detection packages (when any box was seen), else top-1 agreement per frame."""
        boxes = self.box_agreement_rate
        if boxes is not None:
            return boxes
        return self.agreements / self.frames if self.frames else None


@dataclass(frozen=True)
class GateResult:
    gate: str
    status: GateStatus
    observed: float | None
    threshold: float | None
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "status": self.status.value, "observed": _round(self.observed),
                "threshold": self.threshold, "message": self.message, "numbers": self.numbers}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def class_distribution_test(canary: Counter[str], control: Counter[str], *,
                            frames_per_sample: float = 1.0) -> tuple[float, float, float]:
    """Chi-square test of homogeneity on a 2 x K table of predicted-class counts.

    Counts are divided by ``frames_per_sample`` first (correlated frames carry less
    evidence than their number). Returns ``(chi2, p_value, total_variation_distance)``.
    Classes that neither group predicted are dropped (a zero column has no expected count).
    """
    labels = _seen_labels(canary, control)
    canary_total = sum(canary[label] for label in labels)
    control_total = sum(control[label] for label in labels)
    tvd = 0.5 * sum(abs(canary[label] / canary_total - control[label] / control_total) for label in labels)
    if len(labels) < 2:
        return 0.0, 1.0, tvd
    table = [[canary[label] / frames_per_sample for label in labels],
             [control[label] / frames_per_sample for label in labels]]
    # Imported here: scipy.stats takes seconds to import, and every `edgefleet` command imports this module.
    from scipy.stats import chi2_contingency

    chi2, p_value, _dof, _expected = chi2_contingency(table, correction=False)
    return float(chi2), float(p_value), float(tvd)


def count_rate_test(canary_count: float, canary_frames: int, control_count: float, control_frames: int, *,
                    frames_per_sample: float = 1.0) -> float:
    """Two-sided p-value that two groups see the same count per frame (Poisson rates).

    Conditional on the total, the canary's share of counts is binomial with the canary's
    share of frames under the null (the exact test for two Poisson rates). Counts and
    frames are divided by ``frames_per_sample`` first: consecutive frames repeat objects.
    """
    canary_n = round(canary_count / frames_per_sample)
    total = canary_n + round(control_count / frames_per_sample)
    if total == 0 or canary_frames + control_frames == 0:
        return 1.0
    share = canary_frames / (canary_frames + control_frames)
    from scipy.stats import binomtest  # imported on first use, as above

    return float(binomtest(min(canary_n, total), total, share).pvalue)


def _alpha(t: GateThresholds, *, interim: bool) -> float:
    """The significance level of a model-quality test; an interim look spends only a fraction of it."""
    return t.class_distribution_alpha * (t.interim_alpha_fraction if interim else 1.0)


def _seen_labels(canary: Counter[str], control: Counter[str]) -> list[str]:
    """Labels either group counted at least once (a label neither saw has nothing to compare)."""
    return sorted(label for label in set(canary) | set(control) if canary[label] + control[label] > 0)


def _relative_change(canary_rate: float, control_rate: float) -> float:
    if control_rate > 0:
        return canary_rate / control_rate - 1.0
    return 0.0 if canary_rate == 0 else float("inf")


def _install_gate(t: GateThresholds, installs: InstallOutcomes) -> GateResult:
    numbers = {"succeeded": installs.succeeded, "failed": installs.failed, "min_outcomes": t.min_install_outcomes}
    if installs.total < t.min_install_outcomes:
        return GateResult("install_failure_rate", GateStatus.INSUFFICIENT, None, t.max_install_failure_rate,
                          f"{installs.total} install outcomes, need {t.min_install_outcomes}", numbers)
    rate = installs.failed / installs.total
    status = GateStatus.FAIL if rate > t.max_install_failure_rate else GateStatus.PASS
    return GateResult("install_failure_rate", status, rate, t.max_install_failure_rate,
                      f"{installs.failed}/{installs.total} installs failed", numbers)


def _enough(group: GroupStats, minimum: int) -> bool:
    return group.frames + group.errors >= minimum


def _error_rate_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult:
    numbers = {"canary": canary.error_rate, "control": control.error_rate, "canary_frames": canary.frames,
               "canary_errors": canary.errors, "control_frames": control.frames, "control_errors": control.errors}
    if not _enough(canary, t.min_frames):
        return GateResult("error_rate", GateStatus.INSUFFICIENT, canary.error_rate, t.max_error_rate,
                          f"{canary.frames + canary.errors} canary frames, need {t.min_frames}", numbers)
    canary_rate = canary.error_rate or 0.0
    # Without a control group only the absolute cap applies.
    limit = t.max_error_rate
    if _enough(control, t.min_frames) and control.error_rate is not None:
        limit = min(t.max_error_rate, control.error_rate + t.max_error_rate_increase)
    status = GateStatus.FAIL if canary_rate > limit else GateStatus.PASS
    return GateResult("error_rate", status, canary_rate, limit,
                      f"canary error rate {canary_rate:.4f} vs limit {limit:.4f}", numbers)


def _restart_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult:
    canary_rate = canary.restarts_per_device
    control_rate = control.restarts_per_device or 0.0
    numbers = {"canary_restarts": canary.restarts, "canary_devices": canary.devices,
               "control_restarts": control.restarts, "control_devices": control.devices}
    if canary_rate is None:
        return GateResult("restarts", GateStatus.INSUFFICIENT, None, None, "no canary devices", numbers)
    limit = control_rate + t.max_restart_rate_increase
    status = GateStatus.FAIL if canary_rate > limit else GateStatus.PASS
    return GateResult("restarts", status, canary_rate, limit,
                      f"{canary_rate:.3f} restarts per canary device vs limit {limit:.3f}", numbers)


def _latency_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult:
    canary_p95, control_p95 = canary.median_p95_latency_ms, control.median_p95_latency_ms
    numbers = {"canary_median_p95_ms": _round(canary_p95), "control_median_p95_ms": _round(control_p95),
               "canary_windows": len(canary.p95_latency_ms), "control_windows": len(control.p95_latency_ms)}
    if len(canary.p95_latency_ms) < t.min_latency_windows or len(control.p95_latency_ms) < t.min_latency_windows:
        return GateResult("p95_latency_ratio", GateStatus.INSUFFICIENT, None, t.max_p95_latency_ratio,
                          f"need {t.min_latency_windows} latency windows in each group", numbers)
    assert canary_p95 is not None and control_p95 is not None
    ratio = canary_p95 / max(control_p95, 1e-6)
    increase_ms = canary_p95 - control_p95
    detail = f"p95 latency {ratio:.2f}x the control group"
    status = GateStatus.PASS
    if ratio > t.max_p95_latency_ratio:
        if increase_ms > t.min_p95_latency_increase_ms:
            status = GateStatus.FAIL
        else:
            detail += f", {increase_ms:.2f} ms slower (under {t.min_p95_latency_increase_ms:g} ms counts as noise)"
    return GateResult("p95_latency_ratio", status, ratio, t.max_p95_latency_ratio, detail, numbers)


def _confidence_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult:
    numbers = {"canary": _round(canary.mean_confidence), "control": _round(control.mean_confidence)}
    if canary.confidence_frames < t.min_frames or control.confidence_frames < t.min_frames:
        # Observed is a drop against the control group: nothing to show until both groups have it.
        return GateResult("mean_confidence", GateStatus.INSUFFICIENT, None, t.max_confidence_drop,
                          f"need {t.min_frames} frames with confidence in each group", numbers)
    assert canary.mean_confidence is not None and control.mean_confidence is not None
    drop = control.mean_confidence - canary.mean_confidence
    status = GateStatus.FAIL if drop > t.max_confidence_drop else GateStatus.PASS
    return GateResult("mean_confidence", status, drop, t.max_confidence_drop,
                      f"mean confidence {canary.mean_confidence:.3f} vs control {control.mean_confidence:.3f}",
                      numbers)


def _class_distribution_gate(t: GateThresholds, canary: GroupStats, control: GroupStats, *,
                             interim: bool) -> GateResult:
    canary_n, control_n = sum(canary.class_counts.values()), sum(control.class_counts.values())
    alpha = _alpha(t, interim=interim)
    numbers: dict[str, Any] = {"canary": dict(sorted(canary.class_counts.items())),
                               "control": dict(sorted(control.class_counts.items())),
                               "alpha": alpha, "interim": interim, "min_tvd": t.class_distribution_min_tvd}
    if canary_n < t.min_frames or control_n < t.min_frames:
        return GateResult("class_distribution", GateStatus.INSUFFICIENT, None, alpha,
                          f"{canary_n} canary / {control_n} control predictions, need {t.min_frames} each", numbers)
    chi2, p_value, tvd = class_distribution_test(canary.class_counts, control.class_counts,
                                                 frames_per_sample=t.frames_per_independent_sample)
    numbers.update(chi2=round(chi2, 3), p_value=p_value, tvd=round(tvd, 4),
                   frames_per_sample=t.frames_per_independent_sample)
    shifted = p_value < alpha and tvd > t.class_distribution_min_tvd
    return GateResult("class_distribution", GateStatus.FAIL if shifted else GateStatus.PASS, p_value, alpha,
                      f"chi-square p={p_value:.3g}, total variation distance {tvd:.3f}", numbers)


def _drift_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult | None:
    if not canary.drift_scores and not control.drift_scores:
        return None  # drift statistics are optional: devices without them skip this gate
    numbers = {"canary_windows": len(canary.drift_scores), "control_windows": len(control.drift_scores)}
    if len(canary.drift_scores) < t.min_drift_windows or len(control.drift_scores) < t.min_drift_windows:
        return GateResult("drift_score", GateStatus.INSUFFICIENT, None, t.max_drift_score_increase,
                          f"need {t.min_drift_windows} drift windows in each group", numbers)
    increase = statistics.median(canary.drift_scores) - statistics.median(control.drift_scores)
    status = GateStatus.FAIL if increase > t.max_drift_score_increase else GateStatus.PASS
    return GateResult("drift_score", status, increase, t.max_drift_score_increase,
                      f"median drift score {increase:+.3f} against the control group", numbers)


def _detection_short(t: GateThresholds, canary: GroupStats, control: GroupStats) -> str | None:
    if canary.detection_frames < t.min_frames or control.detection_frames < t.min_frames:
        return f"{canary.detection_frames} canary / {control.detection_frames} control detection frames, " \
               f"need {t.min_frames} each"
    return None


def _boxes_per_frame_gate(t: GateThresholds, canary: GroupStats, control: GroupStats, *,
                          interim: bool) -> GateResult:
    """Boxes per frame, canary against control: a detector that finds half the objects (or twice as many) fails."""
    alpha = _alpha(t, interim=interim)
    numbers: dict[str, Any] = {"canary": _round(canary.boxes_per_frame), "control": _round(control.boxes_per_frame),
                               "canary_boxes": canary.boxes, "canary_frames": canary.detection_frames,
                               "control_boxes": control.boxes, "control_frames": control.detection_frames,
                               "alpha": alpha, "interim": interim}
    short = _detection_short(t, canary, control)
    if short is not None:
        return GateResult("boxes_per_frame", GateStatus.INSUFFICIENT, None, t.max_boxes_per_frame_change, short,
                          numbers)
    assert canary.boxes_per_frame is not None and control.boxes_per_frame is not None
    change = _relative_change(canary.boxes_per_frame, control.boxes_per_frame)
    p_value = count_rate_test(canary.boxes, canary.detection_frames, control.boxes, control.detection_frames,
                              frames_per_sample=t.frames_per_independent_sample)
    numbers.update(p_value=p_value, frames_per_sample=t.frames_per_independent_sample)
    failed = abs(change) > t.max_boxes_per_frame_change and p_value < alpha
    return GateResult("boxes_per_frame", GateStatus.FAIL if failed else GateStatus.PASS, change,
                      t.max_boxes_per_frame_change,
                      f"{canary.boxes_per_frame:.2f} boxes per frame vs control {control.boxes_per_frame:.2f} "
                      f"({change:+.0%}, p={p_value:.3g})", numbers)


def _class_counts_per_frame_gate(t: GateThresholds, canary: GroupStats, control: GroupStats, *,
                                 interim: bool) -> GateResult:
    """Objects per frame of each class, canary against control (Bonferroni across classes).

    Catches what the total hides: a class the candidate stopped finding, or finds as another.
    """
    labels = _seen_labels(canary.object_counts, control.object_counts)
    alpha = _alpha(t, interim=interim)
    per_class_alpha = alpha / max(len(labels), 1)
    numbers: dict[str, Any] = {"canary": dict(sorted(canary.object_counts.items())),
                               "control": dict(sorted(control.object_counts.items())),
                               "canary_frames": canary.detection_frames, "control_frames": control.detection_frames,
                               "alpha": alpha, "interim": interim}
    short = _detection_short(t, canary, control)
    if short is not None:
        return GateResult("class_counts_per_frame", GateStatus.INSUFFICIENT, None,
                          t.max_class_count_per_frame_change, short, numbers)
    worst_label, worst_change, failing = None, 0.0, []
    changes: dict[str, dict[str, float | None]] = {}
    for label in labels:
        canary_rate = canary.object_counts[label] / canary.detection_frames
        control_rate = control.object_counts[label] / control.detection_frames
        change = _relative_change(canary_rate, control_rate)
        p_value = count_rate_test(canary.object_counts[label], canary.detection_frames,
                                  control.object_counts[label], control.detection_frames,
                                  frames_per_sample=t.frames_per_independent_sample)
        changes[label] = {"canary_per_frame": _round(canary_rate), "control_per_frame": _round(control_rate),
                          "change": None if change == float("inf") else _round(change), "p_value": p_value}
        if abs(change) > t.max_class_count_per_frame_change and p_value < per_class_alpha:
            failing.append(label)
        if worst_label is None or abs(change) > abs(worst_change):
            worst_label, worst_change = label, change
    numbers.update(per_class=changes, failing_classes=failing, frames_per_sample=t.frames_per_independent_sample)
    observed = None if worst_change == float("inf") else worst_change
    if failing:
        return GateResult("class_counts_per_frame", GateStatus.FAIL, observed, t.max_class_count_per_frame_change,
                          "objects per frame changed for " + ", ".join(
                              f"{label} ({changes[label]['canary_per_frame']} vs "
                              f"{changes[label]['control_per_frame']})" for label in failing), numbers)
    message = (f"largest change {worst_label} {worst_change:+.0%}" if worst_label is not None
               else "no objects in either group")
    return GateResult("class_counts_per_frame", GateStatus.PASS, observed, t.max_class_count_per_frame_change,
                      message, numbers)


def _box_score_gate(t: GateThresholds, canary: GroupStats, control: GroupStats) -> GateResult:
    numbers = {"canary": _round(canary.mean_box_score), "control": _round(control.mean_box_score),
               "canary_boxes": canary.scored_boxes, "control_boxes": control.scored_boxes}
    short = _detection_short(t, canary, control)
    if short is None and (canary.scored_boxes < t.min_frames or control.scored_boxes < t.min_frames):
        short = f"{canary.scored_boxes} canary / {control.scored_boxes} control boxes, need {t.min_frames} each"
    if short is not None:
        return GateResult("mean_box_score", GateStatus.INSUFFICIENT, None, t.max_box_score_drop, short, numbers)
    assert canary.mean_box_score is not None and control.mean_box_score is not None
    drop = control.mean_box_score - canary.mean_box_score
    status = GateStatus.FAIL if drop > t.max_box_score_drop else GateStatus.PASS
    return GateResult("mean_box_score", status, drop, t.max_box_score_drop,
                      f"mean box score {canary.mean_box_score:.3f} vs control {control.mean_box_score:.3f}", numbers)


def evaluate_stratum(
    thresholds: GateThresholds, *, installs: InstallOutcomes, canary: GroupStats, control: GroupStats,
    interim: bool = False,
) -> list[GateResult]:
    """Every gate for one stratum of one stage: install, runtime health, model quality.

    ``interim``: the stage is still soaking or installing, so this is one of many looks
    (see ``GateThresholds.interim_alpha_fraction``).
    """
    results = [
        _install_gate(thresholds, installs),
        _error_rate_gate(thresholds, canary, control),
        _restart_gate(thresholds, canary, control),
        _latency_gate(thresholds, canary, control),
    ]
    # Model quality follows the task of the release: the canaries' frames once they have
    # some, the control group's before (a detection window carries no classifier confidence).
    detects = canary.detects if canary.frames else control.detects
    if detects:
        results += [
            _boxes_per_frame_gate(thresholds, canary, control, interim=interim),
            _class_counts_per_frame_gate(thresholds, canary, control, interim=interim),
            _box_score_gate(thresholds, canary, control),
        ]
    else:
        results += [
            _confidence_gate(thresholds, canary, control),
            _class_distribution_gate(thresholds, canary, control, interim=interim),
        ]
    drift = _drift_gate(thresholds, canary, control)
    if drift is not None:
        results.append(drift)
    return results


def evaluate_shadow(spec: ShadowSpec, shadow: ShadowStats) -> list[GateResult]:
    """Gates of the shadow phase: agreement with the active model, candidate latency and errors."""
    numbers: dict[str, Any] = {"frames": shadow.frames, "agreements": shadow.agreements,
                               "candidate_errors": shadow.candidate_errors, "devices": shadow.devices,
                               "min_frames": spec.min_frames}
    boxes = shadow.box_agreement_rate is not None
    if boxes:
        numbers.update(boxes_active=shadow.boxes_active, boxes_candidate=shadow.boxes_candidate,
                       boxes_matched=shadow.boxes_matched, match="IoU >= 0.5, same class")
    if shadow.frames + shadow.candidate_errors < spec.min_frames:
        message = f"{shadow.frames} shadowed frames, need {spec.min_frames}"
        return [GateResult(name, GateStatus.INSUFFICIENT, None, limit, message, numbers) for name, limit in (
            ("shadow_agreement", spec.min_agreement), ("shadow_latency_ratio", spec.max_latency_ratio),
            ("shadow_error_rate", spec.max_error_rate))]
    agreement = shadow.agreement_rate or 0.0
    results = [GateResult("shadow_agreement", GateStatus.FAIL if agreement < spec.min_agreement else GateStatus.PASS,
                          agreement, spec.min_agreement,
                          f"{agreement:.1%} of both models' boxes matched (IoU >= 0.5, same class)" if boxes else
                          f"candidate agrees with the active model on {agreement:.1%} of frames", numbers)]
    if shadow.candidate_p95_latency_ms and shadow.active_p95_latency_ms:
        ratio = statistics.median(shadow.candidate_p95_latency_ms) / max(
            statistics.median(shadow.active_p95_latency_ms), 1e-6)
        results.append(GateResult("shadow_latency_ratio",
                                  GateStatus.FAIL if ratio > spec.max_latency_ratio else GateStatus.PASS, ratio,
                                  spec.max_latency_ratio, f"candidate p95 latency {ratio:.2f}x the active model",
                                  numbers))
    error_rate = shadow.candidate_errors / (shadow.frames + shadow.candidate_errors)
    results.append(GateResult("shadow_error_rate",
                              GateStatus.FAIL if error_rate > spec.max_error_rate else GateStatus.PASS, error_rate,
                              spec.max_error_rate, f"candidate failed on {error_rate:.1%} of shadowed frames",
                              numbers))
    return results
