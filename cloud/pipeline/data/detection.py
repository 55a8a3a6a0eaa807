"""Detection datasets in YOLO layout, content-addressed like the classification ones.

On disk::

    root/classes.txt            one class name per line (line n = class id n)
    root/images/<name>.png      images (.png, .jpg, .jpeg, .bmp)
    root/labels/<name>.txt      one ``class cx cy w h`` line per object, normalised to 0..1
    root/metadata.csv           optional: ``file`` (e.g. images/a.png) and slice columns

An image without a label file has no objects (a negative frame). The dataset id
hashes the class list and every image's bytes, boxes and metadata, so the same
content gives the same id anywhere; each image's split comes from its content hash
(:func:`cloud.pipeline.data.dataset.split_for`), so adding images never moves one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract import PreprocessSpec, sha256_file
from agent.infer.detect import source_to_input
from agent.preprocess import preprocess
from cloud.core.ids import check_dataset_id
from cloud.pipeline.data.dataset import (
    IMAGE_SUFFIXES,
    SPLITS,
    _link_or_copy,
    _read_metadata,
    decode_image,
    split_for,
)
from cloud.pipeline.errors import PipelineInputError

CLASSES_FILE = "classes.txt"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
METADATA_FILE = "metadata.csv"
# Written next to the stored manifest so a store can tell a detection version from a classification one.
TASK = "detection"

# (class id, cx, cy, w, h) normalised to the image's width and height.
YoloBox = tuple[int, float, float, float, float]


@dataclass(frozen=True)
class DetectionSample:
    path: Path
    sha256: str
    relative: str
    boxes: tuple[YoloBox, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    split_name: str | None = None
    # Where each box came from ("labels/a.txt:3", "annotations.json: annotation 7"), for validation messages.
    # Not part of the dataset id, and not stored: a stored version has been validated.
    box_sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def split(self) -> str:
        return self.split_name or split_for(self.sha256)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)

    def boxes_xyxy(self, width: int, height: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Boxes in the image's pixels, (K, 4) x1, y1, x2, y2, and their (K,) class ids."""
        if not self.boxes:
            return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
        array = np.asarray([b[1:] for b in self.boxes], dtype=np.float64)
        cx, cy, w, h = array[:, 0] * width, array[:, 1] * height, array[:, 2] * width, array[:, 3] * height
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        return xyxy, np.asarray([b[0] for b in self.boxes], dtype=np.int64)


@dataclass
class DetectionDataset:
    root: Path
    dataset_id: str
    labels: list[str]
    samples: list[DetectionSample] = field(default_factory=list)
    metadata_fields: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[DetectionSample]:
        return [s for s in self.samples if s.split == name]

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Objects per class in each split (and ``images`` per split under the key ``_images``)."""
        counts = {name: {**dict.fromkeys(self.labels, 0), "_images": 0} for name in SPLITS}
        for sample in self.samples:
            counts[sample.split]["_images"] += 1
            for box in sample.boxes:
                counts[sample.split][self.labels[box[0]]] += 1
        return counts

    def to_manifest(self) -> dict[str, Any]:
        return {
            "task": TASK, "dataset_id": self.dataset_id, "labels": self.labels,
            "metadata_fields": self.metadata_fields,
            "samples": [{"file": s.relative, "sha256": s.sha256, "split": s.split, "metadata": s.meta,
                         "boxes": [list(b) for b in s.boxes]} for s in self.samples],
        }


def detection_dataset_id(labels: list[str], samples: list[DetectionSample]) -> str:
    """Same classes, bytes, boxes and metadata give the same id, in any order."""
    digest = hashlib.sha256(("detection\0" + "\0".join(labels) + "\n").encode())
    for sample in sorted(samples, key=lambda s: (s.sha256, s.boxes, s.metadata)):
        boxes = ";".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in sample.boxes)
        meta = ",".join(f"{k}={v}" for k, v in sample.metadata)
        digest.update(f"{sample.sha256}\0{boxes}\0{meta}\n".encode())
    return f"ds-{digest.hexdigest()[:16]}"


def is_detection_dataset(root: Path) -> bool:
    """Whether ``root`` looks like a YOLO-layout detection dataset (``images/`` and ``classes.txt``)."""
    return (root / IMAGES_DIR).is_dir() and (root / CLASSES_FILE).is_file()


def read_classes(path: Path) -> list[str]:
    """Raises ``PipelineInputError`` when the file lists fewer than two distinct names."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise PipelineInputError(f"{path} must list at least two distinct class names, one per line "
                                 "(the manifest's labels need two)")
    return names


def parse_label_file(path: Path, relative: str) -> tuple[tuple[YoloBox, ...], tuple[str, ...]]:
    """Parse one YOLO label file into its boxes and each box's ``file:line``.

    Only the syntax is checked here; ranges (class ids, boxes inside the image, zero area)
    are :func:`cloud.pipeline.data.detection_validate.validate_detection_dataset`'s job, so
    a COCO import is held to the same rules.

    Raises:
        PipelineInputError: a line that is not ``class cx cy w h`` (an integer and four numbers).
    """
    boxes: list[YoloBox] = []
    sources: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{relative}:{number}"
        if len(parts) != 5:
            raise PipelineInputError(f"{where}: expected 'class cx cy w h', got {line.strip()[:80]!r}")
        try:
            class_id = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise PipelineInputError(f"{where}: class must be an integer and cx cy w h numbers, "
                                     f"got {line.strip()[:80]!r}") from None
        boxes.append((class_id, cx, cy, w, h))
        sources.append(where)
    return tuple(boxes), tuple(sources)


def scan_detection_dataset(root: Path) -> DetectionDataset:
    """Index a YOLO-layout directory into a :class:`DetectionDataset`.

    Raises:
        PipelineInputError: a missing directory or classes file, or a malformed label line (file and line named).

    Class ids and box ranges are not checked here: validate the result
    (:func:`cloud.pipeline.data.detection_validate.validate_detection_dataset`) before using it.
    """
    if not root.is_dir():
        raise PipelineInputError(f"dataset directory {root} does not exist")
    if not is_detection_dataset(root):
        raise PipelineInputError(f"{root} is not a detection dataset: it needs {IMAGES_DIR}/, {LABELS_DIR}/ and "
                                 f"{CLASSES_FILE} (YOLO layout)")
    labels = read_classes(root / CLASSES_FILE)
    metadata, fields = _read_metadata(root)
    samples = []
    for path in sorted((root / IMAGES_DIR).iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = f"{IMAGES_DIR}/{path.name}"
        label_path = root / LABELS_DIR / f"{path.stem}.txt"
        boxes, sources = (parse_label_file(label_path, f"{LABELS_DIR}/{label_path.name}") if label_path.exists()
                          else ((), ()))
        meta = tuple(sorted(metadata.get(relative, {}).items()))
        samples.append(DetectionSample(path=path, sha256=sha256_file(path), relative=relative, boxes=boxes,
                                       metadata=meta, box_sources=sources))
    if not samples:
        raise PipelineInputError(f"{root / IMAGES_DIR} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return DetectionDataset(root=root, dataset_id=detection_dataset_id(labels, samples), labels=labels,
                            samples=samples, metadata_fields=fields)


def store_detection_dataset(dataset: DetectionDataset, store_dir: Path) -> DetectionDataset:
    """Copy the images into the content-addressed object store and write the version's manifest."""
    stored = []
    for sample in dataset.samples:
        target = store_dir / "objects" / sample.sha256[:2] / sample.sha256
        _link_or_copy(sample.path, target)
        stored.append(DetectionSample(path=target, sha256=sample.sha256, relative=sample.relative, boxes=sample.boxes,
                                      metadata=sample.metadata, split_name=sample.split))
    version = DetectionDataset(root=store_dir, dataset_id=dataset.dataset_id, labels=dataset.labels, samples=stored,
                               metadata_fields=dataset.metadata_fields)
    manifest_path = store_dir / f"{dataset.dataset_id}.json"
    temporary = manifest_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(version.to_manifest(), indent=1, sort_keys=True))
    os.replace(temporary, manifest_path)
    return version


def stored_task(store_dir: Path, dataset_id: str) -> str:
    """``detection`` or ``classification`` for a stored version (classification manifests name no task)."""
    check_dataset_id(dataset_id)
    path = store_dir / f"{dataset_id}.json"
    if not path.exists():
        return "classification"
    return str(json.loads(path.read_text()).get("task", "classification"))


def load_stored_detection_dataset(store_dir: Path, dataset_id: str) -> DetectionDataset:
    """Raises ``PipelineInputError`` when the id is malformed, unknown, or names a classification dataset."""
    try:
        check_dataset_id(dataset_id)
    except ValueError as exc:
        raise PipelineInputError(str(exc)) from None
    path = store_dir / f"{dataset_id}.json"
    if not path.exists():
        raise PipelineInputError(f"dataset {dataset_id!r} is not in {store_dir}; ingest it first")
    manifest = json.loads(path.read_text())
    if manifest.get("task") != TASK:
        raise PipelineInputError(f"dataset {dataset_id} is a classification dataset, not a detection one")
    samples = [DetectionSample(path=store_dir / "objects" / row["sha256"][:2] / row["sha256"], sha256=row["sha256"],
                               relative=row["file"], boxes=tuple((int(b[0]), *map(float, b[1:])) for b in row["boxes"]),  # type: ignore[misc]
                               metadata=tuple(sorted(row["metadata"].items())), split_name=row["split"])
               for row in manifest["samples"]]
    return DetectionDataset(root=store_dir, dataset_id=dataset_id, labels=manifest["labels"], samples=samples,
                            metadata_fields=manifest["metadata_fields"])


@dataclass
class DetectionTensors:
    """Preprocessed images with their ground truth, in model-input and in source pixels.

    ``images`` keeps the decoded frames too: evaluation runs each one through the
    agent's own preprocessing and decoder, mapping boxes back to the source frame.
    """

    x: npt.NDArray[np.float32]
    boxes_input: list[npt.NDArray[np.float32]]  # per image (K, 4) xyxy in model-input pixels
    boxes_source: list[npt.NDArray[np.float32]]  # per image (K, 4) xyxy in source pixels
    classes: list[npt.NDArray[np.int64]]
    sizes: list[tuple[int, int]]  # (width, height) of each source image
    metadata: list[dict[str, str]]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.x)


def load_detection_tensors(samples: list[DetectionSample], spec: PreprocessSpec) -> DetectionTensors:
    """Decode and preprocess with the agent's own code; unreadable images are skipped."""
    tensors: list[npt.NDArray[np.generic]] = []
    result = DetectionTensors(np.zeros(0, dtype=np.float32), [], [], [], [], [], [])
    for sample in samples:
        image = decode_image(sample.path)
        if image is None:
            continue
        height, width = image.shape[:2]
        xyxy, classes = sample.boxes_xyxy(width, height)
        tensors.append(preprocess(image, spec)[0])
        result.boxes_source.append(xyxy)
        result.boxes_input.append(source_to_input(xyxy, spec, width, height))
        result.classes.append(classes)
        result.sizes.append((width, height))
        result.metadata.append(sample.meta)
        result.ids.append(sample.relative)
    result.x = (np.stack(tensors).astype(np.float32) if tensors
                else np.zeros((0, *spec.input_shape(1)[1:]), dtype=np.float32))
    return result
