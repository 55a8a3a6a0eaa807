"""Run a built artifact on a batch the way a device would, for evaluation and golden vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.contract import ModelArtifact
from agent.errors import RuntimeLoadError
from agent.runtime import load_backend
from cloud.pipeline.errors import BuildToolError


class ArtifactRunner(Protocol):
    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


def onnxruntime_runner(path: Path, threads: int = 1) -> ArtifactRunner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BuildToolError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    input_name = session.get_inputs()[0].name

    def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(session.run(None, {input_name: batch})[0], dtype=np.float32)

    return run


def device_backend_runner(runtime: str, path: Path, threads: int = 1) -> ArtifactRunner:
    """The agent's own backend, one item at a time: what the gate measures is what the device
    runs (OpenVINO's compile settings, LiteRT's quantized input of a fully int8 model)."""

    try:
        # The precision does not change how a backend loads or runs a file.
        backend = load_backend(ModelArtifact(file=path.name, runtime=runtime, precision="fp32"),  # type: ignore[arg-type]
                               path, threads=threads)
    except RuntimeLoadError as exc:
        raise BuildToolError(str(exc)) from exc

    def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outputs = [backend.run(item[np.newaxis]) for item in batch]
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

    return run


def runner_for(runtime: str, path: Path, threads: int = 1) -> ArtifactRunner:
    """Raises ``BuildToolError`` for a runtime this control plane cannot execute."""
    if runtime == "onnxruntime":
        return onnxruntime_runner(path, threads)
    if runtime in ("openvino", "litert"):
        return device_backend_runner(runtime, path, threads)
    raise BuildToolError(f"no runner for runtime {runtime!r}")


def run_batched(runner: ArtifactRunner, x: npt.NDArray[np.float32], batch_size: int = 64) -> npt.NDArray[np.float32]:
    outputs = [runner(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
