"""One camera feeding one model: capture thread → one-slot hand-off → inference thread.

A device may run several pipelines (two cameras, two models), each with its own
A/B slots and install state machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from agent.capture.latest import FrameItem, FramePolicy, FrameSlot
from agent.capture.rate import RateLimiter
from agent.capture.source import FrameSource
from agent.capture.stream import StreamSource, redact
from agent.contract import FrameTotals
from agent.contract.messages import CameraReport
from agent.infer.engine import FrameResult, InferenceEngine, ResultSink
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


class Pipeline:
    def __init__(self, name: str, source: FrameSource, *, target_fps: float, policy: FramePolicy = "newest",
                 queue_depth: int = 3, sinks: Sequence[ResultSink] = (), source_label: str = "") -> None:
        self.name = name
        self.source = source
        self.source_label = source_label
        self.slot: FrameSlot[FrameItem] = FrameSlot(policy, depth=queue_depth)
        self.stats = WindowStats()
        self.capture_latency = CaptureLatency()
        self.engine = InferenceEngine(self.slot, self.stats, name=name,
                                      sinks=[_CaptureLatencySink(self.capture_latency), *sinks])
        self.limiter = RateLimiter(target_fps)
        self.camera_ok = True
        self.captured = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture-{name}", daemon=True)

    def start(self) -> None:
        self.engine.start()
        self._thread.start()

    def stop(self, *, drain_s: float = 5.0) -> None:
        """Stop capturing, let inference finish the frame it was given, then stop it."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.engine.drain(drain_s)
        self.engine.stop()
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
            # Preprocess here, on the capture thread, so it overlaps the previous frame's
            # inference; the engine redoes it only if a swap changed the spec meanwhile.
            spec = model.manifest.preprocessing
            try:
                item = FrameItem(seq=seq, frame=frame, tensor=preprocess(frame, spec), spec=spec,
                                 captured_monotonic_s=captured_monotonic_s, captured_wall_s=captured_wall_s)
            except ValueError:
                item = FrameItem(seq=seq, frame=frame, captured_monotonic_s=captured_monotonic_s,
                                 captured_wall_s=captured_wall_s)
            self.capture_latency.captured(seq, captured_monotonic_s)
            self.slot.put(item)
