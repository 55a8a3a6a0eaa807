"""Runs the active model on the newest frame, and swaps models between two frames."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.capture.latest import FrameSlot
from agent.contract import ModelArtifact, PackageManifest
from agent.preprocess import preprocess
from agent.runtime.base import InferenceBackend, RuntimeLoadError, load_backend
from agent.telemetry.window import WindowStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    manifest: PackageManifest
    artifact: ModelArtifact
    backend: InferenceBackend

    @property
    def version(self) -> str:
        return self.manifest.model_version


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def load_model(manifest: PackageManifest, package_dir: Path, *, threads: int = 0) -> LoadedModel:
    """Load the package's first artifact this agent can run, and warm it up once.

    Raises:
        RuntimeLoadError: no artifact loads, or the warm-up run fails or has the wrong shape.
    """
    errors: list[str] = []
    for artifact in manifest.artifacts:
        try:
            backend = load_backend(artifact, package_dir / artifact.file, threads=threads)
            spec = manifest.preprocessing
            dtype = np.float32 if spec.dtype == "float32" else np.uint8 if spec.dtype == "uint8" else np.int8
            warmup = backend.run(np.zeros(spec.input_shape(1), dtype=dtype))
        except (RuntimeLoadError, ValueError, RuntimeError) as exc:
            errors.append(f"{artifact.runtime}/{artifact.precision}: {exc}")
            continue
        if warmup.shape[-1] != len(manifest.labels):
            errors.append(f"{artifact.file} outputs {warmup.shape[-1]} scores for {len(manifest.labels)} labels")
            continue
        return LoadedModel(manifest=manifest, artifact=artifact, backend=backend)
    raise RuntimeLoadError("; ".join(errors) or "package has no artifacts")


class InferenceEngine:
    """Inference thread: take the newest frame, preprocess, run, record.

    The active model is one reference read once per frame, so :meth:`swap` takes
    effect between two frames and never drops one.
    """

    def __init__(self, slot: FrameSlot, stats: WindowStats) -> None:
        self._slot = slot
        self._stats = stats
        self._model: LoadedModel | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        previous, self._model = self._model, model
        log.info("now serving model %s (%s)", model.version, model.artifact.runtime)
        return previous

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._slot.close()
        self._thread.join(timeout=5)

    def infer_frame(self, model: LoadedModel, frame: npt.NDArray[np.uint8]) -> tuple[str, float]:
        tensor = preprocess(frame, model.manifest.preprocessing)
        scores = model.backend.run(tensor)[0]
        probabilities = softmax(scores) if model.artifact.output_activation == "softmax" else scores
        index = int(np.argmax(probabilities))
        confidence = float(probabilities[index])
        if not np.isfinite(confidence):
            raise ValueError("model produced a non-finite score")
        return model.manifest.labels[index], confidence

    def _loop(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout_s=0.5)
            model = self._model
            if frame is None or model is None:
                continue
            started = time.perf_counter()
            try:
                label, confidence = self.infer_frame(model, frame)
            except Exception:  # a bad frame or a failing runtime must not stop the loop
                log.exception("inference failed")
                self._stats.record_error()
                continue
            self._stats.record((time.perf_counter() - started) * 1000.0, confidence, label)
