"""ONNX Runtime backend: CPU by default; CUDA, TensorRT, OpenVINO execution providers when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelArtifact
from agent.errors import RuntimeLoadError

# Accelerated providers first; the CPU provider is always the last fallback.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - depends on the device image
        return []
    present = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in present]


class OnnxRuntimeBackend:
    runtime = "onnxruntime"
    # InferenceSession.run is thread-safe: a shared model's workers may run batches at once.
    concurrent_runs = True

    def __init__(self, model_path: Path, artifact: ModelArtifact, *, threads: int = 0, device: str = "") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the device image
            raise RuntimeLoadError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            # One model per pipeline thread: ORT's inter-op pool would only add idle spinners.
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        present = set(ort.get_available_providers())
        if device and device not in present:
            raise RuntimeLoadError(f"onnxruntime execution provider {device} is not available here")
        providers = [device] if device else []
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types; wrap them once here.
            raise RuntimeLoadError(f"onnxruntime could not load {model_path.name}: {exc}") from exc
        self.device = self._session.get_providers()[0]
        inputs = self._session.get_inputs()
        self._input_name = artifact.input_name if any(i.name == artifact.input_name for i in inputs) else inputs[0].name
        self._output_name = self._session.get_outputs()[0].name

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        outputs = self._session.run([self._output_name], {self._input_name: tensor})
        return np.asarray(outputs[0], dtype=np.float32)
