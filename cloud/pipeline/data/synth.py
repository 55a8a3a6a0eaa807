"""``edgefleet data synth``: write an ImageFolder dataset of synthetic scenes with metadata."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from agent.capture.scenes import SCENE_CLASSES, SceneConditions, render_scene

# Named capture conditions; written to metadata.csv so they can be used as slices.
LIGHTING = {"normal": 1.0, "dim": 0.7, "bright": 1.2}


def write_synthetic_dataset(
    root: Path,
    *,
    images_per_class: int = 200,
    size: int = 64,
    seed: int = 0,
    blur_sigma: float = 0.0,
    noise_std: float = 3.0,
    lighting: tuple[str, ...] = ("normal", "dim", "bright"),
) -> Path:
    """Write ``root/<class>/<n>.png`` and ``root/metadata.csv``; return ``root``.

    Raises:
        ValueError: an unknown lighting name or a non-positive count.
    """
    if images_per_class <= 0:
        raise ValueError("images_per_class must be positive")
    unknown = set(lighting) - LIGHTING.keys()
    if unknown:
        raise ValueError(f"unknown lighting {sorted(unknown)}; choose from {sorted(LIGHTING)}")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    for label in SCENE_CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            light = lighting[int(rng.integers(len(lighting)))]
            conditions = SceneConditions(brightness=LIGHTING[light], blur_sigma=blur_sigma, noise_std=noise_std)
            image = render_scene(label, rng, size=size, conditions=conditions)
            relative = f"{label}/{index:05d}.png"
            cv2.imwrite(str(root / relative), image)
            rows.append({"file": relative, "lighting": light, "camera": f"cam{index % 3}"})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "lighting", "camera"])
        writer.writeheader()
        writer.writerows(rows)
    return root
