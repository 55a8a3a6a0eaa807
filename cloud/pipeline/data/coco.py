"""COCO detection JSON → the same in-memory :class:`DetectionDataset` as the YOLO layout.

On disk::

    root/annotations.json       (or the only *.json in root/ or root/annotations/)
    root/images/<file_name>     image files named by the JSON's ``images[].file_name``
                                (root/<file_name> when there is no images/ folder)
    root/metadata.csv           optional, as for YOLO: ``file`` is ``images/<file_name>``

Classes: COCO category ids are arbitrary (often 1-based, with gaps), so classes are
ordered by ascending category id: the category with the smallest id is class 0. A YOLO
``classes.txt`` listing the names in that order gives the same dataset id for the same
images and boxes. Boxes ``[x, y, w, h]`` (pixels, top-left corner) become normalised
centre boxes using the image's ``width`` and ``height`` from the JSON. Only images
listed in the JSON belong to the dataset; one without annotations is a negative frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.contract import sha256_file
from cloud.pipeline.data.dataset import _read_metadata
from cloud.pipeline.data.detection import (
    IMAGES_DIR,
    DetectionDataset,
    DetectionSample,
    YoloBox,
    detection_dataset_id,
)
from cloud.pipeline.errors import PipelineInputError

ANNOTATIONS_FILE = "annotations.json"
# A box whose category is not declared gets this class id, which validation reports as out of range.
UNKNOWN_CLASS = -1


def find_coco_annotations(root: Path) -> Path | None:
    """The annotations file of a COCO directory, or None when ``root`` does not look like one."""
    if (root / ANNOTATIONS_FILE).is_file():
        return root / ANNOTATIONS_FILE
    for folder in (root, root / "annotations"):
        candidates = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(candidates) == 1:
            return candidates[0]
    return None


def is_coco_dataset(root: Path) -> bool:
    path = find_coco_annotations(root)
    if path is None:
        return False
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and {"images", "annotations", "categories"} <= document.keys()


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise PipelineInputError(f"{where}: {what}")


def coco_labels(categories: list[dict[str, Any]], where: str) -> tuple[list[str], dict[int, int]]:
    """Class names ordered by category id, and category id → class index."""
    _require(isinstance(categories, list) and all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                                  and isinstance(c.get("name"), str) for c in categories),
             where, "every entry of 'categories' needs an integer 'id' and a string 'name'")
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    names = [str(c["name"]) for c in ordered]
    _require(len(names) >= 2 and len(set(names)) == len(names), where,
             "'categories' must declare at least two distinct names")
    _require(len({c["id"] for c in ordered}) == len(ordered), where, "category ids must be unique")
    return names, {int(c["id"]): index for index, c in enumerate(ordered)}


def coco_box(bbox: Any, category: int, width: float, height: float) -> YoloBox:
    """COCO ``[x, y, w, h]`` in pixels (top-left) → ``(class, cx, cy, w, h)`` normalised."""
    x, y, w, h = (float(v) for v in bbox)
    return (category, (x + w / 2) / width, (y + h / 2) / height, w / width, h / height)


def scan_coco_dataset(root: Path) -> DetectionDataset:
    """Read a COCO detection directory.

    Class ids and box ranges are checked by validation, as for YOLO; this only checks the JSON's shape.

    Raises:
        PipelineInputError: no annotations file, malformed JSON, an annotation naming an unknown
            image, or an image file that is missing (each named with the JSON's path).
    """
    if not root.is_dir():
        raise PipelineInputError(f"dataset directory {root} does not exist")
    path = find_coco_annotations(root)
    if path is None:
        raise PipelineInputError(f"{root} is not a COCO dataset: put the annotations in {root / ANNOTATIONS_FILE}")
    where = path.relative_to(root).as_posix()
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise PipelineInputError(f"{where} is not valid JSON: {exc}") from None
    _require(isinstance(document, dict) and {"images", "annotations", "categories"} <= document.keys(), where,
             "a COCO detection file needs 'images', 'annotations' and 'categories'")
    labels, class_of = coco_labels(document["categories"], where)
    image_dir = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
    images: dict[int, dict[str, Any]] = {}
    for image in document["images"]:
        _require(isinstance(image, dict) and isinstance(image.get("id"), int)
                 and isinstance(image.get("file_name"), str), where,
                 f"every image needs an integer 'id' and a 'file_name'; got {str(image)[:80]}")
        _require(all(isinstance(image.get(k), int) and image[k] > 0 for k in ("width", "height")), where,
                 f"image {image['id']} ({image['file_name']}) needs positive integer 'width' and 'height'")
        _require((image_dir / image["file_name"]).is_file(), where,
                 f"image {image['id']}: file {image_dir / image['file_name']} does not exist")
        images[int(image["id"])] = image
    boxes: dict[int, list[tuple[YoloBox, str]]] = {image_id: [] for image_id in images}
    for annotation in document["annotations"]:
        ident = annotation.get("id") if isinstance(annotation, dict) else None
        source = f"{where}: annotation {ident}"
        _require(isinstance(annotation, dict) and annotation.get("image_id") in images, where,
                 f"annotation {ident} names image_id {annotation.get('image_id') if isinstance(annotation, dict) else None}, "
                 "which is not in 'images'")
        bbox = annotation.get("bbox")
        _require(isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox),
                 source, f"'bbox' must be [x, y, w, h] in pixels, got {str(bbox)[:80]}")
        image = images[annotation["image_id"]]
        category = class_of.get(annotation.get("category_id"), UNKNOWN_CLASS)
        if category == UNKNOWN_CLASS:
            source += f" (category_id {annotation.get('category_id')} is not in 'categories')"
        boxes[annotation["image_id"]].append((coco_box(bbox, category, image["width"], image["height"]), source))
    metadata, fields = _read_metadata(root)
    samples = []
    for image_id, image in sorted(images.items()):
        file = image_dir / image["file_name"]
        relative = f"{IMAGES_DIR}/{image['file_name']}"
        meta = tuple(sorted(metadata.get(relative, {}).items()))
        samples.append(DetectionSample(path=file, sha256=sha256_file(file), relative=relative,
                                       boxes=tuple(b for b, _ in boxes[image_id]),
                                       box_sources=tuple(s for _, s in boxes[image_id]), metadata=meta))
    if not samples:
        raise PipelineInputError(f"{where} lists no images")
    return DetectionDataset(root=root, dataset_id=detection_dataset_id(labels, samples), labels=labels,
                            samples=samples, metadata_fields=fields)
