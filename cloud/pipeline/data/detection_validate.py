"""Detection dataset validation: every problem named with its file (and line, for YOLO labels).

Pure over a scanned :class:`DetectionDataset` plus the image decoder. Errors block
ingest (a box that cannot be trained on, or an unreadable image); warnings and counts
are reported and kept, as for classification datasets
(:mod:`cloud.pipeline.data.validate`).

Rules:

* ``class_out_of_range`` (error): a class id outside ``0..len(labels)-1``.
* ``zero_area_box`` (error): width or height not above zero.
* ``box_outside_image`` (error): a box edge beyond the image by more than
  ``ValidationLimits.box_tolerance`` of its side (annotation tools round; a box a pixel
  over the edge is fine and kept as is).
* ``corrupt`` (error): an image that cannot be decoded.
* ``duplicate`` (warning): the same bytes twice (always the same split: splits follow content).
* ``cross_split_duplicate`` (warning): a near-duplicate (difference hash) of a training image in val/test: leakage.
* unlabelled images are allowed (negative frames) and counted in ``unlabelled_images``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.pipeline.data.dataset import decode_image
from cloud.pipeline.data.detection import DetectionDataset, DetectionSample
from cloud.pipeline.data.validate import (
    DatasetIssue,
    IssueReport,
    _difference_hash,
    cross_split_issue,
    duplicate_issue,
    same_bytes,
    train_near_duplicates,
)


@dataclass(frozen=True)
class DetectionLimits:
    # How far (a fraction of the image's side) a box may reach past the edge.
    box_tolerance: float = 0.01
    # Hamming distance between 256-bit difference hashes at or below which two images are near-duplicates.
    near_duplicate_bits: int = 6


@dataclass
class DetectionValidationReport(IssueReport):
    images: int = 0
    boxes: int = 0
    unlabelled_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors()

    def errors(self) -> list[DatasetIssue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    def summary(self) -> dict[str, object]:
        return {"dataset_id": self.dataset_id, "ok": self.ok, "images": self.images, "boxes": self.boxes,
                "unlabelled_images": self.unlabelled_images, "counts": self.counts(),
                "issues": [issue.as_dict() for issue in self.issues]}


def check_box(box: tuple[int, float, float, float, float], num_classes: int,
              tolerance: float) -> tuple[str, str] | None:
    """The first rule a box breaks, as (kind, reason), or None."""
    class_id, cx, cy, w, h = box
    if not 0 <= class_id < num_classes:
        shown = "an undeclared category" if class_id < 0 else f"class {class_id}"
        return "class_out_of_range", f"{shown} is outside 0..{num_classes - 1}"
    if w <= 0 or h <= 0:
        return "zero_area_box", f"box has zero area (w {w:g}, h {h:g}); remove it"
    low, high = -tolerance, 1 + tolerance
    edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if min(edges) < low or max(edges) > high:
        x1, y1, x2, y2 = edges
        return "box_outside_image", (f"box reaches outside the image (normalised x {x1:.3f}..{x2:.3f}, "
                                     f"y {y1:.3f}..{y2:.3f}; allowed {low:g}..{high:g}); fix or clip it")
    return None


def validate_detection_dataset(dataset: DetectionDataset,
                               limits: DetectionLimits = DetectionLimits()) -> DetectionValidationReport:
    """Check every box and image; the dataset is unchanged (errors block, warnings are reported)."""
    report = DetectionValidationReport(dataset_id=dataset.dataset_id, images=len(dataset.samples))
    for sample in dataset.samples:
        report.boxes += len(sample.boxes)
        if not sample.boxes:
            report.unlabelled_images += 1
        for index, box in enumerate(sample.boxes):
            broken = check_box(box, len(dataset.labels), limits.box_tolerance)
            if broken:
                where = sample.box_sources[index] if index < len(sample.box_sources) else sample.relative
                report.issues.append(DatasetIssue(broken[0], "error", where, f"{sample.relative}: {broken[1]}"))

    hashes: list[tuple[int, DetectionSample]] = []
    for sample in dataset.samples:
        image = decode_image(sample.path)
        if image is None:
            report.issues.append(DatasetIssue("corrupt", "error", sample.relative,
                                              "cannot be decoded as an image; replace or remove it"))
            continue
        hashes.append((_difference_hash(image), sample))

    for first, other in same_bytes(dataset.samples):
        report.issues.append(duplicate_issue(first.relative, other.relative))
    for sample, twin in train_near_duplicates(hashes, limits.near_duplicate_bits):
        report.issues.append(cross_split_issue(sample.relative, twin.relative, sample.split,
                                               ": test results will be optimistic"))
    return report


__all__ = ["DetectionLimits", "DetectionValidationReport", "check_box", "validate_detection_dataset"]
