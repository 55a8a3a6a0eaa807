"""OpenVINO backend: CPU, GPU or NPU, reading OpenVINO IR (.xml + .bin) or ONNX directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelArtifact
from agent.errors import RuntimeLoadError

_core: Any = None


def _ov_core() -> Any:
    # One Core per process: creating it enumerates plugins and devices (slow).
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def available_ov_devices() -> list[str]:
    try:
        devices: list[str] = list(_ov_core().available_devices)
    except ImportError:
        return []
    # "GPU.0" and "GPU.1" are both GPUs; the plugin name is what a profile names.
    return sorted({d.split(".")[0] for d in devices}, key=lambda d: ("CPU", "GPU", "NPU").index(d) if d in ("CPU", "GPU", "NPU") else 9)


def compile_config(device: str, threads: int = 0) -> dict[str, Any]:
    """The settings every OpenVINO compile uses, on the device and in the control plane's gates.

    The CPU plugin silently runs FP32 layers in bfloat16 on CPUs with AVX512_BF16 or AMX
    (Zen 4, Sapphire Rapids): an "fp32" artifact would then not be the model its gate
    measured. Pinning f32 keeps what runs equal to what was validated; INT8 models keep
    their int8 layers either way (and their non-quantized layers skip bf16 conversions).
    """
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoBackend:
    runtime = "openvino"

    def __init__(self, model_path: Path, artifact: ModelArtifact, *, threads: int = 0, device: str = "") -> None:
        try:
            core = _ov_core()
        except ImportError as exc:
            raise RuntimeLoadError("openvino is not installed") from exc
        self.device = device or "CPU"
        try:
            compiled = core.compile_model(str(model_path), self.device, compile_config(self.device, threads))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own; wrap once.
            raise RuntimeLoadError(f"openvino could not compile {model_path.name} for {self.device}: {exc}") from exc
        self._request = compiled.create_infer_request()
        self._output = compiled.outputs[0]

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        result = self._request.infer([tensor])
        return np.asarray(result[self._output], dtype=np.float32)
