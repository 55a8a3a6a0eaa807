"""Runs the active model on the newest frames of its cameras, in micro-batches, and swaps models between two batches."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.capture.latest import FrameItem, FrameSlot
from agent.contract import ModelArtifact, PackageManifest
from agent.errors import RuntimeLoadError
from agent.infer.batcher import BatchPlanner, BatchSettings, WaitingFrame
from agent.infer.detect import Detection, check_output_shape, detect
from agent.preprocess import preprocess
from agent.runtime import InferenceBackend, load_backend
from agent.telemetry.window import WindowStats
from agent.update.probation import Baseline, ProbationWatch

log = logging.getLogger(__name__)

# Recent frames of the serving model kept as the probation baseline for its successor.
BASELINE_FRAMES = 256


@dataclass(frozen=True, eq=False)  # identity: two loads of one package are two models in memory
class LoadedModel:
    manifest: PackageManifest
    artifact: ModelArtifact
    backend: InferenceBackend

    def __post_init__(self) -> None:
        _LIVE_MODELS.add(self)

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def runtime_label(self) -> str:
        """e.g. ``onnxruntime/fp32/CPUExecutionProvider``: what the cloud stratifies canaries by."""
        return f"{self.artifact.runtime}/{self.artifact.precision}/{self.backend.device}"


# Every model loaded in this process, held weakly: what telemetry's loaded-model count reads.
_LIVE_MODELS: weakref.WeakSet[LoadedModel] = weakref.WeakSet()


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


# Output hooks see each frame's raw scores on the inference thread (drift windows, samples, shadows).
OutputHook = Callable[[LoadedModel, FrameItem, npt.NDArray[np.float32]], None]
# Detection hooks see each detection frame's boxes there instead (shadow box matching, samples).
DetectionHook = Callable[[LoadedModel, FrameItem, tuple[Detection, ...]], None]


@dataclass
class _Camera:
    """One camera attached to a shared engine: its hand-off slot, window statistics, sinks and hook."""

    name: str
    slot: FrameSlot[FrameItem]
    stats: WindowStats
    sinks: list[ResultSink]
    output_hook: OutputHook | None = None
    detection_hook: DetectionHook | None = None


def loaded_model_count() -> int:
    """Models loaded in this process right now (serving, staged, shadowing or held for rollback).

    Introspection, not configuration: every :class:`LoadedModel` registers itself when it
    is built and drops out when the last reference to it goes.
    """
    return len(_LIVE_MODELS)


class InferenceEngine:
    """One loaded model serving one or more cameras in micro-batches.

    Cameras attach with :meth:`add_camera` (and leave with :meth:`remove_camera`) at any
    time; each hands over its newest frame through its own slot. The inference thread
    asks the :class:`~agent.infer.batcher.BatchPlanner` which frames make the next batch,
    runs them in one call when the model takes a batch dimension (else one call per frame,
    see :func:`run_batch`), and splits the output back per camera: results, window
    statistics and hooks stay per camera.

    The active model is one reference read once per batch, so :meth:`swap` takes effect
    between two batches and never drops a frame: the batch in hand finishes on the model it
    started with. A swap applies to every attached camera at once (one package, one model).
    """

    def __init__(self, slot: FrameSlot[FrameItem] | None = None, stats: WindowStats | None = None, *,
                 name: str = "main", sinks: Sequence[ResultSink] = (),
                 batching: BatchSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.batching = batching or BatchSettings(max_batch=1, deadline_s=0.0)
        self._planner = BatchPlanner(self.batching)
        self._clock = clock
        self._cameras: dict[str, _Camera] = {}
        self._wake = threading.Condition()
        self._model: LoadedModel | None = None
        # Whether the serving model took a whole batch in one call (None: not tried yet).
        self._batches_whole: bool | None = None
        self._watch: ProbationWatch | None = None
        self._recent: deque[tuple[float, float]] = deque(maxlen=BASELINE_FRAMES)
        # Cameras with a frame in a batch being run: at most one frame per camera is in flight,
        # so a camera's results leave in order however many workers there are.
        self._in_hand: set[str] = set()
        self._running_batches = 0
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._threads = [threading.Thread(target=self._loop, name=f"inference-{name}-{index}", daemon=True)
                         for index in range(self.batching.workers)]
        # Batches run and frames in them since start (the mean batch size is their ratio).
        self.batches = 0
        self.batched_frames = 0
        # The default hook for cameras that set none of their own.
        self.output_hook: OutputHook | None = None
        self.detection_hook: DetectionHook | None = None
        if slot is not None:
            self.add_camera(name, slot, stats or WindowStats(), sinks=sinks)

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    # -- cameras -------------------------------------------------------------
    def add_camera(self, name: str, slot: FrameSlot[FrameItem], stats: WindowStats, *,
                   sinks: Sequence[ResultSink] = (), output_hook: OutputHook | None = None) -> None:
        """Serve ``name``'s frames from ``slot`` with this engine's model from the next batch on.

        Raises:
            ValueError: a camera of that name is attached already.
        """
        with self._wake:
            if name in self._cameras:
                raise ValueError(f"camera {name!r} is already served by model {self.name!r}")
            self._cameras[name] = _Camera(name=name, slot=slot, stats=stats, sinks=list(sinks),
                                          output_hook=output_hook)
            slot.on_put = self._notify
            self._wake.notify_all()

    def remove_camera(self, name: str, *, drain_s: float = 5.0) -> None:
        """Detach ``name`` after its waiting frame (and the batch holding it) is done. Unknown names are ignored."""
        with self._wake:
            camera = self._cameras.get(name)
        if camera is None:
            return
        deadline = time.monotonic() + drain_s
        while self._started and (camera.slot.pending() or self._holds(name)) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._wake:
            camera.slot.on_put = None
            self._cameras.pop(name, None)
            self._planner.forget(name)

    def set_output_hook(self, camera: str, hook: OutputHook | None) -> None:
        with self._wake:
            self._cameras[camera].output_hook = hook

    def set_detection_hook(self, camera: str, hook: DetectionHook | None) -> None:
        with self._wake:
            self._cameras[camera].detection_hook = hook

    @property
    def camera_names(self) -> list[str]:
        with self._wake:
            return list(self._cameras)

    def _holds(self, camera: str) -> bool:
        with self._wake:
            return camera in self._in_hand

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- the model -----------------------------------------------------------
    def baseline(self) -> Baseline:
        """The serving model's recent p95 per-frame inference cost and mean confidence on live frames."""
        recent = list(self._recent)
        if not recent:
            return Baseline()
        latencies = np.asarray([latency for latency, _ in recent])
        return Baseline(p95_latency_ms=round(float(np.percentile(latencies, 95)), 3),
                        mean_confidence=round(float(np.mean([c for _, c in recent])), 4))

    def swap(self, model: LoadedModel | None, *, watch: ProbationWatch | None = None) -> LoadedModel | None:
        """Serve ``model`` to every attached camera from the next batch on; ``watch`` collects its probation evidence."""
        self._watch = watch
        previous, self._model = self._model, model
        self._batches_whole = None
        self._recent.clear()
        if model is not None:
            log.info("[%s] now serving model %s (%s) to %d camera(s)", self.name, model.version, model.runtime_label,
                     len(self._cameras))
        return previous

    def end_watch(self) -> None:
        self._watch = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def drain(self, timeout_s: float) -> None:
        """Wait until the frames in the slots and the batch in hand are done (for a clean stop)."""
        deadline = time.monotonic() + timeout_s
        while (self._pending() or self._running()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            cameras = list(self._cameras.values())
            self._wake.notify_all()
        for camera in cameras:
            camera.slot.close()
        if self._started:
            for thread in self._threads:
                thread.join(timeout=5)

    def _running(self) -> bool:
        with self._wake:
            return self._running_batches > 0

    def _pending(self) -> bool:
        with self._wake:
            cameras = list(self._cameras.values())
        return any(camera.slot.pending() for camera in cameras)

    # -- single frames (callers outside the loop) ------------------------------
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
        tensor = _tensor_for(model, item)
        started = time.perf_counter()
        output = model.backend.run(tensor)
        inference_ms = (time.perf_counter() - started) * 1000.0
        label, confidence, detections = interpret(model, item, output, hook=None)
        return label, confidence, inference_ms, detections

    # -- the loop ------------------------------------------------------------
    def _next_batch(self) -> list[tuple[_Camera, FrameItem]] | None:
        """Block until the planner says run; None once stopped with nothing left."""
        with self._wake:
            while True:
                cameras = [camera for camera in self._cameras.values() if camera.name not in self._in_hand]
                waiting: list[WaitingFrame] = []
                for camera in cameras:
                    item = camera.slot.peek()
                    if item is not None:
                        # A frame without a hand-over time (handed over by hand) counts as waiting long.
                        waiting.append(WaitingFrame(camera.name, item.ready_monotonic_s))
                if not waiting and self._stop.is_set() and not self._in_hand:
                    return None
                stopping = self._stop.is_set()
                plan = self._planner.plan(waiting, attached=len(cameras), now_s=self._clock())
                if plan.cameras:
                    taken: list[tuple[_Camera, FrameItem]] = []
                    for name in plan.cameras:
                        item = self._cameras[name].slot.take_nowait()
                        if item is not None:
                            taken.append((self._cameras[name], item))
                    if taken:
                        self._in_hand.update(camera.name for camera, _ in taken)
                        self._running_batches += 1
                        return taken
                    continue
                if stopping and waiting:
                    self._wake.wait(0.001)
                    continue
                self._wake.wait(plan.wait_s if plan.wait_s is not None else 0.5)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._process_batch(batch)
            except Exception:  # the serving thread must outlive any one batch
                log.exception("[%s] batch failed", self.name)
            finally:
                with self._wake:
                    self._in_hand.difference_update(camera.name for camera, _ in batch)
                    self._running_batches -= 1
                    self._wake.notify_all()  # those cameras may have a frame waiting already

    def _run(self, model: LoadedModel, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        # Several workers run one model concurrently only where the runtime allows it (ONNX
        # Runtime sessions do; an OpenVINO infer request or a LiteRT interpreter does not).
        concurrent = len(self._threads) == 1 or getattr(model.backend, "concurrent_runs", False)
        with contextlib.nullcontext() if concurrent else self._run_lock:
            return self._run_batch(model, batch)

    def _run_batch(self, model: LoadedModel, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        whole = self._batches_whole
        if whole is not False or batch.shape[0] == 1:
            try:
                output = model.backend.run(batch)
            except Exception:
                if batch.shape[0] == 1 or whole:
                    raise
                output = None
            if output is not None and output.shape[:1] == batch.shape[:1]:
                if batch.shape[0] > 1 and whole is None and model is self._model:
                    self._batches_whole = True
                return output
            if batch.shape[0] == 1:
                return output if output is not None else np.zeros((0,), dtype=np.float32)
            if model is self._model:
                # A fixed batch-1 input (or a graph that folds the batch away): one call per frame from now on.
                log.info("[%s] model %s does not take a batch of %d; running its frames one by one",
                         self.name, model.version, batch.shape[0])
                self._batches_whole = False
        return np.concatenate([model.backend.run(batch[i : i + 1]) for i in range(batch.shape[0])])

    def _process_batch(self, batch: list[tuple[_Camera, FrameItem]]) -> None:
        model, watch = self._model, self._watch
        if model is None:
            return
        if watch is not None and watch.model_key is not model:
            watch = None
        started = time.perf_counter()
        ready: list[tuple[_Camera, FrameItem, npt.NDArray[np.generic]]] = []
        for camera, item in batch:
            try:
                ready.append((camera, item, _tensor_for(model, item)))
            except Exception:  # a bad frame costs that frame, not its batch-mates
                log.exception("[%s] preprocessing a frame of %s failed", self.name, camera.name)
                camera.stats.record_error()
                if watch is not None:
                    watch.record_error()
        if not ready:
            return
        inference_started = time.perf_counter()
        try:
            output = self._run(model, np.concatenate([tensor for _, _, tensor in ready]))
        except Exception:  # a failing runtime must not stop the loop
            log.exception("[%s] inference failed", self.name)
            for camera, _, _ in ready:
                camera.stats.record_error()
                if watch is not None:
                    watch.record_error()
            return
        inference_ms = (time.perf_counter() - inference_started) * 1000.0
        # Probation and the baseline judge the model's cost per frame: a batch of 4 must not
        # look 4x slower than the single frames its predecessor ran.
        per_frame_ms = inference_ms / len(ready)
        self.batches += 1
        self.batched_frames += len(ready)
        for index, (camera, item, _) in enumerate(ready):
            try:
                label, confidence, detections = interpret(model, item, output[index : index + 1],
                                                          hook=camera.output_hook or self.output_hook,
                                                          detection_hook=camera.detection_hook or self.detection_hook,
                                                          hook_name=f"{self.name}/{camera.name}")
            except InvalidOutput:
                camera.stats.record_invalid()
                if watch is not None:
                    watch.record_invalid()
                continue
            except Exception:
                log.exception("[%s] post-processing a frame of %s failed", self.name, camera.name)
                camera.stats.record_error()
                if watch is not None:
                    watch.record_error()
                continue
            latency_ms = (time.perf_counter() - started) * 1000.0
            if detections is None:
                camera.stats.record(latency_ms, confidence, label)
            else:
                camera.stats.record_detections(latency_ms, [(d.label, d.score) for d in detections])
            self._recent.append((per_frame_ms, confidence))
            if watch is not None:
                watch.record(per_frame_ms, confidence)
            if camera.sinks:
                _emit(camera, FrameResult(
                    pipeline=camera.name, frame_seq=item.seq, model_version=model.version, label=label,
                    confidence=round(confidence, 5), latency_ms=round(latency_ms, 3),
                    inference_ms=round(inference_ms, 3), at=time.time(), detections=detections,
                    captured_at=item.captured_wall_s or None,
                    capture_to_result_ms=round((time.monotonic() - item.captured_monotonic_s) * 1000.0, 3)
                    if item.captured_monotonic_s else None))


def _emit(camera: _Camera, result: FrameResult) -> None:
    for sink in camera.sinks:
        try:
            sink.emit(result)
        except Exception:  # a full disk or a dead local broker must not stop inference
            log.exception("[%s] result sink failed", camera.name)


def _tensor_for(model: LoadedModel, item: FrameItem) -> npt.NDArray[np.generic]:
    """The frame's tensor, preprocessed on the capture thread unless a swap changed the spec since."""
    spec = model.manifest.preprocessing
    return item.tensor if item.tensor is not None and item.spec == spec else preprocess(item.frame, spec)


def interpret(model: LoadedModel, item: FrameItem, output: npt.NDArray[np.float32], *,
              hook: OutputHook | None, detection_hook: DetectionHook | None = None,
              hook_name: str = "") -> tuple[str, float, tuple[Detection, ...] | None]:
    """One frame's raw output (a batch of one) → (label, confidence, detections for a detection package).

    Detection boxes are mapped back to the full camera frame (``item.origin`` is where its
    region of interest starts).

    Raises:
        InvalidOutput: the scores are NaN or Inf.
    """
    if not np.all(np.isfinite(output)):
        raise InvalidOutput("model produced a non-finite score")
    manifest = model.manifest
    if manifest.detection is not None:
        # Output hooks read classifier score vectors; detection frames go to the detection hook.
        height, width = item.frame.shape[:2]
        found = detect(output, detection=manifest.detection, labels=manifest.labels,
                       preprocessing=manifest.preprocessing, source_width=width, source_height=height)
        x0, y0 = item.origin
        if x0 or y0:
            found = [replace(d, x1=d.x1 + x0, y1=d.y1 + y0, x2=d.x2 + x0, y2=d.y2 + y0) for d in found]
        boxes = tuple(found)
        if detection_hook is not None:
            try:
                detection_hook(model, item, boxes)
            except Exception:  # shadowing and samples must never cost a frame's inference
                log.exception("[%s] detection hook failed", hook_name)
        top_label, top_score = (boxes[0].label, boxes[0].score) if boxes else ("", 0.0)
        return top_label, top_score, boxes
    scores = output[0]
    if hook is not None:
        try:
            hook(model, item, scores)
        except Exception:  # drift statistics must never cost a frame's inference
            log.exception("[%s] output hook failed", hook_name)
    probabilities = softmax(scores) if model.artifact.output_activation == "softmax" else scores
    index = int(np.argmax(probabilities))
    return manifest.labels[index], float(probabilities[index]), None
