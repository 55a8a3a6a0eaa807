"""Content-addressed dataset versions from ImageFolder directories.

The dataset id is a hash of (class, file sha256) pairs, so the same bytes give the
same id wherever they live. Each image's split comes from its content hash, so
adding images never moves an existing one between train and test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.contract import PreprocessSpec, sha256_file
from agent.preprocess import preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    sha256: str

    @property
    def split(self) -> str:
        bucket = int(self.sha256[:8], 16) % 100
        return "train" if bucket < 70 else "val" if bucket < 85 else "test"


@dataclass
class DatasetVersion:
    root: Path
    dataset_id: str
    labels: list[str]
    samples: list[Sample] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def scan_imagefolder(root: Path) -> DatasetVersion:
    """Index ``root/<class>/*`` images. Raises ``ValueError`` if there are fewer than 2 classes."""
    if not root.is_dir():
        raise ValueError(f"dataset directory {root} does not exist")
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(labels) < 2:
        raise ValueError(f"{root} needs at least two class directories, found {labels}")
    samples = [
        Sample(path=path, label=label, sha256=sha256_file(path))
        for label in labels
        for path in sorted((root / label).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: (s.label, s.sha256)):
        digest.update(f"{sample.label}\0{sample.sha256}\n".encode())
    return DatasetVersion(root=root, dataset_id=f"ds-{digest.hexdigest()[:16]}", labels=labels, samples=samples)


def load_tensors(
    samples: list[Sample], labels: list[str], spec: PreprocessSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Decode and preprocess with the agent's own preprocessing; unreadable files are skipped."""
    tensors: list[npt.NDArray[np.generic]] = []
    targets: list[int] = []
    for sample in samples:
        image = cv2.imread(str(sample.path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        tensors.append(preprocess(np.asarray(image, dtype=np.uint8), spec)[0])
        targets.append(labels.index(sample.label))
    if not tensors:
        return np.zeros((0, *spec.input_shape(1)[1:]), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return np.stack(tensors).astype(np.float32), np.asarray(targets, dtype=np.int64)
