"""One camera: capture thread → region of interest → preprocess → one-slot hand-off to a model.

The model is an :class:`~agent.infer.engine.InferenceEngine`: the pipeline's own (one
camera, one model) or one shared by every camera assigned the same model, which then
serves their newest frames in micro-batches (docs/agent.md, "Many cameras, one model").
A device may run several models, each with its own A/B slots and install state machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.capture.latest import FrameItem, FramePolicy, FrameSlot
from agent.capture.rate import RateLimiter
from agent.capture.source import FrameSource
from agent.capture.stream import StreamSource, redact
from agent.contract import FrameTotals
from agent.contract.messages import CameraReport
from agent.infer.engine import DetectionHook, FrameResult, InferenceEngine, OutputHook, ResultSink
from agent.preprocess import preprocess
from agent.telemetry.capture_latency import CaptureLatency
from agent.telemetry.window import WindowStats

log = logging.getLogger(__name__)


class _CaptureLatencySink:
    """Closes each frame's capture-to-result span when the engine emits its result."""

    def __init__(self, latency: CaptureLatency) -> None:
        self._latency = latency

    def emit(self, result: FrameResult) -> None:
        self._latency.result(result.frame_seq)


# A region of interest: (x, y, width, height) as fractions of the frame.
Roi = tuple[float, float, float, float]


def crop_roi(frame: npt.NDArray[np.uint8], roi: Roi | None) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """The part of ``frame`` inside ``roi`` (a view, no copy) and its top-left corner in the frame.

    Cropping comes before the model's resize, so the region keeps the camera's resolution
    instead of being cut from an already shrunk frame. At least one pixel is kept.

    Raises:
        ValueError: ``roi`` lies outside the unit square or is empty.
    """
    if roi is None:
        return frame, (0, 0)
    x, y, width, height = roi
    if not (0 <= x < 1 and 0 <= y < 1 and width > 0 and height > 0 and x + width <= 1 + 1e-9
            and y + height <= 1 + 1e-9):
        raise ValueError(f"region of interest {roi} must lie inside the frame: x, y, width, height in [0, 1]")
    frame_height, frame_width = frame.shape[:2]
    x0, y0 = min(int(x * frame_width), frame_width - 1), min(int(y * frame_height), frame_height - 1)
    x1 = max(x0 + 1, min(frame_width, round((x + width) * frame_width)))
    y1 = max(y0 + 1, min(frame_height, round((y + height) * frame_height)))
    return frame[y0:y1, x0:x1], (x0, y0)


class Pipeline:
    def __init__(self, name: str, source: FrameSource, *, target_fps: float, policy: FramePolicy = "newest",
                 queue_depth: int = 3, sinks: Sequence[ResultSink] = (), source_label: str = "",
                 engine: InferenceEngine | None = None, roi: Roi | None = None) -> None:
        """``engine``: a model shared with other cameras (None = a model of the pipeline's own)."""
        self.name = name
        self.source = source
        self.source_label = source_label
        self.roi = roi
        if roi is not None:
            crop_roi(np.zeros((2, 2, 3), dtype=np.uint8), roi)  # refuse a bad region before any frame
        self.slot: FrameSlot[FrameItem] = FrameSlot(policy, depth=queue_depth)
        self.stats = WindowStats()
        self.capture_latency = CaptureLatency()
        self._owns_engine = engine is None
        self.engine = engine or InferenceEngine(name=name)
        self.engine.add_camera(name, self.slot, self.stats,
                               sinks=[_CaptureLatencySink(self.capture_latency), *sinks])
        self.limiter = RateLimiter(target_fps)
        self.camera_ok = True
        self.captured = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture-{name}", daemon=True)

    @property
    def output_hook(self) -> OutputHook | None:
        return None

    @output_hook.setter
    def output_hook(self, hook: OutputHook | None) -> None:
        """This camera's raw scores go to ``hook`` (drift windows, shadows), whoever shares its model."""
        self.engine.set_output_hook(self.name, hook)

    @property
    def detection_hook(self) -> DetectionHook | None:
        return None

    @detection_hook.setter
    def detection_hook(self, hook: DetectionHook | None) -> None:
        """This camera's boxes go to ``hook`` (shadow box matching, samples), whoever shares its model."""
        self.engine.set_detection_hook(self.name, hook)

    def start(self) -> None:
        """Start capturing (and the pipeline's own model; a shared one is started by its owner)."""
        if self._owns_engine:
            self.engine.start()
        self._thread.start()

    def stop(self, *, drain_s: float = 5.0) -> None:
        """Stop capturing, let inference finish the frame it was given, then leave (or stop) the model."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._owns_engine:
            self.engine.drain(drain_s)
            self.engine.stop()
        else:
            self.engine.remove_camera(self.name, drain_s=drain_s)
        self.source.close()

    def totals(self) -> FrameTotals:
        return FrameTotals(
            captured=self.captured,
            skipped_by_rate_limit=self.skipped,
            overwritten=self.slot.overwritten,
            processed=self.stats.total_frames,
            inference_errors_total=self.stats.total_errors,
            invalid_outputs_total=self.stats.total_invalid,
            camera_reconnects=self.source.reconnects,
            camera=self.camera_report(),
        )

    def camera_report(self) -> CameraReport:
        """The camera's health (network cameras) and the capture-to-result latency since the last call."""
        p50_ms, p95_ms = self.capture_latency.snapshot_and_reset()
        if isinstance(self.source, StreamSource):
            health = self.source.health_snapshot()
            return CameraReport(state=health.state, error_code=health.error_code, decoder=health.decoder,
                                source=self.source.display_url, width=health.width, height=health.height,
                                stale_frames_dropped=health.stale_frames_dropped + self.slot.overwritten,
                                stalls=health.stalls, outages=health.outages, outage_s=health.outage_s,
                                capture_to_result_p50_ms=p50_ms, capture_to_result_p95_ms=p95_ms)
        return CameraReport(state="streaming" if self.camera_ok else "down",
                            stale_frames_dropped=self.slot.overwritten,
                            capture_to_result_p50_ms=p50_ms, capture_to_result_p95_ms=p95_ms)

    def _capture_loop(self) -> None:
        seq = 0
        while not self._stop.is_set():
            model = self.engine.model
            if model is None:
                # Nothing to serve yet: leave the camera alone rather than decode for nobody.
                self._stop.wait(0.1)
                continue
            if not self.source.grab():
                if self.camera_ok:
                    log.warning("[%s] camera source %s returned no frame", self.name, redact(self.source_label))
                self.camera_ok = False
                self._stop.wait(0.05)
                continue
            if not self.limiter.due(time.monotonic()):
                # Skipped frames are grabbed but never decoded: that is what makes skipping cheap.
                self.captured += 1
                self.skipped += 1
                continue
            frame = self.source.retrieve()
            captured = self.source.latest() if isinstance(self.source, StreamSource) else None
            captured_monotonic_s, captured_wall_s = (
                (captured.captured_monotonic_s, captured.captured_wall_s) if captured is not None
                else (time.monotonic(), time.time()))
            if frame is None:
                self.camera_ok = False
                continue
            if not self.camera_ok:
                log.info("[%s] camera source %s is back", self.name, redact(self.source_label))
            self.camera_ok = True
            self.captured += 1
            seq += 1
            region, origin = crop_roi(frame, self.roi)
            # Preprocess here, on the capture thread, so it overlaps the previous batch's
            # inference; the engine redoes it only if a swap changed the spec meanwhile.
            spec = model.manifest.preprocessing
            try:
                tensor: npt.NDArray[np.generic] | None = preprocess(region, spec)
            except ValueError:
                tensor = None
            item = FrameItem(seq=seq, frame=region, tensor=tensor, spec=spec if tensor is not None else None,
                             captured_monotonic_s=captured_monotonic_s, captured_wall_s=captured_wall_s,
                             ready_monotonic_s=time.monotonic(), origin=origin)
            self.capture_latency.captured(seq, captured_monotonic_s)
            self.slot.put(item)
