"""Cropping a frame to a region of interest given as fractions of the frame."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.contract.messages import CameraRegion

__all__ = ["crop_to_region"]


def crop_to_region(frame: npt.NDArray[np.uint8], region: CameraRegion) -> npt.NDArray[np.uint8]:
    """The part of ``frame`` (H x W x C) that ``region`` covers, at least one pixel each way."""
    height, width = frame.shape[:2]
    left = min(int(region.x * width), width - 1)
    top = min(int(region.y * height), height - 1)
    right = max(left + 1, min(width, round((region.x + region.width) * width)))
    bottom = max(top + 1, min(height, round((region.y + region.height) * height)))
    return frame[top:bottom, left:right]
