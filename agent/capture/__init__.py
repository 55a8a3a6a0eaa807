"""Frame sources and the newest-frame-wins hand-off between capture and inference."""

from agent.capture.latest import FrameSlot
from agent.capture.source import FrameSource, OpenCvSource, open_source

__all__ = ["FrameSlot", "FrameSource", "OpenCvSource", "open_source"]
