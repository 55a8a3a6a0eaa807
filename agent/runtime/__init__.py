"""Inference backends behind one interface: :func:`load_backend` picks the implementation a
model artifact names. Selection by measurement lives in :mod:`agent.runtime.select`.

Each backend module is imported only when its runtime is asked for, so a device without
OpenVINO or LiteRT never imports them.
"""

from __future__ import annotations

from pathlib import Path

from agent.contract.manifest import ModelArtifact
from agent.errors import RuntimeLoadError
from agent.runtime.base import InferenceBackend

__all__ = ["InferenceBackend", "RuntimeLoadError", "available_devices", "load_backend"]


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
