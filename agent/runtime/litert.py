"""LiteRT backend (``ai_edge_litert``; ``tflite_runtime`` only where that is all there is).

``tflite_runtime`` 2.14 crashes loading models under NumPy 2 (docs/pipeline.md),
so it is the fallback, never the first choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelArtifact
from agent.errors import RuntimeLoadError


def interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as LegacyInterpreter

        return LegacyInterpreter
    except ImportError:
        return None


class LiteRtBackend:
    runtime = "litert"

    def __init__(self, model_path: Path, artifact: ModelArtifact, *, threads: int = 0, device: str = "") -> None:
        interpreter = interpreter_class()
        if interpreter is None:
            raise RuntimeLoadError("neither ai-edge-litert nor tflite-runtime is installed")
        if device not in ("", "CPU"):
            # Delegates (Edge TPU) need their vendor library; absent here, refuse rather than silently use CPU.
            raise RuntimeLoadError(f"LiteRT delegate {device} is not available in this agent build")
        self.device = "CPU"
        try:
            self._interpreter = interpreter(model_path=str(model_path), num_threads=threads or None)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError of its own; wrap once
            raise RuntimeLoadError(f"LiteRT could not load {model_path.name}: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def run(self, tensor: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        dtype = self._input["dtype"]
        scale, zero_point = self._input.get("quantization", (0.0, 0))
        if np.issubdtype(dtype, np.integer) and tensor.dtype == np.float32 and scale:
            # A fully int8 model takes quantized input: quantize with its own parameters.
            info = np.iinfo(dtype)
            tensor = np.clip(np.round(tensor / scale + zero_point), info.min, info.max).astype(dtype)
        self._interpreter.set_tensor(self._input["index"], np.asarray(tensor, dtype=dtype))
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output["index"])
        out_scale, out_zero = self._output.get("quantization", (0.0, 0))
        if np.issubdtype(raw.dtype, np.integer) and out_scale:
            return np.asarray((raw.astype(np.float32) - out_zero) * out_scale, dtype=np.float32)
        return np.asarray(raw, dtype=np.float32)
