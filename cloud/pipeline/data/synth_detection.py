"""Synthetic detection scenes: several shapes per frame with boxes, written in YOLO layout.

Each frame has one to four objects of three classes (circle, square, triangle) of
varied size on a textured background (gradient, blotches, stripes); a later object
may partly cover an earlier one. Every frame is rendered under a named lighting
condition and by one of three simulated cameras (each with its own noise, blur and
colour cast), both written to ``metadata.csv`` so evaluation can report them as
slices. Seeded: the same arguments write the same bytes. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from cloud.pipeline.data.detection import CLASSES_FILE, IMAGES_DIR, LABELS_DIR, METADATA_FILE

DETECTION_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
LIGHTING = {"normal": 1.0, "dim": 0.6, "bright": 1.3}


@dataclass(frozen=True)
class Camera:
    noise_std: float
    blur_sigma: float
    # Per-channel gain (B, G, R): a camera's colour cast.
    gain: tuple[float, float, float]


CAMERAS = {
    "cam0": Camera(noise_std=3.0, blur_sigma=0.0, gain=(1.0, 1.0, 1.0)),
    "cam1": Camera(noise_std=6.0, blur_sigma=0.8, gain=(1.1, 1.0, 0.9)),
    "cam2": Camera(noise_std=2.0, blur_sigma=0.0, gain=(0.9, 1.0, 1.1)),
}


@dataclass(frozen=True)
class SceneObject:
    """One object: class index and its box in pixels (x1, y1, x2, y2)."""

    class_id: int
    box: tuple[float, float, float, float]


def _background(rng: np.random.Generator, width: int, height: int) -> npt.NDArray[np.float32]:
    base = rng.uniform(30, 110, size=3)
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = base
    ramp_x = np.linspace(-1, 1, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    ramp_y = np.linspace(-1, 1, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    canvas += 25 * (rng.uniform(-1, 1) * ramp_x + rng.uniform(-1, 1) * ramp_y)
    # Texture: soft blotches (low-frequency noise) and, sometimes, stripes.
    coarse = rng.normal(0, 18, size=(max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    canvas += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        period = rng.uniform(6, 18)
        angle = rng.uniform(0, math.pi)
        xs, ys = np.meshgrid(np.arange(width), np.arange(height))
        stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
        canvas += (10 * stripes)[:, :, np.newaxis].astype(np.float32)
    return canvas


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw(image: npt.NDArray[np.float32], class_id: int, box: tuple[float, float, float, float],
          colour: tuple[float, float, float], rng: np.random.Generator) -> None:
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    name = DETECTION_CLASSES[class_id]
    shift = 16  # sub-pixel drawing (4 fractional bits): boxes stay exact at small sizes
    if name == "circle":
        cv2.circle(image, (round(cx * shift), round(cy * shift)), round(half * shift), colour, -1, cv2.LINE_AA, 4)
    elif name == "square":
        points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        cv2.fillPoly(image, [np.round(points * shift).astype(np.int32)], colour, cv2.LINE_AA, 4)
    else:
        # Upright or upside-down triangle spanning its box.
        points = (np.array([[cx, y1], [x2, y2], [x1, y2]]) if rng.random() < 0.5
                  else np.array([[x1, y1], [x2, y1], [cx, y2]]))
        cv2.fillPoly(image, [np.round(points * shift).astype(np.int32)], colour, cv2.LINE_AA, 4)


def render_detection_scene(rng: np.random.Generator, *, width: int, height: int, lighting: str = "normal",
                           camera: str = "cam0", max_objects: int = 4,
                           min_size: float = 16.0, max_size: float = 56.0,
                           class_weights: tuple[float, ...] | None = None,
                           ) -> tuple[npt.NDArray[np.uint8], list[SceneObject]]:
    """One BGR frame and its objects (boxes in pixels, in drawing order).

    Objects may overlap (IoU up to 0.3), so later ones partly occlude earlier ones.
    ``class_weights`` (one per class, default equal) makes some kinds of object
    commoner than others: a scene whose mix of objects drifted.

    Raises:
        ValueError: an unknown lighting or camera name, or class weights that are not one per class.
    """
    probabilities = None
    if class_weights is not None:
        weights = np.asarray(class_weights, dtype=np.float64)
        if weights.shape != (len(DETECTION_CLASSES),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"class_weights must be {len(DETECTION_CLASSES)} non-negative numbers, not all zero")
        probabilities = weights / weights.sum()
    if lighting not in LIGHTING:
        raise ValueError(f"unknown lighting {lighting!r}; choose from {sorted(LIGHTING)}")
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; choose from {sorted(CAMERAS)}")
    image = _background(rng, width, height)
    objects: list[SceneObject] = []
    count = int(rng.integers(1, max_objects + 1))
    for _ in range(count):
        for _attempt in range(20):
            side = float(rng.uniform(min_size, max_size))
            aspect = float(rng.uniform(0.75, 1.33)) if rng.random() < 0.5 else 1.0
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            x1, y1 = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            box = (x1, y1, x1 + w, y1 + h)
            if all(_iou(box, other.box) <= 0.3 for other in objects):
                break
        else:
            continue
        class_id = (int(rng.integers(len(DETECTION_CLASSES))) if probabilities is None
                    else int(rng.choice(len(DETECTION_CLASSES), p=probabilities)))
        colour = tuple(float(c) for c in rng.uniform(140, 255, size=3))
        # Circles are drawn with equal width and height: the box is the circle's.
        if DETECTION_CLASSES[class_id] == "circle":
            side = min(box[2] - box[0], box[3] - box[1])
            box = (box[0], box[1], box[0] + side, box[1] + side)
        _draw(image, class_id, box, colour, rng)  # type: ignore[arg-type]
        objects.append(SceneObject(class_id, box))
    settings = CAMERAS[camera]
    image *= np.asarray(settings.gain, dtype=np.float32) * LIGHTING[lighting]
    if settings.blur_sigma > 0:
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), settings.blur_sigma), dtype=np.float32)
    image += rng.normal(0, settings.noise_std, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def write_detection_dataset(root: Path, *, images: int = 600, width: int = 200, height: int = 150, seed: int = 0,
                            lighting: tuple[str, ...] = tuple(LIGHTING), cameras: tuple[str, ...] = tuple(CAMERAS),
                            object_scale: float = 1.0, class_weights: tuple[float, ...] | None = None) -> Path:
    """Write ``images`` frames in YOLO layout under ``root``; return ``root``.

    ``object_scale`` multiplies every object's size (0.5: objects half as large) and
    ``class_weights`` skews the mix of classes: shifted scenes for drift tests.

    ``root/classes.txt``, ``root/images/NNNNN.png``, ``root/labels/NNNNN.txt`` (one
    ``class cx cy w h`` line per object, normalised to 0..1) and ``root/metadata.csv``
    (``file,lighting,camera``).

    Raises:
        ValueError: a non-positive count or size, or an unknown lighting or camera.
    """
    if images <= 0 or width < 32 or height < 32:
        raise ValueError("images must be positive and the frame at least 32 x 32 pixels")
    if not 0.1 <= object_scale <= 2.0:
        raise ValueError(f"object_scale must be between 0.1 and 2.0, got {object_scale}")
    unknown = (set(lighting) - LIGHTING.keys()) | (set(cameras) - CAMERAS.keys())
    if unknown or not lighting or not cameras:
        raise ValueError(f"unknown or no lighting/camera {sorted(unknown)}; choose from {sorted(LIGHTING)} "
                         f"and {sorted(CAMERAS)}")
    rng = np.random.default_rng(seed)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (root / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    (root / CLASSES_FILE).write_text("\n".join(DETECTION_CLASSES) + "\n")
    rows: list[dict[str, str]] = []
    for index in range(images):
        light = lighting[int(rng.integers(len(lighting)))]
        camera = cameras[index % len(cameras)]
        image, objects = render_detection_scene(rng, width=width, height=height, lighting=light, camera=camera,
                                                min_size=16.0 * object_scale, max_size=56.0 * object_scale,
                                                class_weights=class_weights)
        name = f"{index:05d}"
        cv2.imwrite(str(root / IMAGES_DIR / f"{name}.png"), image)
        lines = []
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            lines.append(f"{obj.class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                         f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        (root / LABELS_DIR / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
        rows.append({"file": f"{IMAGES_DIR}/{name}.png", "lighting": light, "camera": camera})
    with (root / METADATA_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "lighting", "camera"])
        writer.writeheader()
        writer.writerows(rows)
    return root
