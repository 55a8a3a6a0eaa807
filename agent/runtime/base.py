"""The inference backend interface and the loader that picks an implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelArtifact


class RuntimeLoadError(RuntimeError):
    """The runtime is missing on this device or refused to load the model."""


class InferenceBackend(Protocol):
    """One loaded model. ``run`` takes a preprocessed batch and returns raw scores.

    ``runtime`` names the library and ``device`` where it runs (an ONNX Runtime
    execution provider, an OpenVINO device, a LiteRT delegate or "CPU").
    """

    runtime: str
    device: str

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]: ...


def load_backend(
    artifact: ModelArtifact, model_path: Path, *, threads: int = 0, device: str = ""
) -> InferenceBackend:
    """Load ``model_path`` with the runtime ``artifact`` names, on ``device`` ("" = the runtime's default).

    Raises:
        RuntimeLoadError: the runtime is not installed or cannot load the file.
    """
    if artifact.runtime == "onnxruntime":
        from agent.runtime.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, artifact, threads=threads, device=device)
    if artifact.runtime == "openvino":
        from agent.runtime.openvino import OpenVinoBackend

        return OpenVinoBackend(model_path, artifact, threads=threads, device=device)
    if artifact.runtime == "litert":
        from agent.runtime.litert import LiteRtBackend

        return LiteRtBackend(model_path, artifact, threads=threads, device=device)
    raise RuntimeLoadError(f"runtime {artifact.runtime!r} is not supported by this agent build")


def available_devices(runtime: str) -> list[str]:
    """Devices this machine offers ``runtime`` (empty when the runtime is not installed)."""
    if runtime == "onnxruntime":
        from agent.runtime.onnx import available_providers

        return available_providers()
    if runtime == "openvino":
        from agent.runtime.openvino import available_ov_devices

        return available_ov_devices()
    if runtime == "litert":
        from agent.runtime.litert import interpreter_class

        return ["CPU"] if interpreter_class() is not None else []
    return []
