"""Frame sources and the newest-frame-wins hand-off between capture and inference."""

from agent.capture.latest import FrameItem, FramePolicy, FrameSlot
from agent.capture.rate import RateLimiter
from agent.capture.source import FrameSource, OpenCvSource, open_source, read_frame

__all__ = ["FrameItem", "FramePolicy", "FrameSlot", "FrameSource", "OpenCvSource", "RateLimiter", "open_source",
           "read_frame"]
