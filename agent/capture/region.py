"""A camera's region of interest: only that part of each frame reaches the model.

The region is given as fractions of the frame, so it survives a camera that changes
resolution; the crop is a view (no copy) taken after decode, before preprocessing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.capture.crop import crop_to_region
from agent.capture.source import FrameSource
from agent.capture.stream import StreamSource
from agent.contract.messages import CameraRegion

__all__ = ["RegionSource", "crop_to_region", "with_region"]


class RegionSource:
    """A :class:`FrameSource` whose frames are cropped to ``region``."""

    def __init__(self, inner: FrameSource, region: CameraRegion) -> None:
        self.inner = inner
        self.region = region
        self.reconnects = inner.reconnects

    def grab(self) -> bool:
        grabbed = self.inner.grab()
        self.reconnects = self.inner.reconnects
        return grabbed

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        frame = self.inner.retrieve()
        return None if frame is None else crop_to_region(frame, self.region)

    def close(self) -> None:
        self.inner.close()


def with_region(source: FrameSource, region: CameraRegion | None) -> FrameSource:
    """``source`` restricted to ``region`` (unchanged when None). A network camera crops in place,
    so the pipeline still sees a :class:`StreamSource` and reports its connection health."""
    if region is None:
        return source
    if isinstance(source, StreamSource):
        source.region = region
        return source
    return RegionSource(source, region)
