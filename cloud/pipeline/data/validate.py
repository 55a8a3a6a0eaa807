"""Dataset validation before training: every problem is reported with its file and reason.

Pure over a :class:`DatasetVersion` plus the image decoder. Corrupt or unreadable
images are *excluded* (the returned version no longer lists them); everything else
is reported and kept, because a duplicate or an odd size is a judgement call for
the operator, not a reason to crash or silently drop data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

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
class IssueReport:
    """The issues found in one dataset (classification and detection reports add their own counts)."""

    dataset_id: str
    issues: list[DatasetIssue] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(issue.kind for issue in self.issues))


@dataclass
class ValidationReport(IssueReport):
    excluded_files: list[str] = field(default_factory=list)
    usable_images: int = 0

    @property
    def ok(self) -> bool:
        """No issue that blocks training (corrupt files are excluded, so they do not block)."""
        return not any(i.severity == "error" and i.kind != "corrupt" for i in self.issues)


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


class _SplitSample(Protocol):
    @property
    def sha256(self) -> str: ...

    @property
    def split(self) -> str: ...


SampleT = TypeVar("SampleT", bound=_SplitSample)


def same_bytes(samples: Iterable[SampleT]) -> Iterator[tuple[SampleT, SampleT]]:
    """(first, copy) for every sample whose bytes an earlier one already has."""
    by_sha: dict[str, list[SampleT]] = defaultdict(list)
    for sample in samples:
        by_sha[sample.sha256].append(sample)
    for copies in by_sha.values():
        for other in copies[1:]:
            yield copies[0], other


def train_near_duplicates(hashes: Sequence[tuple[int, SampleT]],
                          near_duplicate_bits: int) -> Iterator[tuple[SampleT, SampleT]]:
    """(sample, its first near-duplicate in train) for each val/test sample that has one: test data leaking
    into training. ``hashes`` pairs each decodable sample with its :func:`_difference_hash`."""
    train = [(h, s) for h, s in hashes if s.split == "train"]
    if not train:
        return
    train_bits = _bits([h for h, _ in train])
    for image_hash, sample in hashes:
        if sample.split == "train":
            continue
        distances = (train_bits != _bits([image_hash])).sum(axis=1)
        for index in np.flatnonzero(distances <= near_duplicate_bits)[:1]:
            yield sample, train[int(index)][1]


def duplicate_issue(first: str, copy: str) -> DatasetIssue:
    return DatasetIssue("duplicate", "warning", copy, f"identical to {first} (same split by construction)")


def cross_split_issue(relative: str, train_twin: str, split: str, consequence: str = "") -> DatasetIssue:
    """A val/test image near-duplicating a train image; ``consequence`` is appended to the reason."""
    return DatasetIssue("cross_split_duplicate", "warning", relative,
                        f"near-duplicate of {train_twin} (train) while this image is in {split}{consequence}")


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
    for first, other in same_bytes(usable):
        if other.label != first.label:
            report.issues.append(DatasetIssue("label_conflict", "warning", other.relative,
                                              f"same bytes as {first.relative} but labelled {other.label!r} vs {first.label!r}"))
        else:
            report.issues.append(duplicate_issue(first.relative, other.relative))

    # Near-duplicates across splits leak test data into training; exact ones cannot (content-hash split).
    for sample, train_sample in train_near_duplicates(hashes, limits.near_duplicate_bits):
        if train_sample.sha256 != sample.sha256:
            report.issues.append(cross_split_issue(sample.relative, train_sample.relative, sample.split))

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


__all__ = [
    "DatasetIssue",
    "IssueReport",
    "ValidationLimits",
    "ValidationReport",
    "cross_split_issue",
    "dataset_id_for",
    "duplicate_issue",
    "same_bytes",
    "train_near_duplicates",
    "validate_dataset",
]
