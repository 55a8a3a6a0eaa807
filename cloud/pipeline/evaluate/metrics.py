"""Classification metrics over predictions: pure numpy, no model, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class SliceMetrics:
    samples: int
    accuracy: float
    correct: int


@dataclass
class EvaluationReport:
    accuracy: float
    samples: int
    per_class: dict[str, dict[str, float]]
    # confusion[i][j]: images of class labels[i] predicted as labels[j].
    confusion_matrix: list[list[int]]
    labels: list[str]
    # "<field>=<value>" → metrics over the images with that metadata value.
    slices: dict[str, SliceMetrics] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        return int(sum(self.confusion_matrix[i][i] for i in range(len(self.confusion_matrix))))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvaluationReport:
        slices = {name: SliceMetrics(**values) for name, values in raw.get("slices", {}).items()}
        return cls(accuracy=raw["accuracy"], samples=raw["samples"], per_class=raw["per_class"],
                   confusion_matrix=raw["confusion_matrix"], labels=raw["labels"], slices=slices)


def evaluate_predictions(
    predictions: npt.NDArray[np.int64],
    targets: npt.NDArray[np.int64],
    labels: list[str],
    metadata: Sequence[dict[str, str]] | None = None,
) -> EvaluationReport:
    """Accuracy, per-class precision/recall/F1, confusion matrix and per-slice accuracy.

    ``metadata[i]`` describes image ``i``; every (field, value) pair becomes a slice.

    Raises:
        ValueError: predictions, targets and metadata differ in length.
    """
    if len(predictions) != len(targets) or (metadata is not None and len(metadata) != len(targets)):
        raise ValueError("predictions, targets and metadata must have one entry per image")
    count = len(labels)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (targets, predictions), 1)
    per_class: dict[str, dict[str, float]] = {}
    for index, label in enumerate(labels):
        true_positive = int(confusion[index, index])
        predicted = int(confusion[:, index].sum())
        actual = int(confusion[index, :].sum())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": actual}
    correct = predictions == targets
    slices: dict[str, SliceMetrics] = {}
    if metadata is not None:
        groups: dict[str, list[int]] = {}
        for index, fields in enumerate(metadata):
            for name, value in fields.items():
                if value:
                    groups.setdefault(f"{name}={value}", []).append(index)
        for name in sorted(groups):
            members = np.asarray(groups[name])
            hits = int(correct[members].sum())
            slices[name] = SliceMetrics(samples=len(members), accuracy=round(hits / len(members), 4), correct=hits)
    return EvaluationReport(
        accuracy=round(float(correct.mean()), 4) if len(targets) else 0.0,
        samples=len(targets),
        per_class=per_class,
        confusion_matrix=confusion.tolist(),
        labels=list(labels),
        slices=slices,
    )
