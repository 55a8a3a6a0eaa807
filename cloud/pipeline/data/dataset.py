"""Content-addressed dataset versions from ImageFolder directories.

The dataset id is a hash of the (class, file sha256) pairs and of the per-image
metadata, so the same bytes give the same id wherever they live. Each image's
split comes from its content hash, so adding images never moves an existing one
between train and test, and exact duplicates always land in the same split.

Ingest copies every image into a content-addressed object store
(``<store>/objects/<sha256[:2]>/<sha256>``) and writes ``<store>/<dataset_id>.json``,
so a version stays readable after its source directory changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from agent.contract import PreprocessSpec, sha256_file
from agent.preprocess import preprocess
from cloud.core.ids import check_dataset_id
from cloud.pipeline.errors import PipelineInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.csv"
DEFAULT_SPLIT_PERCENT = (70, 15, 15)


def split_for(sha256: str, percent: tuple[int, int, int] = DEFAULT_SPLIT_PERCENT) -> str:
    """The split an image belongs to, from its content hash alone (deterministic, stable)."""
    bucket = int(sha256[:8], 16) % 100
    if bucket < percent[0]:
        return "train"
    return "val" if bucket < percent[0] + percent[1] else "test"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    sha256: str
    # Relative path inside the source directory: what reports and metadata refer to.
    relative: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    split_name: str | None = None

    @property
    def split(self) -> str:
        return self.split_name or split_for(self.sha256)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)


@dataclass
class DatasetVersion:
    root: Path
    dataset_id: str
    labels: list[str]
    samples: list[Sample] = field(default_factory=list)
    metadata_fields: list[str] = field(default_factory=list)
    # What validation found; filled by :func:`cloud.pipeline.data.validate.validate_dataset`.
    issues: list[dict[str, str]] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def split_counts(self) -> dict[str, dict[str, int]]:
        counts = {name: dict.fromkeys(self.labels, 0) for name in SPLITS}
        for sample in self.samples:
            counts[sample.split][sample.label] += 1
        return counts

    def to_manifest(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "labels": self.labels,
            "metadata_fields": self.metadata_fields,
            "issues": self.issues,
            "samples": [
                {"file": s.relative, "label": s.label, "sha256": s.sha256, "split": s.split, "metadata": s.meta}
                for s in self.samples
            ],
        }


def _read_metadata(root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    path = root / METADATA_FILE
    if not path.exists():
        return {}, []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "file" not in reader.fieldnames:
            raise PipelineInputError(f"{path} needs a header row with a 'file' column (relative image path)")
        fields = [name for name in reader.fieldnames if name != "file"]
        rows = {row["file"]: {k: (row.get(k) or "") for k in fields} for row in reader}
    return rows, fields


def dataset_id_for(samples: list[Sample]) -> str:
    """The content address: same (label, bytes, metadata) set gives the same id, in any order."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: (s.label, s.sha256, s.metadata)):
        meta = ",".join(f"{k}={v}" for k, v in sample.metadata)
        digest.update(f"{sample.label}\0{sample.sha256}\0{meta}\n".encode())
    return f"ds-{digest.hexdigest()[:16]}"


def scan_imagefolder(root: Path) -> DatasetVersion:
    """Index ``root/<class>/*`` images (and ``root/metadata.csv`` if present).

    Every file with an image suffix is listed, readable or not: validation decides
    what is excluded, and reports it.

    Raises:
        PipelineInputError: ``root`` is missing, or has fewer than two class directories.
    """
    if not root.is_dir():
        raise PipelineInputError(f"dataset directory {root} does not exist")
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(labels) < 2:
        raise PipelineInputError(f"{root} needs at least two class directories (root/<class>/*.png), found {labels}")
    metadata, fields = _read_metadata(root)
    samples = []
    for label in labels:
        for path in sorted((root / label).iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            relative = f"{label}/{path.name}"
            meta = tuple(sorted(metadata.get(relative, {}).items()))
            samples.append(Sample(path=path, label=label, sha256=sha256_file(path), relative=relative, metadata=meta))
    return DatasetVersion(root=root, dataset_id=dataset_id_for(samples), labels=labels, samples=samples,
                          metadata_fields=fields)


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)  # atomic: a half-copied object never has its final name


def store_dataset(dataset: DatasetVersion, store_dir: Path) -> DatasetVersion:
    """Copy ``dataset``'s images into the object store and write its manifest; return the stored version."""
    stored_samples = []
    for sample in dataset.samples:
        target = store_dir / "objects" / sample.sha256[:2] / sample.sha256
        _link_or_copy(sample.path, target)
        stored_samples.append(Sample(path=target, label=sample.label, sha256=sample.sha256, relative=sample.relative,
                                     metadata=sample.metadata, split_name=sample.split))
    stored = DatasetVersion(root=store_dir, dataset_id=dataset.dataset_id, labels=dataset.labels,
                            samples=stored_samples, metadata_fields=dataset.metadata_fields, issues=dataset.issues)
    manifest_path = store_dir / f"{dataset.dataset_id}.json"
    temporary = manifest_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(stored.to_manifest(), indent=1, sort_keys=True))
    os.replace(temporary, manifest_path)
    return stored


def load_stored_dataset(store_dir: Path, dataset_id: str) -> DatasetVersion:
    """Raises ``PipelineInputError`` when ``dataset_id`` is malformed or was never ingested into ``store_dir``."""
    try:
        check_dataset_id(dataset_id)  # before it becomes part of a path
    except ValueError as exc:
        raise PipelineInputError(str(exc)) from None
    manifest_path = store_dir / f"{dataset_id}.json"
    if not manifest_path.exists():
        raise PipelineInputError(f"dataset {dataset_id!r} is not in {store_dir}; ingest it first (edgefleet data ingest)")
    manifest = json.loads(manifest_path.read_text())
    samples = [
        Sample(path=store_dir / "objects" / row["sha256"][:2] / row["sha256"], label=row["label"], sha256=row["sha256"],
               relative=row["file"], metadata=tuple(sorted(row["metadata"].items())), split_name=row["split"])
        for row in manifest["samples"]
    ]
    return DatasetVersion(root=store_dir, dataset_id=dataset_id, labels=manifest["labels"], samples=samples,
                          metadata_fields=manifest["metadata_fields"], issues=manifest["issues"])


def decode_image(path: Path) -> npt.NDArray[np.uint8] | None:
    """The image as BGR uint8, or ``None`` when the file is unreadable or not an image."""
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if raw.size == 0:
        return None
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image, dtype=np.uint8)


# A drift reference needs this many images (cloud/monitor/reference.py); the build takes
# at most REFERENCE_MAX_IMAGES of them so that large validation splits stay quick.
REFERENCE_MIN_IMAGES = 64
REFERENCE_MAX_IMAGES = 1000


class _Stored(Protocol):
    @property
    def path(self) -> Path: ...


class _Split(Protocol):
    def split(self, name: str) -> Sequence[_Stored]: ...


def reference_images(dataset: _Split) -> tuple[list[npt.NDArray[np.uint8]], str]:
    """The readable held-out images a drift reference is built from, and the splits they came from.

    The validation split, topped up with the test split when it has fewer than
    ``REFERENCE_MIN_IMAGES``; at most ``REFERENCE_MAX_IMAGES`` are read. The caller checks
    there are enough (and says why there is no reference when not).
    """
    chosen, split_names = list(dataset.split("val")), "val"
    if len(chosen) < REFERENCE_MIN_IMAGES:
        chosen, split_names = [*chosen, *dataset.split("test")], "val+test"
    images = [image for image in (decode_image(s.path) for s in chosen[:REFERENCE_MAX_IMAGES]) if image is not None]
    return images, split_names


def load_tensors(
    samples: list[Sample], labels: list[str], spec: PreprocessSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Decode and preprocess with the agent's own preprocessing; unreadable files are skipped."""
    tensors, targets = load_tensors_with_index(samples, labels, spec)[:2]
    return tensors, targets


def load_tensors_with_index(
    samples: list[Sample], labels: list[str], spec: PreprocessSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[Sample]]:
    """Like :func:`load_tensors`, also returning the samples that decoded (to line up slices)."""
    tensors: list[npt.NDArray[np.generic]] = []
    targets: list[int] = []
    kept: list[Sample] = []
    for sample in samples:
        image = decode_image(sample.path)
        if image is None:
            continue
        tensors.append(preprocess(image, spec)[0])
        targets.append(labels.index(sample.label))
        kept.append(sample)
    if not tensors:
        return (np.zeros((0, *spec.input_shape(1)[1:]), dtype=np.float32), np.zeros((0,), dtype=np.int64), [])
    return np.stack(tensors).astype(np.float32), np.asarray(targets, dtype=np.int64), kept
