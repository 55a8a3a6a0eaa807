"""Detection evaluation through the device's own decoder, and its two gates.

:func:`evaluate_raw_outputs` turns a model's raw outputs into boxes with
:func:`agent.infer.detect.detect` (the agent's decode, NMS and mapping back to the
source frame, with the package's thresholds) and scores them against the ground
truth in source pixels: mAP@0.5 and mAP@0.5:0.95 overall, per class and per slice
(``<metadata field>=<value>``). The gates are pure functions over those reports:

* validation: mAP@0.5 at least a minimum overall and on every slice large enough;
* quantization: an INT8 artifact loses at most ``max_map50_drop_pp`` of mAP@0.5 against
  its FP32 source, overall and on every slice large enough, and its golden outputs
  agree with FP32 on every box-free/box-bearing decision (same number of boxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract import DetectionSpec, PreprocessSpec
from agent.infer.detect import Detection, detect
from cloud.pipeline.data.detection import DetectionTensors
from cloud.pipeline.evaluate.detection_metrics import DetectionMetrics, ImageBoxes, evaluate_detections
from cloud.pipeline.evaluate.gates import GateDecision, check_minimums


@dataclass(frozen=True)
class DetectionThresholds:
    min_map_50: float = 0.5
    min_slice_map_50: float = 0.4
    # Slices with fewer images are reported but not gated (their mAP is too noisy).
    min_slice_images: int = 20


@dataclass(frozen=True)
class DetectionQuantizationGateConfig:
    max_map50_drop_pp: float = 1.0
    min_slice_images: int = 20


@dataclass
class SliceResult:
    images: int
    metrics: DetectionMetrics


@dataclass
class DetectionEvaluation:
    images: int
    metrics: DetectionMetrics
    labels: list[str]
    slices: dict[str, SliceResult] = field(default_factory=dict)

    @property
    def map_50(self) -> float:
        return self.metrics.map_50

    @property
    def map_50_95(self) -> float:
        return self.metrics.map_50_95

    def as_dict(self) -> dict[str, Any]:
        def named(metrics: DetectionMetrics) -> dict[str, Any]:
            return {"map_50": round(metrics.map_50, 5), "map_50_95": round(metrics.map_50_95, 5),
                    "ap_50": {self.labels[c]: round(v, 5) for c, v in metrics.ap_50.items()},
                    "ap_50_95": {self.labels[c]: round(v, 5) for c, v in metrics.ap_50_95.items()}}

        return {"task": "detection", "images": self.images, **named(self.metrics),
                "slices": {name: {"images": s.images, **named(s.metrics)} for name, s in self.slices.items()}}


def detections_for(outputs: Sequence[npt.NDArray[np.float32]], data: DetectionTensors, *, block: DetectionSpec,
                   labels: list[str], spec: PreprocessSpec) -> list[list[Detection]]:
    """The agent's decode + NMS of each image's raw output, in that image's source pixels."""
    return [detect(output, detection=block, labels=labels, preprocessing=spec, source_width=size[0],
                   source_height=size[1]) for output, size in zip(outputs, data.sizes, strict=True)]


def evaluate_detections_list(found: list[list[Detection]], data: DetectionTensors,
                             labels: list[str]) -> DetectionEvaluation:
    images = []
    for index, detections in enumerate(found):
        images.append(ImageBoxes(
            image_id=data.ids[index], gt_boxes=data.boxes_source[index], gt_classes=data.classes[index],
            pred_boxes=np.asarray([[d.x1, d.y1, d.x2, d.y2] for d in detections], dtype=np.float64).reshape(-1, 4),
            pred_classes=np.asarray([d.class_id for d in detections], dtype=np.int64),
            pred_scores=np.asarray([d.score for d in detections], dtype=np.float64)))
    slices: dict[str, SliceResult] = {}
    fields = sorted({key for meta in data.metadata for key in meta})
    for name in fields:
        values = sorted({meta.get(name, "") for meta in data.metadata} - {""})
        for value in values:
            members = [image for image, meta in zip(images, data.metadata, strict=True) if meta.get(name) == value]
            slices[f"{name}={value}"] = SliceResult(len(members), evaluate_detections(members))
    return DetectionEvaluation(images=len(images), metrics=evaluate_detections(images), labels=labels, slices=slices)


def evaluate_raw_outputs(outputs: Sequence[npt.NDArray[np.float32]], data: DetectionTensors, *,
                         block: DetectionSpec, labels: list[str], spec: PreprocessSpec) -> DetectionEvaluation:
    """mAP overall, per class and per slice of one model's raw outputs (one (1, 4+C, N) array per image).

    Raises:
        ValueError: an output's shape does not fit the decoder.
    """
    return evaluate_detections_list(detections_for(outputs, data, block=block, labels=labels, spec=spec), data, labels)


def detection_validation_gate(candidate: DetectionEvaluation, thresholds: DetectionThresholds) -> GateDecision:
    """Validated only if mAP@0.5 reaches the minimum overall and on every slice with enough images."""
    reasons: list[str] = []
    notes: list[str] = [f"mAP@0.5 {candidate.map_50:.3f}, mAP@0.5:0.95 {candidate.map_50_95:.3f} "
                        f"on {candidate.images} test images"]
    check_minimums(reasons, notes, metric="mAP@0.5", overall=candidate.map_50, minimum=thresholds.min_map_50,
                   images=candidate.images,
                   slices={name: (s.images, s.metrics.map_50) for name, s in candidate.slices.items()},
                   slice_minimum=thresholds.min_slice_map_50, min_slice_images=thresholds.min_slice_images)
    return GateDecision(status="rejected" if reasons else "validated", reasons=reasons, notes=notes)


def detection_quantization_gate(fp32: DetectionEvaluation, int8: DetectionEvaluation,
                                config: DetectionQuantizationGateConfig,
                                fp32_golden: list[list[Detection]] | None = None,
                                int8_golden: list[list[Detection]] | None = None) -> GateDecision:
    """Accept an INT8 artifact only if mAP@0.5 drops at most ``max_map50_drop_pp`` overall and per slice.

    With golden detections (the same inputs through both), the INT8 artifact must also
    find boxes on exactly the golden inputs where FP32 does.
    """
    reasons: list[str] = []
    notes: list[str] = []
    drop_pp = 100.0 * (fp32.map_50 - int8.map_50)
    notes.append(f"mAP@0.5 {fp32.map_50:.4f} → {int8.map_50:.4f} ({drop_pp:+.2f} pp drop); "
                 f"mAP@0.5:0.95 {fp32.map_50_95:.4f} → {int8.map_50_95:.4f}")
    if drop_pp > config.max_map50_drop_pp:
        reasons.append(f"mAP@0.5 drop {drop_pp:.2f} pp ({fp32.map_50:.3f} → {int8.map_50:.3f}) exceeds the limit "
                       f"of {config.max_map50_drop_pp:.2f} pp")
    for name, reference in fp32.slices.items():
        quantized = int8.slices.get(name)
        if quantized is None:
            continue
        slice_drop = 100.0 * (reference.metrics.map_50 - quantized.metrics.map_50)
        if reference.images < config.min_slice_images:
            notes.append(f"slice {name} has {reference.images} images; not gated ({slice_drop:+.2f} pp)")
        elif slice_drop > config.max_map50_drop_pp:
            reasons.append(f"slice {name}: mAP@0.5 drop {slice_drop:.2f} pp exceeds the limit of "
                           f"{config.max_map50_drop_pp:.2f} pp")
    if fp32_golden is not None and int8_golden is not None:
        differing = sum(1 for a, b in zip(fp32_golden, int8_golden, strict=True) if bool(a) != bool(b))
        if differing:
            reasons.append(f"on {differing} of {len(fp32_golden)} golden inputs one of FP32 and INT8 finds objects "
                           "and the other none")
    return GateDecision(status="rejected" if reasons else "accepted", reasons=reasons, notes=notes)
