"""The quick-start settings: one place for the synthetic dataset and training settings that pass the gates.

``edgefleet data synth`` and ``edgefleet train`` take their defaults from here, and so do
``edgefleet demo`` and the walkthroughs in README.md, docs/pipeline.md and docs/first-fleet.md,
so a documented quick start ends in a model the validation gate accepts. Kept free of torch:
the CLI reads it at start-up.

Measured on two shared cores (seeds 0-2): 150 images per class at 64 px, 6 epochs give test
accuracy 0.90-0.96 (the gate asks 0.80) in 10-35 s of training; 60 per class or 4 epochs
stay under the gate (0.52-0.71).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DETECTION_QUICKSTART", "QUICKSTART", "DetectionQuickstartSettings", "QuickstartSettings"]


@dataclass(frozen=True)
class QuickstartSettings:
    """A synthetic dataset and the training settings that make a model of it pass the validation gate."""

    images_per_class: int = 150
    image_size: int = 64
    dataset_seed: int = 0
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 2e-2


QUICKSTART = QuickstartSettings()


@dataclass(frozen=True)
class DetectionQuickstartSettings:
    """A synthetic detection dataset (``edgefleet data synth-detection``) and the grid detector's training
    settings that pass the mAP gate (mAP@0.5 0.5 overall, 0.4 per slice of 20+ test images).

    ``edgefleet demo`` (``--task detection``, its default) trains with these. Measured on two shared
    cores (dataset seeds 0-1): 600 scenes, width 16, 15 epochs give test mAP@0.5 0.88-0.91 in 26-34 s
    of training and evaluation; 800 scenes, width 24, 20 epochs reach 0.92-0.94 but take 110-120 s.
    """

    images: int = 600
    dataset_seed: int = 0
    epochs: int = 15
    width: int = 16
    batch_size: int = 16
    seed: int = 0


DETECTION_QUICKSTART = DetectionQuickstartSettings()
