"""Dataset validation before training: every problem is reported with its file and reason.

Pure over a :class:`DatasetVersion` plus the image decoder. Corrupt or unreadable
images are *excluded* (the returned version no longer lists them); everything else
is reported and kept, because a duplicate or an odd size is a judgement call for
the operator, not a reason to crash or silently drop data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import numpy.typing as npt

from cloud.pipeline.data.dataset import DatasetVersion, Sample, dataset_id_for, decode_image


@dataclass(frozen=True)
class ValidationLimits:
    min_images_per_class: int = 10
    min_side_px: int = 16
    max_aspect_ratio: float = 3.0
    # Hamming distance between 256-bit difference hashes at or below which two images are near-duplicates.
    near_duplicate_bits: int = 6


@dataclass(frozen=True)
class DatasetIssue:
    kind: str  # corrupt | duplicate | cross_split_duplicate | label_conflict | tiny_class | empty_class | odd_size
    severity: str  # error (excluded or blocks training) | warning
    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "severity": self.severity, "file": self.file, "reason": self.reason}


@dataclass
class ValidationReport:
    dataset_id: str
    issues: list[DatasetIssue] = field(default_factory=list)
    excluded_files: list[str] = field(default_factory=list)
    usable_images: int = 0

    @property
    def ok(self) -> bool:
        """No issue that blocks training (corrupt files are excluded, so they do not block)."""
        return not any(i.severity == "error" and i.kind != "corrupt" for i in self.issues)

    def counts(self) -> dict[str, int]:
        return dict(Counter(issue.kind for issue in self.issues))


def _difference_hash(image: npt.NDArray[np.uint8]) -> int:
    # dHash: robust to re-encoding and brightness changes, cheap. 16x16 = 256 bits: at 8x8,
    # distinct small scenes (a shape on a gradient) collide too often to be useful.
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (_HASH_SIDE + 1, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


_HASH_SIDE = 16


def _bits(hashes: list[int]) -> npt.NDArray[np.bool_]:
    return np.asarray([[(h >> i) & 1 for i in range(_HASH_SIDE * _HASH_SIDE)] for h in hashes], dtype=bool)


def validate_dataset(dataset: DatasetVersion, limits: ValidationLimits = ValidationLimits()) -> tuple[
        DatasetVersion, ValidationReport]:
    """Check every image; return the version without corrupt files, and the report.

    The returned version's id is computed over the usable images only: the id names
    what training sees, so a directory that differs only by a corrupt file gives the
    same version. The report lists what was excluded.
    """
    report = ValidationReport(dataset_id=dataset.dataset_id)
    usable: list[Sample] = []
    sizes: dict[str, tuple[int, int]] = {}
    hashes: list[tuple[int, Sample]] = []
    for sample in dataset.samples:
        image = decode_image(sample.path)
        if image is None:
            reason = "empty file" if sample.path.stat().st_size == 0 else "cannot be decoded as an image (corrupt or not an image)"
            report.issues.append(DatasetIssue("corrupt", "error", sample.relative, f"{reason}; excluded"))
            report.excluded_files.append(sample.relative)
            continue
        usable.append(sample)
        sizes[sample.relative] = (image.shape[1], image.shape[0])
        hashes.append((_difference_hash(image), sample))

    # Exact duplicates: same bytes. Same label → redundant; different labels → contradictory.
    by_sha: dict[str, list[Sample]] = defaultdict(list)
    for sample in usable:
        by_sha[sample.sha256].append(sample)
    for copies in by_sha.values():
        if len(copies) < 2:
            continue
        first = copies[0]
        for other in copies[1:]:
            if other.label != first.label:
                report.issues.append(DatasetIssue("label_conflict", "warning", other.relative,
                                                  f"same bytes as {first.relative} but labelled {other.label!r} vs {first.label!r}"))
            else:
                report.issues.append(DatasetIssue("duplicate", "warning", other.relative,
                                                  f"identical to {first.relative} (same split by construction)"))

    # Near-duplicates across splits leak test data into training; exact ones cannot (content-hash split).
    train_pairs = [(h, s) for h, s in hashes if s.split == "train"]
    if train_pairs:
        train_bits = _bits([h for h, _ in train_pairs])
        for image_hash, sample in hashes:
            if sample.split == "train":
                continue
            distances = (train_bits != _bits([image_hash])).sum(axis=1)
            for index in np.flatnonzero(distances <= limits.near_duplicate_bits)[:1]:
                train_sample = train_pairs[int(index)][1]
                if train_sample.sha256 == sample.sha256:
                    continue
                report.issues.append(DatasetIssue(
                    "cross_split_duplicate", "warning", sample.relative,
                    f"near-duplicate of {train_sample.relative} (train) while this image is in {sample.split}"))

    per_class = Counter(sample.label for sample in usable)
    for label in dataset.labels:
        count = per_class.get(label, 0)
        if count == 0:
            report.issues.append(DatasetIssue("empty_class", "error", f"{label}/",
                                              "class has no readable images; add images or remove the directory"))
        elif count < limits.min_images_per_class:
            report.issues.append(DatasetIssue("tiny_class", "warning", f"{label}/",
                                              f"only {count} readable images (< {limits.min_images_per_class}); "
                                              "its metrics will be noisy"))

    if sizes:
        common_size, _ = Counter(sizes.values()).most_common(1)[0]
        for relative, (width, height) in sizes.items():
            reasons = []
            if min(width, height) < limits.min_side_px:
                reasons.append(f"smaller than {limits.min_side_px}px")
            if max(width, height) / max(1, min(width, height)) > limits.max_aspect_ratio:
                reasons.append(f"aspect ratio above {limits.max_aspect_ratio:g}")
            if (width, height) != common_size and not reasons:
                reasons.append(f"differs from the dataset's usual {common_size[0]}x{common_size[1]}")
            if reasons:
                report.issues.append(DatasetIssue("odd_size", "warning", relative,
                                                  f"{width}x{height}: {', '.join(reasons)}"))

    report.usable_images = len(usable)
    report.dataset_id = dataset_id_for(usable)
    cleaned = replace(dataset, dataset_id=report.dataset_id, samples=usable,
                      issues=[issue.as_dict() for issue in report.issues])
    return cleaned, report


__all__ = ["DatasetIssue", "ValidationLimits", "ValidationReport", "dataset_id_for", "validate_dataset"]
