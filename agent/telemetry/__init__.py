"""Per-window inference statistics and process health."""

from agent.telemetry.window import WindowSnapshot, WindowStats

__all__ = ["WindowSnapshot", "WindowStats"]
