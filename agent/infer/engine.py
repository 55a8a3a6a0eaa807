"""Runs the active model on the newest frame, and swaps models between two frames."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.capture.latest import FrameItem, FrameSlot
from agent.contract import ModelArtifact, PackageManifest
from agent.errors import RuntimeLoadError
from agent.infer.detect import Detection, check_output_shape, detect
from agent.preprocess import preprocess
from agent.runtime import InferenceBackend, load_backend
from agent.telemetry.window import WindowStats
from agent.update.probation import Baseline, ProbationWatch

log = logging.getLogger(__name__)

# Recent frames of the serving model kept as the probation baseline for its successor.
BASELINE_FRAMES = 256


@dataclass(frozen=True)
class LoadedModel:
    manifest: PackageManifest
    artifact: ModelArtifact
    backend: InferenceBackend

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def runtime_label(self) -> str:
        """e.g. ``onnxruntime/fp32/CPUExecutionProvider``: what the cloud stratifies canaries by."""
        return f"{self.artifact.runtime}/{self.artifact.precision}/{self.backend.device}"


@dataclass(frozen=True)
class FrameResult:
    pipeline: str
    frame_seq: int
    model_version: str
    label: str
    confidence: float
    latency_ms: float
    inference_ms: float
    at: float
    # When the frame left the camera's decoder (wall clock; monotonic for the latency below).
    captured_at: float | None = None
    capture_to_result_ms: float | None = None
    # Detection packages only: the frame's boxes in source-frame pixels, highest score first
    # (``label``/``confidence`` are then the top box's, or "" and 0.0 for a frame without objects).
    detections: tuple[Detection, ...] | None = None

    def to_json_dict(self) -> dict[str, object]:
        """The sinks' JSON object; classification results carry no ``detections`` key."""
        document = asdict(self)
        if self.detections is None:
            del document["detections"]
        return document


class ResultSink(Protocol):
    """A local consumer of per-frame results (a JSON-lines file, a local MQTT topic)."""

    def emit(self, result: FrameResult) -> None: ...


class InvalidOutput(ValueError):
    """The model returned NaN or Inf."""


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def load_model(
    manifest: PackageManifest, package_dir: Path, *, threads: int = 0, artifact_file: str | None = None,
    device: str = "",
) -> LoadedModel:
    """Load the named artifact (else the package's first that loads) and warm it up once.

    Raises:
        RuntimeLoadError: no artifact loads, or the warm-up run fails or has the wrong shape.
    """
    errors: list[str] = []
    ordered = sorted(manifest.artifacts, key=lambda a: a.file != artifact_file)
    for artifact in ordered:
        try:
            backend = load_backend(artifact, package_dir / artifact.file, threads=threads,
                                   device=device if artifact.file == artifact_file else "")
            spec = manifest.preprocessing
            dtype = np.float32 if spec.dtype == "float32" else np.uint8 if spec.dtype == "uint8" else np.int8
            warmup = backend.run(np.zeros(spec.input_shape(1), dtype=dtype))
        except (RuntimeLoadError, ValueError, RuntimeError) as exc:
            errors.append(f"{artifact.runtime}/{artifact.precision}: {exc}")
            continue
        if manifest.detection is not None:
            problem = check_output_shape(tuple(warmup.shape), manifest.detection, len(manifest.labels))
            if problem is not None:
                errors.append(f"{artifact.file}: {problem}")
                continue
        elif warmup.shape[-1] != len(manifest.labels):
            errors.append(f"{artifact.file} outputs {warmup.shape[-1]} scores for {len(manifest.labels)} labels")
            continue
        return LoadedModel(manifest=manifest, artifact=artifact, backend=backend)
    raise RuntimeLoadError("; ".join(errors) or "package has no artifacts")


class InferenceEngine:
    """Inference thread: take the newest frame, (preprocess), run, record, emit.

    The active model is one reference read once per frame, so :meth:`swap` takes
    effect between two frames and never drops one: the frame in hand finishes on
    the model it started with.
    """

    def __init__(self, slot: FrameSlot[FrameItem], stats: WindowStats, *, name: str = "main",
                 sinks: Sequence[ResultSink] = ()) -> None:
        self.name = name
        self._slot = slot
        self._stats = stats
        self._sinks = list(sinks)
        self._model: LoadedModel | None = None
        self._watch: ProbationWatch | None = None
        self._recent: deque[tuple[float, float]] = deque(maxlen=BASELINE_FRAMES)
        self._busy = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"inference-{name}", daemon=True)
        # Sees each frame's raw scores on the inference thread (drift windows, samples).
        self.output_hook: Callable[[LoadedModel, FrameItem, npt.NDArray[np.float32]], None] | None = None
        # Sees each detection frame's boxes on the inference thread (shadow matching, samples).
        self.detection_hook: Callable[[LoadedModel, FrameItem, tuple[Detection, ...]], None] | None = None

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def baseline(self) -> Baseline:
        """The serving model's recent p95 inference latency and mean confidence on live frames."""
        recent = list(self._recent)
        if not recent:
            return Baseline()
        latencies = np.asarray([latency for latency, _ in recent])
        return Baseline(p95_latency_ms=round(float(np.percentile(latencies, 95)), 3),
                        mean_confidence=round(float(np.mean([c for _, c in recent])), 4))

    def swap(self, model: LoadedModel | None, *, watch: ProbationWatch | None = None) -> LoadedModel | None:
        """Serve ``model`` from the next frame on; ``watch`` collects its probation evidence."""
        self._watch = watch
        previous, self._model = self._model, model
        self._recent.clear()
        if model is not None:
            log.info("[%s] now serving model %s (%s)", self.name, model.version, model.runtime_label)
        return previous

    def end_watch(self) -> None:
        self._watch = None

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout_s: float) -> None:
        """Wait until the frame in the slot and the frame in hand are done (for a clean stop)."""
        deadline = time.monotonic() + timeout_s
        while (self._slot.pending() or self._busy.is_set()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._slot.close()
        self._thread.join(timeout=5)

    def infer_frame(self, model: LoadedModel, frame: npt.NDArray[np.uint8]) -> tuple[str, float]:
        """Run ``model`` on one decoded BGR frame: (label, confidence). For callers outside the loop.

        Raises:
            InvalidOutput: the scores are NaN or Inf.
        """
        label, confidence, _, _ = self._infer_item(model, FrameItem(seq=0, frame=frame))
        return label, confidence

    def detect_frame(self, model: LoadedModel, frame: npt.NDArray[np.uint8]) -> list[Detection]:
        """Run a detection ``model`` on one decoded BGR frame: its boxes in the frame's pixels.

        Raises:
            InvalidOutput: the output holds NaN or Inf.
            ValueError: ``model`` is not a detection package, or its output does not fit its decoder.
        """
        _, _, _, detections = self._infer_item(model, FrameItem(seq=0, frame=frame))
        if detections is None:
            raise ValueError(f"model {model.version} is a {model.manifest.task} package, not detection")
        return list(detections)

    def _infer_item(self, model: LoadedModel,
                    item: FrameItem) -> tuple[str, float, float, tuple[Detection, ...] | None]:
        """Returns (label, confidence, inference-only milliseconds, detections for a detection package).

        Raises:
            InvalidOutput: the scores are NaN or Inf.
        """
        spec = model.manifest.preprocessing
        tensor = item.tensor if item.tensor is not None and item.spec == spec else preprocess(item.frame, spec)
        started = time.perf_counter()
        output = model.backend.run(tensor)
        inference_ms = (time.perf_counter() - started) * 1000.0
        if not np.all(np.isfinite(output)):
            raise InvalidOutput("model produced a non-finite score")
        manifest = model.manifest
        if manifest.detection is not None:
            # Drift and shadow output hooks read classifier score vectors; detection frames
            # go to the detection hook instead.
            height, width = item.frame.shape[:2]
            found = tuple(detect(output, detection=manifest.detection, labels=manifest.labels,
                                 preprocessing=manifest.preprocessing, source_width=width, source_height=height))
            detection_hook = self.detection_hook
            if detection_hook is not None and threading.current_thread() is self._thread:
                try:
                    detection_hook(model, item, found)
                except Exception:  # shadowing and samples must never cost a frame's inference
                    log.exception("[%s] detection hook failed", self.name)
            top_label, top_score = (found[0].label, found[0].score) if found else ("", 0.0)
            return top_label, top_score, inference_ms, found
        scores = output[0]
        hook = self.output_hook
        if hook is not None and threading.current_thread() is self._thread:
            try:
                hook(model, item, scores)
            except Exception:  # drift statistics must never cost a frame's inference
                log.exception("[%s] output hook failed", self.name)
        probabilities = softmax(scores) if model.artifact.output_activation == "softmax" else scores
        index = int(np.argmax(probabilities))
        return model.manifest.labels[index], float(probabilities[index]), inference_ms, None

    def _loop(self) -> None:
        while not self._stop.is_set() or self._slot.pending():
            item = self._slot.take(timeout_s=0.5)
            if item is None:
                continue
            self._busy.set()
            try:
                self._process(item)
            finally:
                self._busy.clear()

    def _process(self, item: FrameItem) -> None:
        model, watch = self._model, self._watch
        if model is None:
            return
        if watch is not None and watch.model_key is not model:
            watch = None
        started = time.perf_counter()
        try:
            label, confidence, inference_ms, detections = self._infer_item(model, item)
        except InvalidOutput:
            self._stats.record_invalid()
            if watch is not None:
                watch.record_invalid()
            return
        except Exception:  # a bad frame or a failing runtime must not stop the loop
            log.exception("[%s] inference failed", self.name)
            self._stats.record_error()
            if watch is not None:
                watch.record_error()
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        if detections is None:
            self._stats.record(latency_ms, confidence, label)
        else:
            self._stats.record_detections(latency_ms, [(d.label, d.score) for d in detections])
        self._recent.append((inference_ms, confidence))
        if watch is not None:
            watch.record(inference_ms, confidence)
        if self._sinks:
            result = FrameResult(pipeline=self.name, frame_seq=item.seq, model_version=model.version, label=label,
                                 confidence=round(confidence, 5), latency_ms=round(latency_ms, 3),
                                 inference_ms=round(inference_ms, 3), at=time.time(), detections=detections,
                                 captured_at=item.captured_wall_s or None,
                                 capture_to_result_ms=round((time.monotonic() - item.captured_monotonic_s) * 1000.0, 3)
                                 if item.captured_monotonic_s else None)
            for sink in self._sinks:
                try:
                    sink.emit(result)
                except Exception:  # a full disk or a dead local broker must not stop inference
                    log.exception("[%s] result sink failed", self.name)
